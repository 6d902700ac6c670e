"""The seeds' two ways of cutting one long id sequence into (X, Y) batches of shape (B, T).

B = batch_size, T = num_steps; Y is X shifted one token to the right (the next character).
Worked on the seeds' example, ids = 0..29, B = 2, T = 3:

random_batches -- non-overlapping windows of T tokens, shuffled, dealt out B per batch.

    ids:  [ 0  1  2][ 3  4  5][ 6  7  8] ... [21 22 23][24 25 26] 27 28 29
           window 0  window 1  window 2       window 7  window 8  ^ only for labels / unused
    num_examples = (30 - 1) // 3 = 9 windows      (the -1 leaves room for the last label)
    epoch_size   = 9 // 2 = 4 batches             (one shuffled window is left out)
    e.g. batch 0 = windows 5, 1:  X = [[15 16 17],   Y = [[16 17 18],
                                       [ 3  4  5]]        [ 4  5  6]]
    Neighbouring batches are unrelated text, so the hidden state starts afresh for each batch.

consecutive_batches -- B equal streams (one per row), read left to right T columns at a time.

    ids:  0 1 2 ... 14 | 15 16 ... 29          batch_len = 30 // 2 = 15 tokens per stream
    streams (B, batch_len):
                  batch 0    batch 1    batch 2    batch 3
               +----------+----------+----------+----------+
        row 0  |  0  1  2 |  3  4  5 |  6  7  8 |  9 10 11 | 12 13 14
        row 1  | 15 16 17 | 18 19 20 | 21 22 23 | 24 25 26 | 27 28 29
               +----------+----------+----------+----------+
    epoch_size = (15 - 1) // 3 = 4 batches; Y is the same block one column to the right,
    so column 12 (tokens 12, 27) is only ever a label and columns 13-14 are dropped.
    Row r of batch i+1 continues row r of batch i, so the hidden state is carried over
    (detached) from batch to batch and only reset at the start of an epoch.

consecutive_batches with `lengths` -- AWD-LSTM's variable BPTT (Merity et al., 2018): the same
streams, cut into chunks of varying length, so that no token always sits at the same place
in its chunk (with a fixed T, token 3 of a stream is always the first of batch 1 and never
backpropagates into token 2). `variable_lengths` draws them, e.g. for T = 3:

                  batch 0     batch 1      batch 2      batch 3
               +----------+-------------+-------+----------------+
        row 0  |  0  1  2 |  3  4  5  6 |  7  8 |  9 10 11 12 13 | 14
        row 1  | 15 16 17 | 18 19 20 21 | 22 23 | 24 25 26 27 28 | 29
               +----------+-------------+-------+----------------+
    lengths 3, 4, 2, 5: drawn until they cover every input column (batch_len - 1 = 14), the
    last one cut to what is left; every token is read once per epoch, in order, and only the
    final column (14, 29) is a label alone. The number of batches varies from epoch to epoch.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

SAMPLING_MODES = ("random", "consecutive")
# Variable BPTT as AWD-LSTM draws it: the full length with p = 0.95, else half of it, then
# N(that, 5^2) rounded down, and never fewer than a few steps (or num_steps, if smaller).
FULL_LENGTH_P, LENGTH_STD, MIN_LENGTH = 0.95, 5.0, 5


def _check_sizes(batch_size: int, num_steps: int) -> None:
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got batch_size={batch_size}, num_steps={num_steps}.")


def _as_ids(ids: Tensor) -> Tensor:
    """The ids as they are (often uint8 or uint16, memory-mapped: `lyricist.data.vocab.load_ids`);
    each batch is converted to int64 on its own (`_batch`), so the split never is as a whole."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}.")
    return ids


def _batch(block: Tensor) -> Tensor:
    """A (B, T) block of ids as a new contiguous int64 tensor: what embeddings, one-hot and
    cross-entropy expect (and never a view into the id file)."""
    return block.to(torch.int64, memory_format=torch.contiguous_format, copy=True)  # (B, T)


