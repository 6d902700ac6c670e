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
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

SAMPLING_MODES = ("random", "consecutive")


def _check_sizes(batch_size: int, num_steps: int) -> None:
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got batch_size={batch_size}, num_steps={num_steps}.")


def _as_ids(ids: Tensor) -> Tensor:
    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}.")
    return ids.long()  # (N,) int64, what embeddings, one-hot and cross-entropy expect


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
        yield ids[positions], ids[positions + 1]  # (B, T), (B, T)


def consecutive_batches(ids: Tensor, batch_size: int, num_steps: int,
                        rows: slice | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """The seed's `data_iter_consecutive`: `batch_size` streams read in step, T tokens at a time.

    Yields `epoch_size = (N // batch_size - 1) // num_steps` pairs (X, Y), each (B, T) int64.
    `rows` keeps only some streams (e.g. `slice(rank, None, world_size)` for one of several
    processes); every stream still continues from one batch to the next.
    """
    _check_sizes(batch_size, num_steps)
    ids = _as_ids(ids)
    batch_len = ids.numel() // batch_size
    streams = ids[: batch_size * batch_len].view(batch_size, batch_len)  # (B, batch_len)
    if rows is not None:
        streams = streams[rows]  # (B', batch_len)
    epoch_size = max(0, (batch_len - 1) // num_steps)  # -1: the last label needs one more column
    for start in range(0, epoch_size * num_steps, num_steps):
        inputs = streams[:, start : start + num_steps].contiguous()  # (B, T)
        labels = streams[:, start + 1 : start + num_steps + 1].contiguous()  # (B, T)
        yield inputs, labels


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
