"""`lyricist-generate` (`python -m lyricist.generate`): lyrics from a trained checkpoint or a
logged MLflow model, the decoding options as flags (lyricist.settings.Decoding's fields).

    lyricist-generate --checkpoint models/checkpoints/best.ckpt --prefix 分开
    lyricist-generate --model models:/lyricist@champion --prefix 分开     # the MLflow registry's
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from lyricist import errors, settings
from lyricist.checkpoint import check_same_vocab, load_checkpoint
from lyricist.decoding import generate
from lyricist.settings import Decoding


class ProgressLines:
    """A `tick` for generate(): a line on stderr every `every` seconds with how far it is and an
    estimate of the time left at the pace so far (nothing for a sample done sooner)."""

    def __init__(self, label: str, every: float = 10.0, clock: Callable[[], float] = time.monotonic):
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


def decoding_of(args: argparse.Namespace, base: Decoding) -> Decoding:
    """`base` with the flags given on the command line, checked (one line naming the flag)."""
    given = {name: getattr(args, name) for name in Decoding.model_fields if getattr(args, name) is not None}
    return settings.section(Decoding, {**base.model_dump(), **given})


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate lyrics from a trained checkpoint.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", nargs="+", help="e.g. models/checkpoints/best.ckpt; several: their ensemble")
    source.add_argument("--model", help="a logged MLflow model, e.g. models:/lyricist@champion (the registry's "
                        "best) or runs:/<run id>/model; the store: $MLFLOW_TRACKING_URI, else the project's mlflow.db")
    parser.add_argument("--prefix", action="append", required=True,
                        help="repeat for several prefixes, e.g. --prefix 分开 --prefix 不分开")
    for name, info in Decoding.model_fields.items():  # a flag left out: the checkpoint's run's `generate.*`
        kind = str if name == "strategy" else float if "float" in str(info.annotation) else int
        names = [f"--{name.replace('_', '-')}"] + (["--num-tokens"] if name == "num_chars" else [])
        parser.add_argument(*names, dest=name, type=_number(kind), help=info.description)
    parser.add_argument("--allow-unknown", action="store_true",
                        help="read characters (words) missing from the vocabulary as <unk>")
    parser.add_argument("--data-dir", help="data/encoded/<corpus>/: refuse a checkpoint whose vocabulary is not "
                        "this data's vocab.json")
    args = parser.parse_args(argv)
    return errors.run_cli(lambda: _generate(args))


def _generate(args: argparse.Namespace) -> None:
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
