"""Write an English-like text of any length, for measuring how the pipeline scales with its corpus.

    python benchmarks/make_corpus.py --chars 10000000 --out /tmp/corpus_10m.txt

The text is sampled from a character Markov chain of `--order` (default 3: each character drawn
given the three before it) fitted on The Time Machine (data/raw/timemachine.txt, `dvc pull` it).
Why a chain and not copies of a book: copies would repeat every n-gram, so the Kneser-Ney
baseline's tables and the held-out perplexities would stop growing with the size. The chain keeps
making new words and new 5-grams (the script prints how many distinct ones), as a real bigger
corpus does, while keeping the book's alphabet (~65 characters) and letter statistics.
Deterministic: the same --seed, --order and --chars give the same bytes.
"""

from __future__ import annotations

import argparse
import bisect
import random
from collections import Counter, defaultdict
from itertools import accumulate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data/raw/timemachine.txt"


def fit_chain(text: str, order: int) -> dict[str, tuple[list[str], list[int]]]:
    """Each `order`-character context of `text` -> (the characters that follow it, their cumulative counts)."""
    follows: dict[str, Counter] = defaultdict(Counter)
    for i in range(order, len(text)):
        follows[text[i - order:i]][text[i]] += 1
    return {context: (list(counts), list(accumulate(counts.values()))) for context, counts in follows.items()}


def sample(chain: dict[str, tuple[list[str], list[int]]], start: str, num_chars: int, seed: int) -> str:
    """`num_chars` characters drawn from `chain`, starting after `start` (a context it holds)."""
    rng = random.Random(seed)
    order, context, out = len(start), start, []
    for _ in range(num_chars):
        if context not in chain:  # the source's last characters: they were never followed
            context = start
        chars, cumulative = chain[context]
        char = chars[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])]
        out.append(char)
        context = (context + char)[-order:]
    return "".join(out)


def distinct_ngrams(text: str, n: int) -> int:
    return len({text[i:i + n] for i in range(len(text) - n + 1)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, required=True, help="length of the text written")
    parser.add_argument("--out", required=True, help="the .txt file to write (UTF-8)")
    parser.add_argument("--order", type=int, default=3, help="characters of context per draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", default=str(SOURCE), help="the text the chain is fitted on")
    args = parser.parse_args(argv)
    if args.chars < 1 or args.order < 1:
        parser.error(f"--chars and --order must be >= 1, got {args.chars} and {args.order}")
    if not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out}: its folder does not exist; create it first")
    source = Path(args.source)
    if not source.is_file():
        parser.error(f"--source {source} is missing: `dvc pull data/raw/timemachine.txt.dvc` brings it")
    text = source.read_text(encoding="utf-8")
    chain = fit_chain(text, args.order)
    corpus = sample(chain, text[:args.order], args.chars, args.seed)
    Path(args.out).write_text(corpus, encoding="utf-8")
    print(f"wrote {args.out}: {len(corpus):,} characters, {len(set(corpus))} distinct, "
          f"{distinct_ngrams(corpus[:1_000_000], 5):,} distinct 5-grams in its first 1M characters "
          f"(the source: {len(text):,} characters, {distinct_ngrams(text, 5):,} distinct 5-grams)")


if __name__ == "__main__":
    main()
