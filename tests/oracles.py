"""Functions only the tests call, built from the library's own pieces: a model's whole distribution,
one reader's read of a split, a split's static perplexity."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lyricist.data.batching import check_enough_tokens
from lyricist.evaluation.dynamic import StreamReader
from lyricist.evaluation.interpolation import neural_token_log_probs, perplexity_of
from lyricist.evaluation.ngram import AddOneUnigram, KneserNey
from lyricist.models import RecurrentLM


def distribution(model: KneserNey | AddOneUnigram, context: Sequence[int] = ()) -> np.ndarray:
    """p(w | context) of every id w of the n-gram `model`: (V,)."""
    return np.array([model.prob(context, w) for w in range(model.vocab_size)])  # (V,)


def dynamic_token_log_probs(model: RecurrentLM, ids: torch.Tensor, num_steps: int, lr: float,
                            rms: list[torch.Tensor] | None = None, decay: float = 0.0,
                            eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(positions, log p) of one `StreamReader` read of `ids`; `lr = 0` is static evaluation of one stream."""
    check_enough_tokens(len(ids), 1, num_steps, "evaluated split", sampling="consecutive")
    log_probs = StreamReader(model, num_steps, lr, rms, decay, eps).read(ids)
    return np.arange(1, len(log_probs) + 1), log_probs  # segment i, column j predicts i*T + j + 1


def neural_perplexity(model: RecurrentLM, ids: torch.Tensor, batch_size: int, num_steps: int) -> float:
    """The static perplexity of a split read as `batch_size` consecutive streams."""
    return perplexity_of(neural_token_log_probs(model, ids, batch_size, num_steps)[1])
