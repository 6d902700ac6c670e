"""Functions only the tests call, built from the library's own pieces: the literal step-by-step paths
the fast ones are held to, an n-gram's whole distribution, one reader's read of a split, a split's
static perplexity."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lyricist.data.batching import check_enough_tokens
from lyricist.evaluation.dynamic import StreamReader
from lyricist.evaluation.interpolation import neural_token_log_probs, perplexity_of
from lyricist.evaluation.ngram import AddOneUnigram, KneserNey
from lyricist.models import RecurrentLM
from lyricist.models.cells import RecurrentCell, State


def sequence_reference(cell: RecurrentCell, x_proj: Tensor, state: State,
                       weight_hh: Tensor | None = None) -> tuple[Tensor, State]:
    """``cell.sequence`` as a plain loop over ``cell.step``; autograd does the backward."""
    outputs = []
    for x_proj_t in x_proj:  # (B, G*H)
        state = cell.step(x_proj_t, state, weight_hh)
        outputs.append(state[0])
    return torch.stack(outputs), state  # (T, B, H)


def forward_reference(model: RecurrentLM, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
    """``model.forward`` computed literally, as the seeds do: each step's one-hot (or embedding) through
    ``cell.forward`` layer after layer, then the head. Slow: the tests check ``forward`` against it."""
    if model.training and model.config.locked_dropout:
        # Step by step there is no sequence to share a mask over.
        raise ValueError("forward_reference cannot apply locked dropout step by step: "
                         "call model.eval() first or build the model with locked_dropout=False")
    state = model.begin_state(ids.size(0), device=ids.device) if state is None else state
    active, weights_hh = model.draw()  # once for the chunk, as in `features`
    layer_states = [tuple(s[layer] for s in state) for layer in range(model.num_layers)]  # L x (each (B, H))
    logits = []
    for t in range(ids.size(1)):
        if model.embedding is None:
            x = model._hook(active, "rows", F.one_hot(ids[:, t], model.vocab_size).to(model.head.weight.dtype),
                            ids[:, t])  # (B, V)
        else:
            x = model.embedding_dropout(model._hook(active, "rows", model.embedding(ids[:, t]), ids[:, t]))  # (B, E)
        for layer, cell in enumerate(model.cells):
            if layer > 0:
                x = model.dropout(x)
            layer_states[layer] = cell(x, layer_states[layer], weights_hh[layer])
            x = layer_states[layer][0]  # (B, H)
        logits.append(model.head(model.output_dropout(x)))  # (B, V)
    return torch.stack(logits, dim=1), model._stack_layers(layer_states)  # (B, T, V)


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
