"""Generated lyrics measured as lyrics: plain functions on strings.

- copy rate: the share of a text's character n-grams (n = 8; whitespace-only ones left out)
  found verbatim in a reference text (the train split): how much the model recites rather
  than writes;
- repeated lines: the share of lines equal to an earlier line of the same text;
- distinct-1/2 (Li et al. 2016): distinct characters (character bigrams) over all of them;
- line length: mean and spread (population std) of the lines' lengths in characters.

Lines are the text split at line breaks, stripped, empty ones left out. Every number is over a
list of texts: n-grams, lines and lengths pooled over them, distinct-n the mean over the texts
(a ratio that falls with length, so texts of one length compare). `human_pieces` cuts the human
test text into pieces of the samples' length, so its numbers are the anchor to compare with.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from lyricist.evaluation.metrics import LyricMetrics

COPY_N = 8  # characters: longer than most lyric phrases, so a match is a copy, not a common phrase


def char_ngrams(text: str, n: int) -> list[str]:
    """Every run of n consecutive characters of `text`, in order (repeats kept)."""
    return [text[i:i + n] for i in range(len(text) - n + 1)]


def ngram_set(text: str, n: int = COPY_N) -> frozenset[str]:
    """The reference's n-grams, built once and shared by every copy_rate call."""
    return frozenset(char_ngrams(text, n))


def copy_rate(texts: Iterable[str], reference: frozenset[str], n: int = COPY_N) -> float:
    """The share of the texts' n-grams (pooled) that occur in `reference` (an ngram_set); 0
    when the texts are all shorter than n. N-grams of whitespace only are left out: a run of
    spaces is in the train text too, but copies no lyric."""
    grams = [g for text in texts for g in char_ngrams(text, n) if not g.isspace()]
    return sum(g in reference for g in grams) / len(grams) if grams else 0.0


def lines_of(text: str) -> list[str]:
    """The text's non-empty lines, stripped."""
    return [line.strip() for line in text.split("\n") if line.strip()]


def repeated_lines(texts: Iterable[str]) -> float:
    """The share of lines (pooled) that equal an earlier line of the same text."""
    total = repeats = 0
    for text in texts:
        seen: set[str] = set()
        for line in lines_of(text):
            total += 1
            repeats += line in seen
            seen.add(line)
    return repeats / total if total else 0.0


def distinct(texts: Sequence[str], n: int) -> float:
    """Distinct-n: per text, distinct character n-grams over all of them; the mean over texts."""
    ratios = [len(set(grams)) / len(grams) for text in texts if (grams := char_ngrams(text, n))]
    return statistics.fmean(ratios) if ratios else 0.0


def line_lengths(texts: Iterable[str]) -> list[int]:
    return [len(line) for text in texts for line in lines_of(text)]


def lyric_metrics(texts: Sequence[str], reference: frozenset[str], n: int = COPY_N) -> LyricMetrics:
    """All the numbers above for a list of texts (the samples, or human_pieces)."""
    lengths = line_lengths(texts)
    return LyricMetrics(
        copy_rate=copy_rate(texts, reference, n), repeated_lines=repeated_lines(texts),
        distinct_1=distinct(texts, 1), distinct_2=distinct(texts, 2),
        line_length_mean=statistics.fmean(lengths) if lengths else 0.0,
        line_length_std=statistics.pstdev(lengths) if lengths else 0.0)


def human_pieces(text: str, length: int) -> list[str]:
    """`text` cut into consecutive pieces of `length` characters (a shorter rest left out, unless
    it is the only piece), as long as a sample so the numbers compare."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    pieces = [text[i:i + length] for i in range(0, len(text) - length + 1, length)]
    return pieces or ([text] if text else [])
