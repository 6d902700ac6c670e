"""A split read as consecutive streams with the state carried: the one loop that every scorer (evaluate's
perplexity and interpolation, dynamic evaluation, Krause's statistics, the neural cache) shares.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import Tensor

from lyricist.data.batching import consecutive_batches
from lyricist.models.cells import State
from lyricist.models.lm import RecurrentLM


def read_streams(model: RecurrentLM, ids: Tensor, batch_size: int, num_steps: int,
                 state: State | None = None, lengths: list[int] | None = None,
                 head: bool = True) -> Iterator[tuple[Tensor, Tensor, State]]:
    """(logits (B, T, V), targets (B, T), state) for each segment of `ids` read as `batch_size` streams,
    `num_steps` tokens at a time (or `lengths`), the state carried over, detached before each segment
    (`state`: an earlier read's). `head=False`: the last layer's outputs (B, T, H) in place of the logits."""
    for x, y in consecutive_batches(ids, batch_size, num_steps, lengths=lengths):  # (B, T) each
        if state is not None:
            state = tuple(s.detach() for s in state)
        out, state = model(x, state) if head else model.features(x, state)  # (B, T, V) or (B, T, H)
        yield out, y, state
