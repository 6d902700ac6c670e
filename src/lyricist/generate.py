"""Write lyrics from a prefix: warm the state up over the prefix, then predict.

Library: `generate(model, vocab, prefix, ...)` (knows nothing of Lightning).
CLI:     `python -m lyricist.generate --checkpoint models/checkpoints/best.ckpt --prefix 分开`
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import torch

from lyricist import errors
from lyricist.models import RecurrentLM, eval_mode
from lyricist.data.vocab import Vocab

STRATEGIES = ("greedy", "sample")
# The CLI's and the served model's defaults; conf/config.yaml's `generate:` holds the same
# (tests/test_config.py checks it).
DEFAULTS = {"num_chars": 100, "strategy": "greedy", "temperature": 1.0, "top_k": None, "seed": 0}


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
        raise ValueError(f"prefix {prefix!r} has {what}; "
                         "remove them, or allow them to be read as <unk> (--allow-unknown)")
    return vocab.encode(prefix)


@torch.no_grad()
def generate(model: RecurrentLM, vocab: Vocab, prefix: str, num_chars: int, strategy: str = "greedy",
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
             allow_unknown: bool = False) -> str:
    """The prefix followed by `num_chars` predicted tokens (characters; words for a word-level
    vocabulary, joined by single spaces).

    As the seeds' `predict_rnn`: the state starts at zero and is warmed up over the
    prefix (its tokens are fed, not predicted); then each prediction is fed back.
    `greedy` takes the argmax (the seeds); `sample` draws from softmax(logits / T),
    optionally restricted to the top-k tokens.
    """
    if num_chars <= 0:
        raise ValueError(f"num_chars must be > 0, got {num_chars}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {STRATEGIES}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature} (use strategy=greedy for argmax)")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be > 0 or None, got {top_k}")
    ids = encode_prefix(vocab, prefix, allow_unknown)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None

    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        # The whole prefix in one call: the same state as feeding it one step at a time.
        logits, state = model(torch.tensor([ids], device=device), None)  # (1, P, V)
        for _ in range(num_chars):
            last = logits[0, -1].float()  # (V,)
            if strategy == "greedy":
                next_id = int(last.argmax())
            else:
                last = last / temperature
                if top_k is not None and top_k < last.numel():
                    cutoff = torch.topk(last, top_k).values[-1]
                    last = last.masked_fill(last < cutoff, float("-inf"))
                probs = torch.softmax(last, dim=-1).cpu()
                next_id = int(torch.multinomial(probs, 1, generator=generator))
            out.append(next_id)
            logits, state = model(torch.tensor([[next_id]], device=device), state)  # (1, 1, V)
    return vocab.decode_after(prefix, out)


def main(argv: Sequence[str] | None = None) -> int:
    from lyricist.checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(description="Generate lyrics from a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="e.g. models/checkpoints/best.ckpt")
    parser.add_argument("--prefix", action="append", required=True,
                        help="repeat for several prefixes, e.g. --prefix 分开 --prefix 不分开")
    parser.add_argument("--num-chars", "--num-tokens", dest="num_chars", type=int, default=DEFAULTS["num_chars"],
                        help="tokens to predict: characters, or words for a word-level model")
    parser.add_argument("--strategy", choices=STRATEGIES, default=DEFAULTS["strategy"])
    parser.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    parser.add_argument("--top-k", type=int, default=DEFAULTS["top_k"])
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--allow-unknown", action="store_true",
                        help="read characters (words) missing from the vocabulary as <unk>")
    args = parser.parse_args(argv)
    if not math.isfinite(args.temperature):  # nan samples uniform garbage, inf ignores --top-k
        return errors.report(errors.UserError(f"--temperature {args.temperature} is not allowed: use a "
                                              "finite number > 0, e.g. --temperature 0.8"))
    try:
        loaded = load_checkpoint(args.checkpoint)
        for prefix in args.prefix:
            print(generate(loaded.model, loaded.vocab, prefix, args.num_chars, args.strategy,
                           args.temperature, args.top_k, args.seed, args.allow_unknown))
    except errors.USER_ERRORS as err:
        return errors.report(err)  # one line; the traceback with $LYRICIST_FULL_ERROR=1
    return 0


if __name__ == "__main__":
    sys.exit(main())