def random_batches(ids: Tensor, batch_size: int, num_steps: int,
                   generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The seed's `data_iter_random`: shuffled non-overlapping windows, `batch_size` per batch.

    Yields `epoch_size = ((N - 1) // num_steps) // batch_size` pairs (X, Y), each (B, T) int64.
    Pass a seeded `generator` for a reproducible order; None uses torch's global generator.
    """
    _check_sizes(batch_size, num_steps)
    ids = _as_ids(ids)
    num_examples = max(0, (ids.numel() - 1) // num_steps)  # -1: the last label needs one more token
    epoch_size = num_examples // batch_size
    # randperm is drawn on the CPU (where `generator` lives), then moved next to the ids.
    window_order = torch.randperm(num_examples, generator=generator).to(ids.device)  # (num_examples,)
    offsets = torch.arange(num_steps, device=ids.device)  # (T,)
    for i in range(epoch_size):
        starts = window_order[i * batch_size : (i + 1) * batch_size] * num_steps  # (B,)
        positions = starts[:, None] + offsets[None, :]  # (B, T)
        yield _batch(ids[positions]), _batch(ids[positions + 1])  # (B, T), (B, T)


def consecutive_batches(ids: Tensor, batch_size: int, num_steps: int, rows: slice | None = None,
                        lengths: Sequence[int] | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The seed's `data_iter_consecutive`: `batch_size` streams read in step, T tokens at a time.

    Yields `epoch_size = (N // batch_size - 1) // num_steps` pairs (X, Y), each (B, T) int64.
    `rows` keeps only some streams (e.g. `slice(rank, None, world_size)` for one of several
    processes); every stream still continues from one batch to the next. `lengths` (from
    `variable_lengths`) replaces the fixed T: batch i is (B, lengths[i]).
    """
    _check_sizes(batch_size, num_steps)
    ids = _as_ids(ids)
    batch_len = ids.numel() // batch_size
    streams = ids[: batch_size * batch_len].view(batch_size, batch_len)  # (B, batch_len)
    if rows is not None:
        streams = streams[rows]  # (B', batch_len)
    if lengths is None:
        epoch_size = max(0, (batch_len - 1) // num_steps)  # -1: the last label needs one more column
        lengths = [num_steps] * epoch_size
    elif sum(lengths) > batch_len - 1 or min(lengths, default=1) < 1:
        raise ValueError(f"lengths {list(lengths)} must be >= 1 and sum to at most {batch_len - 1}, "
                         f"the input columns of {batch_size} streams of {batch_len} tokens")
    start = 0
    for length in lengths:
        inputs = _batch(streams[:, start : start + length])  # (B, T_i)
        labels = _batch(streams[:, start + 1 : start + length + 1])  # (B, T_i)
        start += length
        yield inputs, labels


def variable_lengths(n_tokens: int, batch_size: int, num_steps: int,
                     generator: torch.Generator | None = None) -> list[int]:
    """AWD-LSTM's variable BPTT lengths for one epoch of `consecutive_batches(..., lengths=)`.

    Each is `num_steps` with p = 0.95 (else half of it), plus N(0, 5^2) noise, rounded down,
    at least min(5, num_steps); they are drawn until they cover all `N // batch_size - 1`
    input columns, the last cut to what is left. Pass a seeded `generator` to draw the same
    lengths again (a resumed run must); None uses torch's global generator.
    """
    _check_sizes(batch_size, num_steps)
    columns = max(0, n_tokens // batch_size - 1)  # -1: the last label needs one more column
    shortest = min(MIN_LENGTH, num_steps)
    lengths: list[int] = []
    while sum(lengths) < columns:
        full = float(torch.rand((), generator=generator)) < FULL_LENGTH_P
        mean = num_steps if full else num_steps / 2
        drawn = int(float(torch.normal(float(mean), LENGTH_STD, (), generator=generator)))
        lengths.append(min(max(shortest, drawn), columns - sum(lengths)))
    return lengths


def num_batches(n_tokens: int, batch_size: int, num_steps: int, sampling: str) -> int:
    """How many batches one epoch of `sampling` ("random" or "consecutive") yields for n_tokens."""
    _check_sizes(batch_size, num_steps)
    if sampling == "random":
        return max(0, (n_tokens - 1) // num_steps // batch_size)
    if sampling == "consecutive":
        return max(0, (n_tokens // batch_size - 1) // num_steps)
    raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLING_MODES}.")


def min_tokens(batch_size: int, num_steps: int, sampling: str | None = None) -> int:
    """Fewest tokens that give one batch: B*T + 1 for random, B*(T + 1) for consecutive
    (every stream needs its own extra label token); None means enough for both."""
    _check_sizes(batch_size, num_steps)
    needed = {"random": batch_size * num_steps + 1, "consecutive": batch_size * (num_steps + 1)}
    if sampling is None:
        return max(needed.values())
    if sampling not in needed:
        raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLING_MODES}.")
    return needed[sampling]


def check_enough_tokens(n_tokens: int, batch_size: int, num_steps: int, what: str = "train split",
                        sampling: str | None = None) -> None:
    """Raise ValueError if `n_tokens` cannot fill even one batch (an epoch would silently be empty)."""
    needed = min_tokens(batch_size, num_steps, sampling)
    if n_tokens < needed:
        mode = f"{sampling} sampling" if sampling else "either sampling mode"
        raise ValueError(f"the {what} has {n_tokens} tokens but one batch of batch_size={batch_size} x "
                         f"num_steps={num_steps} with {mode} needs at least {needed}. Use a smaller batch_size "
                         f"or num_steps, or give the {what} more data (e.g. a larger fraction or max_chars).")
