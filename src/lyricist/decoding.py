"""Write lyrics from a prefix: warm the state up over the prefix, then predict.

`generate(model, vocab, prefix, decoding)` knows nothing of Lightning; the per-epoch samples,
the evaluate stage, lyricist-generate (lyricist.cli.generate) and the served model call it.

Decoding, applied to each step's logits in this order:
  1. repetition controls (greedy and sample alike): `no_repeat_ngram=n` forbids the token that
     would repeat an n-gram already in the text (prefix included); `repetition_penalty=r` is
     CTRL's (Keskar et al. 2019): the logit of each token among the last `repetition_window`
     ones is divided by r when positive, multiplied by r when negative. Whitespace (line breaks,
     spaces) is never penalised: it is the lyrics' layout, not their words.
  2. `greedy` takes the argmax (the seeds); `sample` draws from softmax(logits / temperature),
     cut to the `top_k` most likely tokens and then to the nucleus (`top_p`, Holtzman et al.
     2020: the fewest most likely tokens whose probabilities sum to >= top_p).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from lyricist.data.vocab import Vocab
from lyricist.models import RecurrentLM, eval_mode
from lyricist.settings import Decoding


def encode_prefix(vocab: Vocab, prefix: str, allow_unknown: bool = False) -> list[int]:
    """Token ids of the prefix, cut into tokens as the vocabulary's training data was (characters,
    or words); unknown tokens are an error that names them unless allowed (-> <unk>)."""
    if not prefix or not vocab.tokenize(prefix):
        raise ValueError("the prefix is empty: give at least one token, e.g. --prefix 分开 "
                         "(a word-level model: --prefix 'the time')")
    unknown = vocab.unknown_tokens(prefix)
    if unknown and not allow_unknown:
        what = (f"characters not in the vocabulary: {''.join(unknown)!r}" if vocab.tokenizer == "char"
                else f"words not in the (word-level) vocabulary: {', '.join(map(repr, unknown))}")
        raise ValueError(f"prefix {prefix!r} has {what}; remove them, or have them read as <unk> "
                         "(--allow-unknown; in a request to the served model, \"allow_unknown\": true)")
    return vocab.encode(prefix)


def penalize_recent(logits: torch.Tensor, recent: Sequence[int], penalty: float,
                    exempt: torch.Tensor | None = None) -> torch.Tensor:
    """CTRL's repetition penalty on the logits (V,) of the tokens in `recent` (each once),
    those marked in the boolean `exempt` (V,) left alone."""
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long, device=logits.device)
    if exempt is not None:
        ids = ids[~exempt[ids]]
    if penalty == 1 or not len(ids):
        return logits
    chosen = logits[ids]
    logits = logits.clone()
    # Dividing a negative logit would raise it: multiply those (as CTRL and HF do).
    logits[ids] = torch.where(chosen > 0, chosen / penalty, chosen * penalty)
    return logits


def banned_by_ngrams(history: Sequence[int], n: int) -> set[int]:
    """The tokens that would end an n-gram already in `history` (its last n-1 tokens followed
    by a token that followed them before)."""
    if len(history) < n:
        return set()
    if n == 1:
        return set(history)
    tail = tuple(history[len(history) - n + 1:])
    return {history[i + n - 1] for i in range(len(history) - n + 1)
            if tuple(history[i:i + n - 1]) == tail}


def nucleus_cut(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (V,) with every token outside the nucleus set to -inf: keep the most likely tokens
    until their probabilities sum to >= top_p (the most likely one always kept)."""
    probs, order = torch.softmax(logits, dim=-1).sort(descending=True)
    before = probs.cumsum(-1) - probs  # (V,) the mass of the tokens ranked above each one
    drop = order[before >= top_p]
    return logits.index_fill(0, drop, float("-inf"))


def next_token(logits: torch.Tensor, strategy: str, temperature: float, top_k: int | None,
               top_p: float | None, generator: torch.Generator | None) -> int:
    """The id chosen from one step's logits (V,), repetition controls already applied."""
    if strategy == "greedy":
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        cutoff = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    if top_p is not None and top_p < 1:
        logits = nucleus_cut(logits, top_p)
    probs = torch.softmax(logits, dim=-1).cpu()
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate(model: RecurrentLM, vocab: Vocab, prefix: str, decoding: Decoding = Decoding(), index: int = 0,
             allow_unknown: bool = False, deadline: float | None = None,
             tick: Callable[[int, int], None] | None = None) -> str:
    """The prefix followed by `decoding.num_chars` predicted tokens (characters; words for a
    word-level vocabulary, joined by single spaces). As the seeds' `predict_rnn`: the state starts
    at zero and is warmed up over the prefix (fed, not predicted); then each prediction is fed back;
    with the default decoding it is the seeds' argmax. `index`: the prefix's position among several
    (it offsets the seed). Past `deadline` (a time.monotonic() value): TimeoutError (the served
    model's bound). `tick(done, num_chars)` after every token (the CLI's progress lines).
    """
    d = decoding
    num_chars, repetition_penalty, repetition_window = d.num_chars, d.repetition_penalty, d.repetition_window
    # Prefix i samples with seed + i: with one seed, once the state has forgotten the prefixes
    # (a few lines in) their samples would run in step, the same lines in each.
    seed = None if d.seed is None else d.seed + index
    ids = encode_prefix(vocab, prefix, allow_unknown)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    device = next(model.parameters()).device
    exempt = torch.tensor([token.isspace() for token in vocab.itos], device=device)  # (V,)
    history, out = list(ids), []
    with eval_mode(model):
        # The whole prefix in one call: the same state as feeding it one step at a time.
        logits, state = model(torch.tensor([ids], device=device), None)  # (1, P, V)
        for _ in range(num_chars):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"generation ran past its time limit after {len(out)} of {num_chars} tokens")
            last = logits[0, -1].float()  # (V,)
            if repetition_penalty != 1:
                last = penalize_recent(last, history[-repetition_window:], repetition_penalty, exempt)
            if d.no_repeat_ngram is not None:
                banned = banned_by_ngrams(history, d.no_repeat_ngram)
                if len(banned) < last.numel():  # never ban every token: then nothing is banned
                    last = last.index_fill(0, torch.tensor(sorted(banned), dtype=torch.long,
                                                           device=device), float("-inf"))
            next_id = next_token(last, d.strategy, d.temperature, d.top_k, d.top_p, generator)
            out.append(next_id)
            history.append(next_id)
            logits, state = model(torch.tensor([[next_id]], device=device), state)  # (1, 1, V)
            if tick is not None:
                tick(len(out), num_chars)
    return vocab.decode_after(prefix, out)
