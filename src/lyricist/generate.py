"""Write lyrics from a prefix: warm the state up over the prefix, then predict.

Library: `generate(model, vocab, prefix, ...)` (knows nothing of Lightning).
CLI:     `python -m lyricist.generate --checkpoint models/checkpoints/best.ckpt --prefix 分开`
         `lyricist-generate --model models:/lyricist@champion --prefix 分开` (the MLflow registry's)

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

import argparse
import sys
import time
from collections.abc import Callable, Sequence

import torch

from lyricist import errors, settings
from lyricist.models import RecurrentLM, eval_mode
from lyricist.data.vocab import Vocab
from lyricist.settings import Decoding

def seed_of(seed: int | None, index: int) -> int | None:
    """The seed of the index-th of several prefixes: seed + index. One seed for all would give
    them the same random draws, and once the state has forgotten the prefix (a few lines in)
    their samples run in step, the same lines in each."""
    return None if seed is None else seed + index


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
    word-level vocabulary, joined by single spaces).

    As the seeds' `predict_rnn`: the state starts at zero and is warmed up over the
    prefix (its tokens are fed, not predicted); then each prediction is fed back.
    The decoding options are the module's docstring's; with their defaults (no penalty, no
    n-gram ban, no cut, greedy) it is the seeds' argmax. `index`: the prefix's position among
    several, which offsets the seed (seed_of). `deadline` (a time.monotonic() value): past it,
    stop with TimeoutError (the served model's bound). `tick(done, num_chars)` is called after
    every token (the CLI's progress lines).
    """
    d = decoding
    num_chars, repetition_penalty, repetition_window = d.num_chars, d.repetition_penalty, d.repetition_window
    seed = seed_of(d.seed, index)
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


PROGRESS_EVERY = 10.0  # seconds between the CLI's progress lines on a long sample


class ProgressLines:
    """A `tick` for generate(): a line on stderr every `every` seconds with how far it is and an
    estimate of the time left at the pace so far (nothing for a sample done sooner)."""

    def __init__(self, label: str, every: float = PROGRESS_EVERY, clock: Callable[[], float] = time.monotonic):
        self.label, self.every, self.clock = label, every, clock
        self.start = self.last = clock()

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last < self.every or done >= total:
            return
        self.last = now
        spent = now - self.start
        left = spent * (total - done) / done
        print(f"generate: {self.label}: {done:,} / {total:,} tokens in {spent:.0f} s, ~{left:.0f} s left",
              file=sys.stderr, flush=True)


def decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding options as command-line flags (lyricist.settings.Decoding's fields); a flag
    left out keeps the value the checkpoint's run used (its `generate.*`)."""
    for name, info in Decoding.model_fields.items():
        kind = str if name == "strategy" else float if "float" in str(info.annotation) else int
        names = [f"--{name.replace('_', '-')}"] + (["--num-tokens"] if name == "num_chars" else [])
        parser.add_argument(*names, dest=name, type=_number(kind), help=info.description)


def _number(kind: type):
    """argparse's type for a decoding flag, or null (none); a whole number may be written 1e7."""
    def number(text: str):
        if text.lower() in ("null", "none"):
            return None
        try:
            value = float(text) if kind is int and "e" in text.lower() else kind(text)
            if kind is int and not float(value).is_integer():
                raise ValueError(text)
            return kind(value)
        except ValueError:
            what = "a whole number, e.g. 200" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (or null: the checkpoint's own value)") from None
    return number


def decoding_of(args: argparse.Namespace, base: Decoding) -> Decoding:
    """`base` with the flags given on the command line, checked (one line naming the flag)."""
    given = {name: getattr(args, name) for name in Decoding.model_fields if getattr(args, name) is not None}
    return settings.section(Decoding, {**base.model_dump(), **given})


def main(argv: Sequence[str] | None = None) -> int:
    from lyricist.checkpoint import check_same_vocab, load_checkpoint

    parser = argparse.ArgumentParser(description="Generate lyrics from a trained checkpoint.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", nargs="+", help="e.g. models/checkpoints/best.ckpt; several: their ensemble")
    source.add_argument("--model", help="a logged MLflow model, e.g. models:/lyricist@champion (the registry's "
                        "best) or runs:/<run id>/model; the store: $MLFLOW_TRACKING_URI, else the project's mlflow.db")
    parser.add_argument("--prefix", action="append", required=True,
                        help="repeat for several prefixes, e.g. --prefix 分开 --prefix 不分开")
    decoding_arguments(parser)
    parser.add_argument("--allow-unknown", action="store_true",
                        help="read characters (words) missing from the vocabulary as <unk>")
    parser.add_argument("--data-dir", help="data/encoded/<corpus>/: refuse a checkpoint whose vocabulary is not "
                        "this data's vocab.json")
    args = parser.parse_args(argv)
    try:
        decoding_of(args, Decoding())  # a bad flag fails before the checkpoint is read
        if args.model:
            from lyricist.tracking.serving import load_logged_model  # MLflow only when asked for
            loaded = load_logged_model(args.model)
        else:
            loaded = load_checkpoint(args.checkpoint)
        if args.data_dir is not None:
            check_same_vocab(loaded, args.checkpoint, args.data_dir)
        decoding = decoding_of(args, loaded.decoding)
        for i, prefix in enumerate(args.prefix):
            print(generate(loaded.model, loaded.vocab, prefix, decoding, index=i, allow_unknown=args.allow_unknown,
                           tick=ProgressLines(f"prefix {i + 1}")))
    except errors.USER_ERRORS as err:
        return errors.report(err)  # one line; the traceback with $LYRICIST_FULL_ERROR=1
    return 0


if __name__ == "__main__":
    sys.exit(main())
