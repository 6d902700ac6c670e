"""A split read as consecutive streams with the state carried: the one loop every scorer shares.

The evaluate stage's perplexity and interpolation (`neural_token_log_probs`), dynamic evaluation's
reads (`StreamReader`), Krause's gradient statistics (`gradient_rms`) and the neural cache's
hidden states (`stream_states`) all read text this way; validation during training does too,
through the DataModule's consecutive val batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from lyricist.data.batching import consecutive_batches
from lyricist.models.cells import State
from lyricist.models.lm import RecurrentLM


def read_streams(model: RecurrentLM, ids: torch.Tensor, batch_size: int, num_steps: int,
                 state: State | None = None, lengths: list[int] | None = None,
                 head: bool = True) -> Iterator[tuple[Tensor, Tensor, State]]:
    """(logits (B, T, V), targets (B, T), state) for each segment of `ids` read as `batch_size`
    streams (row b continues row b), `num_steps` tokens at a time (`lengths`: those many instead,
    consecutive_batches's). The state carries over from segment to segment, detached before each
    (truncated backprop: a caller may step an optimizer between segments); `state` continues an
    earlier read. `head=False`: the last layer's outputs (B, T, H) in place of the logits.
    Autograd follows the caller's mode."""
    for x, y in consecutive_batches(ids, batch_size, num_steps, lengths=lengths):  # (B, T) each
        if state is not None:
            state = tuple(s.detach() for s in state)
        out, state = model(x, state) if head else model.features(x, state)  # (B, T, V) or (B, T, H)
        yield out, y, state
