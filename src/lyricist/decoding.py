"""Write lyrics from a prefix: `generate(model, vocab, prefix, decoding)`, called by the per-epoch
samples, the evaluate stage, lyricist-generate and the served model (no Lightning here).

Each step's logits go through (settings.Decoding describes each option):
  1. the repetition controls, greedy and sample alike: `no_repeat_ngram` (prefix included) and
     CTRL's `repetition_penalty` (Keskar et al. 2019), never on whitespace (the lyrics' layout);
  2. `greedy`'s argmax (the seeds), or `sample` from softmax(logits / temperature) cut to `top_k`,
     then to the nucleus `top_p` (Holtzman et al. 2020).
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
    if penalty == 1:  # off (greedy's default): no index built and no copy for every generated token
        return logits
    ids = torch.tensor(sorted(set(recent)), dtype=torch.long, device=logits.device)
    if exempt is not None:
        ids = ids[~exempt[ids]]
    chosen = logits[ids]
    # Dividing a negative logit would raise it: multiply those (as CTRL and HF do).
    return logits.index_copy(0, ids, torch.where(chosen > 0, chosen / penalty, chosen * penalty))


def banned_by_ngrams(history: Sequence[int], n: int) -> set[int]:
    """The tokens that would end an n-gram already in `history` (that followed its last n-1 tokens before)."""
    tail = tuple(history[len(history) - n + 1:])  # () for n = 1: every token seen ends a 1-gram
    return {history[i + n - 1] for i in range(len(history) - n + 1)  # no n-gram in a shorter history
            if tuple(history[i:i + n - 1]) == tail}


def nucleus_cut(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (V,) with every token outside the nucleus set to -inf: keep the most likely tokens
    until their probabilities sum to >= top_p (the most likely one always kept)."""
    probs, order = torch.softmax(logits, dim=-1).sort(descending=True)
    before = probs.cumsum(-1) - probs  # (V,) the mass of the tokens ranked above each one
    return logits.index_fill(0, order[before >= top_p], float("-inf"))


def next_token(logits: torch.Tensor, d: Decoding, generator: torch.Generator | None) -> int:
    """The id chosen from one step's logits (V,), repetition controls already applied."""
    if d.strategy == "greedy":
        return int(logits.argmax())
    logits = logits / d.temperature
    if d.top_k is not None and d.top_k < logits.numel():
        cutoff = torch.topk(logits, d.top_k).values[-1]
        logits = logits.masked_fill(logits < cutoff, float("-inf"))
    if d.top_p is not None and d.top_p < 1:
        logits = nucleus_cut(logits, d.top_p)
    return int(torch.multinomial(torch.softmax(logits, dim=-1).cpu(), 1, generator=generator))


@torch.no_grad()
def generate(model: RecurrentLM, vocab: Vocab, prefix: str, decoding: Decoding = Decoding(), index: int = 0,
             allow_unknown: bool = False, deadline: float | None = None,
             tick: Callable[[int, int], None] | None = None) -> str:
    """The prefix and `decoding.num_chars` predicted tokens, as the seeds' `predict_rnn`: the state
    starts at zero and is warmed up over the prefix, then each prediction is fed back. `index`: the
    prefix's position among several (it offsets the seed). Past `deadline` (a time.monotonic() value):
    TimeoutError (the served model's bound). `tick(done, num_chars)` after every token (the CLI's)."""
    d = decoding
    ids = encode_prefix(vocab, prefix, allow_unknown)
    # Prefix i samples with seed + i: with one seed, once the state has forgotten the prefixes
    # (a few lines in) their samples would run in step, the same lines in each.
    generator = None if d.seed is None else torch.Generator().manual_seed(d.seed + index)

    device = next(model.parameters()).device
    exempt = torch.tensor([token.isspace() for token in vocab.itos], device=device)  # (V,)
    history = list(ids)
    with eval_mode(model):
        # The whole prefix in one call: the same state as feeding it one step at a time.
        logits, state = model(torch.tensor([ids], device=device), None)  # (1, P, V)
        for done in range(d.num_chars):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"generation ran past its time limit after {done} of {d.num_chars} tokens")
            last = penalize_recent(logits[0, -1].float(), history[-d.repetition_window:], d.repetition_penalty, exempt)
            if d.no_repeat_ngram is not None:
                banned = banned_by_ngrams(history, d.no_repeat_ngram)
                if len(banned) < last.numel():  # never ban every token: then nothing is banned
                    last = last.index_fill(0, torch.tensor(sorted(banned), dtype=torch.long,
                                                           device=device), float("-inf"))
            history.append(next_token(last, d, generator))
            logits, state = model(torch.tensor([history[-1:]], device=device), state)  # (1, 1, V)
            if tick is not None:
                tick(done + 1, d.num_chars)
    return vocab.decode_after(prefix, history[len(ids):])
