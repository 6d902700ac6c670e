"""An ensemble of trained language models: the average of their next-token probabilities (not logits:
the log of a mean is at least the mean of the logs, so it is never worse than its members' average).
It answers like one RecurrentLM, ``forward(ids, state) -> (logits, state)``, the "logits" being the
mixture's log-probabilities, so perplexity, dynamic evaluation and generation take it unchanged; its
state is the members' states one after the other in one flat tuple.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lyricist.models.cells import State
from lyricist.models.lm import RecurrentLM


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[RecurrentLM]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 models, got {len(members)}")
        sizes = {m.vocab_size for m in members}
        if len(sizes) != 1:
            raise ValueError(f"the ensemble's models predict vocabularies of different sizes {sorted(sizes)}: "
                             "train them on the same prepared data")
        self.members = nn.ModuleList(members)

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> the mixture's log-probabilities (B, T, V) and the members' final states."""
        flat = iter(state or ())  # the members' states one after the other
        log_probs, final = [], []
        for member in self.members:
            member_state = None if state is None else tuple(itertools.islice(flat, member.num_states))
            logits, member_state = member(ids, member_state)  # (B, T, V)
            log_probs.append(F.log_softmax(logits, dim=-1))
            final.extend(member_state)
        mixed = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(self.members))  # (K, B, T, V) -> (B, T, V)
        return mixed, tuple(final)
