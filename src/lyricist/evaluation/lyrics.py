"""Generated lyrics measured as lyrics: plain functions on strings, each over a list of texts
(n-grams, lines and lengths pooled; distinct-n the mean over the texts, a ratio that falls with
length, so texts of one length compare). Lines: the text split at line breaks, stripped, empty
ones left out. `human_pieces` cuts the human test text to the samples' length: the anchor."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

import numpy as np

from lyricist.evaluation.metrics import LyricMetrics

COPY_N = 8  # characters: longer than most lyric phrases, so a match is a copy, not a common phrase


def char_ngrams(text: str, n: int) -> list[str]:
    """Every run of n consecutive characters of `text`, in order (repeats kept)."""
    return [text[i:i + n] for i in range(len(text) - n + 1)]


_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd, bits well spread (the golden ratio's)
_HASH_CHUNK = 1 << 20  # windows hashed at a time: the temporaries stay a few MiB on any corpus


def _window_hashes(text: str, n: int) -> np.ndarray:
    """A 64-bit hash of every n-character window of `text`, in order: (len(text) - n + 1,) uint64."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.uint64)  # (L,) code points
    count = max(len(codes) - n + 1, 0)
    h = np.zeros(count, dtype=np.uint64)  # (count,)
    for j in range(n):  # uint64 arithmetic wraps: a polynomial in the multiplier, mod 2**64
        h = (h ^ codes[j:j + count]) * _HASH_MULTIPLIER
        h ^= h >> np.uint64(29)  # fold the high bits down, so the next character mixes with all of them
    return h


class NgramSet:
    """The distinct n-character grams of a reference text (the train split) as sorted 64-bit
    hashes: 8 bytes a gram, where a set of str takes ~100 (~850 MiB for the 3 M distinct 8-grams
    of a 9 M-character text). Two grams sharing a hash, a chance of about one in 10^12 at that
    size, would count one as copied."""

    def __init__(self, text: str, n: int = COPY_N):
        self.n, self.hashes = n, np.zeros(0, dtype=np.uint64)  # (M,)
        for start in range(0, max(len(text) - n + 1, 0), _HASH_CHUNK):
            # Merged chunk by chunk: the peak stays ~3 x the result, not the text's every window.
            chunk = _window_hashes(text[start:start + _HASH_CHUNK + n - 1], n)
            # np.unique by sorting (numpy 2's np.unique hashes: ~40x slower on 1 M uint64 here).
            merged = np.sort(np.concatenate([self.hashes, chunk]))  # (N,), not empty: the chunk has a window
            self.hashes = merged[np.concatenate(([True], merged[1:] != merged[:-1]))]

    def __len__(self) -> int:
        return len(self.hashes)

    def contains(self, grams: Sequence[str]) -> np.ndarray:
        """Per gram (each n characters, as copy_rate and `in` pass them), whether the reference holds it: (G,) bool."""
        wanted = _window_hashes("".join(grams), self.n)[::self.n] if grams else np.zeros(0, np.uint64)  # (G,)
        at = np.minimum(np.searchsorted(self.hashes, wanted), max(len(self.hashes) - 1, 0))  # (G,)
        return self.hashes[at] == wanted if len(self.hashes) else np.zeros(len(grams), dtype=bool)

    def __contains__(self, gram: str) -> bool:
        return len(gram) == self.n and bool(self.contains([gram])[0])


def copy_rate(texts: Iterable[str], reference: NgramSet, n: int = COPY_N) -> float:
    """The share of the texts' n-grams found in `reference` (0 when every text is shorter than
    n): how much the model recites rather than writes. Whitespace-only n-grams are left out:
    a run of spaces is in the train text too, but copies no lyric."""
    if reference.n != n:
        raise ValueError(f"the reference holds {reference.n}-grams, but copy_rate was asked for n={n}.")
    grams = [g for text in texts for g in char_ngrams(text, n) if not g.isspace()]
    return float(reference.contains(grams).sum()) / len(grams) if grams else 0.0


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def repeated_lines(texts: Iterable[str]) -> float:
    """The share of lines that equal an earlier line of the same text: all but the first of each."""
    per_text = [lines_of(text) for text in texts]
    total = sum(map(len, per_text))
    return sum(len(lines) - len(set(lines)) for lines in per_text) / total if total else 0.0


def distinct(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): per text, distinct character n-grams over all of them."""
    ratios = [len(set(grams)) / len(grams) for text in texts if (grams := char_ngrams(text, n))]
    return statistics.fmean(ratios) if ratios else 0.0


def lyric_metrics(texts: Sequence[str], reference: NgramSet, n: int = COPY_N) -> LyricMetrics:
    """All the numbers above for a list of texts; line lengths: mean and population std."""
    lengths = [len(line) for text in texts for line in lines_of(text)]
    return LyricMetrics(
        copy_rate=copy_rate(texts, reference, n), repeated_lines=repeated_lines(texts),
        distinct_1=distinct(texts, 1), distinct_2=distinct(texts, 2),
        line_length_mean=statistics.fmean(lengths) if lengths else 0.0,
        line_length_std=statistics.pstdev(lengths) if lengths else 0.0)


def human_pieces(text: str, length: int) -> list[str]:
    """`text` cut into consecutive pieces of `length` characters (a shorter rest only as the only piece)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    pieces = [text[i:i + length] for i in range(0, len(text) - length + 1, length)]
    return pieces or ([text] if text else [])
