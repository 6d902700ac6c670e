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

Two update rules: plain SGD, and Krause et al.'s own (``RMSDecayUpdate``): the step divided by
the root-mean-square of each weight's gradient on the training text (weights the training moved
little move little), and a decay pulling every weight back towards its trained value (so what a
song taught is forgotten in the next one instead of piling up).
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


class RMSDecayUpdate:
    """Krause et al. (2018)'s dynamic-evaluation step, for every weight θ with trained value θ0:

        θ <- θ - lr * grad / (rms + eps) + decay * (rms / norm) * (θ0 - θ)

    `rms`: the root-mean-square of θ's gradient over training text (``gradient_rms``); `norm`:
    the sum over the parameter tensors of their mean rms, as in the authors' released code
    (dynamiceval). The decay factor decay * rms / norm is capped at 1 so that the pull back
    never overshoots θ0."""

    def __init__(self, params, rms: list[torch.Tensor], lr: float, decay: float, eps: float):
        self.params = list(params)
        if len(self.params) != len(rms):
            raise ValueError(f"one rms tensor per parameter: {len(self.params)} parameters, {len(rms)} tensors")
        self.trained = [p.detach().clone() for p in self.params]
        norm = sum(float(r.mean()) for r in rms)
        self.rms, self.lr, self.eps = rms, lr, eps
        self.decay = [(decay * r / norm).clamp(max=1.0) if norm > 0 else torch.zeros_like(r) for r in rms]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p, p0, rms, decay in zip(self.params, self.trained, self.rms, self.decay):
            if p.grad is not None:
                p.add_(decay * (p0 - p) - self.lr * p.grad / (rms + self.eps))


def gradient_rms(model: RecurrentLM, train_ids: torch.Tensor, num_steps: int, batch_size: int,
                 max_tokens: int | None = None) -> list[torch.Tensor]:
    """Root-mean-square over batches of the mean-loss gradient of each parameter of `model`,
    on the first `max_tokens` (None: all) of `train_ids` read as `batch_size` streams of
    `num_steps`-token segments, dropout off; the statistics Krause et al. normalise by."""
    ids = train_ids if max_tokens is None else train_ids[: max_tokens + 1]
    check_enough_tokens(len(ids), batch_size, num_steps, "training text for the gradient statistics",
                        sampling="consecutive")
    reader = copy.deepcopy(model).eval()
    squares = [torch.zeros_like(p) for p in reader.parameters()]
    state, batches = None, 0
    for x, y in consecutive_batches(ids, batch_size, num_steps):  # (B, T) each
        if state is not None:
            state = tuple(s.detach() for s in state)
        logits, state = reader(x, state)  # (B, T, V)
        reader.zero_grad(set_to_none=True)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()  # (B*T, V)
        for square, p in zip(squares, reader.parameters()):
            if p.grad is not None:
                square += p.grad.detach() ** 2
        batches += 1
    return [torch.sqrt(square / batches) for square in squares]


def dynamic_token_log_probs(model: RecurrentLM, ids: torch.Tensor, num_steps: int, lr: float,
                            rms: list[torch.Tensor] | None = None, decay: float = 0.0,
                            eps: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(positions, log p) of tokens 1 .. num_steps * ((len(ids) - 1) // num_steps) of `ids`,
    each scored before an update (rate `lr`) on its segment; `lr = 0` is static evaluation
    of one stream. The update is plain SGD, or with `rms` (``gradient_rms`` of `model`)
    ``RMSDecayUpdate`` with `decay` and `eps`. `model` itself is left untouched (a copy
    learns), and dropout is off."""
    check_enough_tokens(len(ids), 1, num_steps, "evaluated split", sampling="consecutive")
    reader = copy.deepcopy(model).eval()  # eval: no dropout; the copy's weights move, not the caller's
    optimizer = None
    if lr > 0:
        optimizer = (torch.optim.SGD(reader.parameters(), lr=lr) if rms is None
                     else RMSDecayUpdate(reader.parameters(), rms, lr, decay, eps))
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
                     weights: Sequence[float] = WEIGHT_GRID, tune_tokens: int | None = None,
                     rms: list[torch.Tensor] | None = None, decay: float = 0.0,
                     eps: float = 1e-3) -> DynamicResult:
    """Dynamic neural and adaptive n-gram perplexities, alone and interpolated, on "val" and
    (optionally) "test": the learning rate and the mixture weight are chosen on val, and test
    starts again from the trained weights and counts. Plain SGD updates, or Krause et al.'s
    with `rms`, `decay` and `eps` (``dynamic_token_log_probs``).

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
    def read(ids: torch.Tensor, lr: float) -> tuple[np.ndarray, np.ndarray]:
        return dynamic_token_log_probs(model, ids, num_steps, lr, rms, decay, eps)

    tried = {lr: read(tuning, lr) for lr in rates}
    # A rate that diverges scores inf (perplexity_of): it loses. Ties: the first, so no update
    # unless one helps.
    lr = min(rates, key=lambda rate: perplexity_of(tried[rate][1]))
    neural = {split: tried[lr] if split == "val" and len(tuning) == len(ids)  # val read already
              else read(ids, lr) for split, ids in splits.items()}
    weight, dynamic, kn, mixed = score_and_mix(
        splits, neural, lambda ids, positions: adaptive_ngram_token_log_probs(ngram, ids, positions), weights)
    return DynamicResult(lr=lr, weight=weight, dynamic=dynamic, ngram_adaptive=kn, interpolated=mixed)
