"""The seeds' two ways of cutting one id sequence into (X, Y) batches of shape (B, T): B = batch_size,
T = num_steps, Y is X shifted one token on. On the seeds' example, ids = 0..29, B = 2, T = 3:

random_batches: the (30 - 1) // 3 = 9 windows [0 1 2], [3 4 5] ... [24 25 26] (-1: the last label
needs one more token), shuffled and dealt out B per batch: 9 // 2 = 4 batches, e.g. X = [[15 16 17],
[3 4 5]]. Neighbouring batches are unrelated text, so the hidden state starts afresh for each.

consecutive_batches: B streams (rows) of 30 // 2 = 15 tokens, read left to right T columns at a time:

                  batch 0    batch 1    batch 2    batch 3
        row 0  |  0  1  2 |  3  4  5 |  6  7  8 |  9 10 11 | 12 13 14
        row 1  | 15 16 17 | 18 19 20 | 21 22 23 | 24 25 26 | 27 28 29

    (15 - 1) // 3 = 4 batches; Y is the same block one column to the right (column 12 is only ever a
    label, 13-14 are dropped). Row r of batch i+1 continues row r of batch i, so the hidden state is
    carried over (detached) and only reset at the start of an epoch.

With `lengths`, AWD-LSTM's variable BPTT (Merity et al., 2018): the same streams in chunks of varying
length (e.g. 3, 4, 2, 5 over the 14 input columns), so that no token always sits at the same place in
its chunk (with a fixed T, token 3 always starts batch 1 and never backpropagates into token 2).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import Tensor

SAMPLING_MODES = ("random", "consecutive")
# Variable BPTT as AWD-LSTM draws it: the full length with p = 0.95, else half of it, then
# N(that, 5^2) rounded down, and never fewer than a few steps (or num_steps, if smaller).
FULL_LENGTH_P, LENGTH_STD, MIN_LENGTH = 0.95, 5.0, 5


def _check(ids: Tensor, batch_size: int, num_steps: int) -> None:
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got batch_size={batch_size}, num_steps={num_steps}.")
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}.")


def _batch(block: Tensor) -> Tensor:
    """A (B, T) block of the ids (often uint8, memory-mapped) as a new contiguous int64 tensor, no view of the file."""
    return block.to(torch.int64, memory_format=torch.contiguous_format, copy=True)  # (B, T)


def random_batches(ids: Tensor, batch_size: int, num_steps: int,
                   generator: torch.Generator | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The seed's `data_iter_random`: ((N - 1) // num_steps) // batch_size pairs (X, Y), each (B, T)
    int64, of shuffled windows; a seeded `generator` gives a reproducible order (None: torch's global)."""
    _check(ids, batch_size, num_steps)
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
    """The seed's `data_iter_consecutive`: (N // B - 1) // T pairs (X, Y), each (B, T) int64; `rows` keeps some
    streams (a DDP process's), `lengths` (from `variable_lengths`) replace T: batch i is (B, lengths[i])."""
    _check(ids, batch_size, num_steps)
    batch_len = ids.numel() // batch_size
    streams = ids[: batch_size * batch_len].view(batch_size, batch_len)  # (B, batch_len)
    if rows is not None:
        streams = streams[rows]  # (B', batch_len)
    if lengths is None:
        lengths = [num_steps] * max(0, (batch_len - 1) // num_steps)  # -1: the last label needs a column
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
    """AWD-LSTM's variable BPTT lengths for an epoch of `consecutive_batches(..., lengths=)`, covering its N // B - 1
    input columns (the last cut to fit); a seeded `generator` draws them again (a resume must), None: torch's."""
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
    if sampling == "random":
        return max(0, (n_tokens - 1) // num_steps // batch_size)
    if sampling == "consecutive":
        return max(0, (n_tokens // batch_size - 1) // num_steps)
    raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLING_MODES}.")


def min_tokens(batch_size: int, num_steps: int, sampling: str | None = None) -> int:
    """Fewest tokens for one batch: B*T + 1 random, B*(T + 1) consecutive (a label token a stream); None: both."""
    needed = {"random": batch_size * num_steps + 1, "consecutive": batch_size * (num_steps + 1)}
    return max(needed.values()) if sampling is None else needed[sampling]


def check_enough_tokens(n_tokens: int, batch_size: int, num_steps: int, what: str = "train split",
                        sampling: str | None = None) -> None:
    """Raise ValueError if `n_tokens` cannot fill even one batch (an epoch would silently be empty)."""
    needed = min_tokens(batch_size, num_steps, sampling)
    if n_tokens < needed:
        mode = f"{sampling} sampling" if sampling else "either sampling mode"
        raise ValueError(f"the {what} has {n_tokens} tokens but one batch of batch_size={batch_size} x "
                         f"num_steps={num_steps} with {mode} needs at least {needed}. Use a smaller batch_size "
                         f"or num_steps, or give the {what} more data (e.g. a larger fraction or max_chars).")
