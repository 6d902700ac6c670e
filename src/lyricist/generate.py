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
import math
import sys
import time
from collections.abc import Sequence

import torch

from lyricist import errors
from lyricist.models import RecurrentLM, eval_mode
from lyricist.data.vocab import Vocab

STRATEGIES = ("greedy", "sample")
# The CLI's and the served model's defaults; conf/config.yaml's `generate:` holds the same
# (tests/test_config.py checks it).
# Chosen on the Jay Chou model (README, Generate lyrics): no line repeated and no 8-gram of the
# train text copied in the three prefixes' 200-character samples, the human test text's rate.
DEFAULTS = {"num_chars": 200, "strategy": "sample", "temperature": 0.85, "top_k": None, "top_p": 0.95,
            "repetition_penalty": 1.2, "repetition_window": 20, "no_repeat_ngram": None, "seed": 0}


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Each decoding option: (name, accepted, what is allowed, an example). generate() refuses a bad
# value with it; lyricist.train checks conf's `generate.*` with the same rules before training.
DECODING_RULES = [
    ("num_chars", _count, "an integer >= 1", 200),
    ("strategy", lambda v: v in STRATEGIES, f"one of {', '.join(STRATEGIES)}", "sample"),
    ("temperature", lambda v: _number(v) and v > 0,
     "a finite number > 0 (strategy=greedy for the argmax)", 0.8),
    ("top_k", lambda v: v is None or _count(v), "null (no cut) or an integer >= 1", 20),
    ("top_p", lambda v: v is None or (_number(v) and 0 < v <= 1), "null (no cut) or a number in (0, 1]", 0.9),
    ("repetition_penalty", lambda v: _number(v) and v >= 1, "a finite number >= 1 (1: off)", 1.3),
    ("repetition_window", _count, "an integer >= 1 (tokens looked back by the penalty)", 20),
    ("no_repeat_ngram", lambda v: v is None or _count(v), "null (off) or an integer >= 1", 4),
]


def check_decoding(**options) -> None:
    """Refuse a bad decoding option by its name, with what is allowed and an example."""
    for name, accepted, allowed, example in DECODING_RULES:
        if name in options and not accepted(options[name]):
            raise ValueError(f"{name}={options[name]!r} is not allowed: use {allowed}, e.g. {name}={example}")


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
        raise ValueError(f"prefix {prefix!r} has {what}; "
                         "remove them, or allow them to be read as <unk> (--allow-unknown)")
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
def generate(model: RecurrentLM, vocab: Vocab, prefix: str, num_chars: int, strategy: str = "greedy",
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = None,
             allow_unknown: bool = False, top_p: float | None = None, repetition_penalty: float = 1.0,
             repetition_window: int = 20, no_repeat_ngram: int | None = None,
             deadline: float | None = None) -> str:
    """The prefix followed by `num_chars` predicted tokens (characters; words for a word-level
    vocabulary, joined by single spaces).

    As the seeds' `predict_rnn`: the state starts at zero and is warmed up over the
    prefix (its tokens are fed, not predicted); then each prediction is fed back.
    The decoding options are the module's docstring's; with their defaults (no penalty, no
    n-gram ban, no cut) `greedy` is the seeds' argmax and `sample` plain softmax sampling.
    `deadline` (a time.monotonic() value): past it, stop with TimeoutError (the served model's bound).
    """
    check_decoding(num_chars=num_chars, strategy=strategy, temperature=temperature, top_k=top_k,
                   top_p=top_p, repetition_penalty=repetition_penalty,
                   repetition_window=repetition_window, no_repeat_ngram=no_repeat_ngram)
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
            if no_repeat_ngram is not None:
                banned = banned_by_ngrams(history, no_repeat_ngram)
                if len(banned) < last.numel():  # never ban every token: then nothing is banned
                    last = last.index_fill(0, torch.tensor(sorted(banned), dtype=torch.long,
                                                           device=device), float("-inf"))
            next_id = next_token(last, strategy, temperature, top_k, top_p, generator)
            out.append(next_id)
            history.append(next_id)
            logits, state = model(torch.tensor([[next_id]], device=device), state)  # (1, 1, V)
    return vocab.decode_after(prefix, out)


def decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoding options as command-line flags, defaulting to DEFAULTS."""
    parser.add_argument("--num-chars", "--num-tokens", dest="num_chars", type=int, default=DEFAULTS["num_chars"],
                        help="tokens to predict: characters, or words for a word-level model")
    parser.add_argument("--strategy", choices=STRATEGIES, default=DEFAULTS["strategy"])
    parser.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    parser.add_argument("--top-k", type=int, default=DEFAULTS["top_k"])
    parser.add_argument("--top-p", type=float, default=DEFAULTS["top_p"],
                        help="nucleus sampling: the fewest most likely tokens holding this much probability")
    parser.add_argument("--repetition-penalty", type=float, default=DEFAULTS["repetition_penalty"],
                        help="CTRL's penalty on the last --repetition-window tokens (1: off)")
    parser.add_argument("--repetition-window", type=int, default=DEFAULTS["repetition_window"])
    parser.add_argument("--no-repeat-ngram", type=int, default=DEFAULTS["no_repeat_ngram"],
                        help="forbid repeating any n-gram of this many tokens")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                        help="sample: the first prefix's seed; the next ones get seed + 1, + 2, ...")


def main(argv: Sequence[str] | None = None) -> int:
    from lyricist.checkpoint import load_checkpoint

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
    args = parser.parse_args(argv)
    options = {key: getattr(args, key) for key in DEFAULTS if key != "seed"}
    try:
        check_decoding(**options)  # before the checkpoint is read
        if args.model:
            from lyricist.tracking.serving import load_logged_model  # MLflow only when asked for
            loaded = load_logged_model(args.model)
        else:
            loaded = load_checkpoint(args.checkpoint)
        for i, prefix in enumerate(args.prefix):
            print(generate(loaded.model, loaded.vocab, prefix, seed=seed_of(args.seed, i),
                           allow_unknown=args.allow_unknown, **options))
    except errors.USER_ERRORS as err:
        return errors.report(err)  # one line; the traceback with $LYRICIST_FULL_ERROR=1
    return 0


if __name__ == "__main__":
    sys.exit(main())
