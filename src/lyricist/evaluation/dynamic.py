"""Dynamic evaluation: models that keep learning from the text they are scoring.

Someone hearing a song has heard its chorus once by the time it comes back; a model scored
with frozen weights has not. Dynamic evaluation (Krause et al., 2018, simplest form) reads a
split once, in order, as one stream: it scores a segment of ``num_steps`` tokens, then takes
one SGD step on that segment's loss, so later segments are predicted by a model that has
learned from the earlier ones. A token is always scored before the model learns from it, so
this is still an honest held-out perplexity -- of a reader who never looks ahead.

The n-gram counterpart, for a fair comparison: the Kneser-Ney model counts each token right
after predicting it (``KneserNey.observe``), an "adaptive" n-gram. Both are scored on the same
positions and then interpolated like the static models (lyricist.evaluation.interpolation); the learning
rate and the mixture weight are chosen on val alone.

    stream:   t0 t1 ... t34 | t35 ... t69 | ...      (batch 1: the split in reading order)
    segment i: score log p(t_{35i+1} .. t_{35i+35}), then one SGD step on their mean loss;
               the state goes on to segment i + 1 (detached, as in training)
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lyricist.data.batching import check_enough_tokens, consecutive_batches
from lyricist.evaluation.interpolation import WEIGHT_GRID, check_splits, perplexity_of, score_and_mix
from lyricist.evaluation.metrics import DynamicResult
from lyricist.evaluation.ngram import KneserNey
from lyricist.models import RecurrentLM


def dynamic_token_log_probs(model: RecurrentLM, ids: torch.Tensor, num_steps: int,
                            lr: float) -> tuple[np.ndarray, np.ndarray]:
    """(positions, log p) of tokens 1 .. num_steps * ((len(ids) - 1) // num_steps) of `ids`,
    each scored before an SGD step (rate `lr`) on its segment; `lr = 0` is static evaluation
    of one stream. `model` itself is left untouched (a copy learns), and dropout is off."""
    check_enough_tokens(len(ids), 1, num_steps, "evaluated split", sampling="consecutive")
    reader = copy.deepcopy(model).eval()  # eval: no dropout; the copy's weights move, not the caller's
    optimizer = torch.optim.SGD(reader.parameters(), lr=lr) if lr > 0 else None
    state, log_probs = None, []
    for x, y in consecutive_batches(ids, 1, num_steps):  # (1, T) each
        if state is not None:
            state = tuple(s.detach() for s in state)  # truncated backprop, as in training
        logits, state = reader(x, state)  # (1, T, V)
        token_log_probs = F.log_softmax(logits[0], dim=-1).gather(1, y[0, :, None])[:, 0]  # (T,)
        log_probs.append(token_log_probs.detach().double())
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
            (-token_log_probs.mean()).backward()
            optimizer.step()
    log_probs_np = torch.cat(log_probs).cpu().numpy()
    return np.arange(1, len(log_probs_np) + 1), log_probs_np  # segment i, column j predicts i*T + j + 1


def adaptive_ngram_token_log_probs(ngram: KneserNey, ids: Sequence[int], positions: np.ndarray) -> np.ndarray:
    """log p of the token at each of `positions` (ascending) of `ids` by a copy of `ngram` that
    counts every token of `ids` once it has been read: predict, then observe."""
    reader = copy.deepcopy(ngram)
    ids = np.asarray(ids, dtype=np.int64).ravel().tolist()
    history = ngram.order - 1
    wanted = set(np.asarray(positions).tolist())
    log_probs = []
    for p, token in enumerate(ids[: int(max(wanted)) + 1] if wanted else []):
        context = ids[max(0, p - history):p]
        if p in wanted:
            log_probs.append(math.log(reader.prob(context, token)))
        reader.observe([token], context=context)
    return np.array(log_probs, dtype=np.float64)


def evaluate_dynamic(model: RecurrentLM, ngram: KneserNey, splits: dict[str, torch.Tensor],
                     num_steps: int, learning_rates: Sequence[float],
                     weights: Sequence[float] = WEIGHT_GRID, tune_tokens: int | None = None) -> DynamicResult:
    """Dynamic neural and adaptive n-gram perplexities, alone and interpolated, on "val" and
    (optionally) "test": the learning rate and the mixture weight are chosen on val, and test
    starts again from the trained weights and counts.

    The rate is the best of 0 ("no update": a rate that does not help is never chosen) and
    `learning_rates`, judged on the first `tune_tokens` tokens of val (None: all of it), so the
    cost of choosing stays bounded however long val is: each rate reads that part once."""
    check_splits(splits)
    if not learning_rates or min(learning_rates) < 0:
        raise ValueError(f"learning_rates must be a non-empty list of rates >= 0, got {list(learning_rates)}.")
    if tune_tokens is not None and tune_tokens <= num_steps:
        raise ValueError(f"evaluate.dynamic_tune_tokens must exceed dynamic_num_steps ({num_steps}) or be "
                         f"null (all of val), got {tune_tokens}: use e.g. 20000.")
    tuning = splits["val"] if tune_tokens is None else splits["val"][: tune_tokens + 1]  # +1: the last target

    rates = [0.0, *(lr for lr in learning_rates if lr != 0.0)]
    tried = {lr: dynamic_token_log_probs(model, tuning, num_steps, lr) for lr in rates}
    # A rate that diverges scores inf (perplexity_of): it loses. Ties: the first, so no update
    # unless one helps.
    lr = min(rates, key=lambda rate: perplexity_of(tried[rate][1]))
    neural = {split: tried[lr] if split == "val" and len(tuning) == len(ids)  # val read already
              else dynamic_token_log_probs(model, ids, num_steps, lr) for split, ids in splits.items()}
    weight, dynamic, kn, mixed = score_and_mix(
        splits, neural, lambda ids, positions: adaptive_ngram_token_log_probs(ngram, ids, positions), weights)
    return DynamicResult(lr=lr, weight=weight, dynamic=dynamic, ngram_adaptive=kn, interpolated=mixed)
