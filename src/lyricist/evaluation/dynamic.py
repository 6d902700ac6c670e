"""Dynamic evaluation (Krause et al., 2018): a model that keeps learning from the text it scores.

A split is read once, in order, as one stream (the state carried): each segment of `num_steps`
tokens is scored, then the model takes one step on that segment's loss, so a chorus heard once
is expected when it comes back. A token is always scored before the model learns from it: an
honest held-out perplexity, of a reader who never looks ahead. The n-gram counterpart is the
adaptive Kneser-Ney model, which counts each token right after predicting it (`KneserNey.observe`).

The step is plain SGD or Krause et al.'s own (`RMSDecayUpdate`). The cost, and why each rate
reads only the first `tune_tokens` of val: docs/experiments.md#evaluate-at-1m-characters-issue-16.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lyricist.data.batching import check_enough_tokens
from lyricist.evaluation.interpolation import WEIGHT_GRID, check_splits, perplexity_of, score_and_mix
from lyricist.evaluation.metrics import DynamicResult
from lyricist.evaluation.ngram import KneserNey, adaptive_ngram_scores
from lyricist.evaluation.progress import Tick
from lyricist.models import RecurrentLM
from lyricist.models.stream import read_streams


class RMSDecayUpdate:
    """Krause et al. (2018)'s step, for every weight θ with trained value θ0:

        θ <- θ - lr * grad / (rms + eps) + decay * (rms / norm) * (θ0 - θ)

    `rms`: θ's gradient root-mean-square on train (`gradient_rms`): weights training moved little
    move little. `norm`: the sum of the tensors' mean rms, as in the authors' code (dynamiceval).
    The decay forgets what a song taught by the next; its factor capped at 1 (no overshoot)."""

    def __init__(self, params, rms: list[torch.Tensor], lr: float, decay: float, eps: float):
        self.params = list(params)
        self.trained = [p.detach().clone() for p in self.params]
        norm = sum(float(r.mean()) for r in rms)
        self.lr = lr
        self.denominators = [r + eps for r in rms]  # rms + eps: the same every step, so added once
        self.decay = [(decay * r / norm).clamp(max=1.0) if norm > 0 else torch.zeros_like(r) for r in rms]
        # Two buffers per parameter, reused by every step: the formula's six temporaries would be
        # allocated anew at each step, and the allocator hands such large blocks back to the
        # system and faults them in again (the step cost 3 x as much inside the reading loop).
        self.buffers = [(torch.empty_like(p), torch.empty_like(p)) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        for p, p0, denominator, decay, (pull, move) in zip(self.params, self.trained, self.denominators,
                                                          self.decay, self.buffers):
            if p.grad is not None:
                # p += decay * (p0 - p) - lr * grad / (rms + eps): the same operations in the same
                # order, so the same floats, written into the buffers.
                torch.sub(p0, p, out=pull).mul_(decay)
                torch.mul(p.grad, self.lr, out=move).div_(denominator)
                p.add_(pull.sub_(move))


def gradient_rms(model: RecurrentLM, train_ids: torch.Tensor, num_steps: int, batch_size: int,
                 max_tokens: int | None = None) -> list[torch.Tensor]:
    """Per parameter, the root-mean-square over batches of its mean-loss gradient on the first
    `max_tokens` (None: all) of `train_ids`, dropout off: the statistics Krause et al. normalise by."""
    ids = train_ids if max_tokens is None else train_ids[: max_tokens + 1]
    check_enough_tokens(len(ids), batch_size, num_steps, "training text for the gradient statistics",
                        sampling="consecutive")
    reader = copy.deepcopy(model).eval()
    squares = [torch.zeros_like(p) for p in reader.parameters()]
    for batches, (logits, y, _) in enumerate(read_streams(reader, ids, batch_size, num_steps), 1):  # (B, T, V), (B, T)
        reader.zero_grad(set_to_none=True)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()  # (B*T, V)
        for square, p in zip(squares, reader.parameters()):
            if p.grad is not None:
                square += p.grad.detach() ** 2
    return [torch.sqrt(square / batches) for square in squares]


class StreamReader:
    """A copy of `model` (dropout off) reading one stream in segments of `num_steps` tokens, each
    scored, then learnt from at rate `lr` (0: never) by SGD or, with `rms`, `RMSDecayUpdate`.
    `read` goes on where the last call stopped: reading a text in two parts is reading it at once."""

    def __init__(self, model: RecurrentLM, num_steps: int, lr: float, rms: list[torch.Tensor] | None = None,
                 decay: float = 0.0, eps: float = 1e-3):
        self.model = copy.deepcopy(model).eval()
        self.num_steps, self.lr, self.state = num_steps, lr, None
        self.optimizer = None
        if lr > 0:
            self.optimizer = (torch.optim.SGD(self.model.parameters(), lr=lr) if rms is None
                              else RMSDecayUpdate(self.model.parameters(), rms, lr, decay, eps))

    def read(self, ids: torch.Tensor, progress: Tick | None = None, label: str = "") -> np.ndarray:
        """log p of tokens 1 .. num_steps * ((len(ids) - 1) // num_steps) of `ids` (ids[0]: the last
        call's last target); `progress` hears `label` and the tokens scored after every segment."""
        log_probs = []
        total = (len(ids) - 1) // self.num_steps * self.num_steps
        # No update, no gradient: the graph would only be built to be thrown away.
        with torch.set_grad_enabled(self.optimizer is not None):
            for i, (logits, y, self.state) in enumerate(read_streams(self.model, ids, 1, self.num_steps, self.state)):
                token_log_probs = F.log_softmax(logits[0], dim=-1).gather(1, y[0, :, None])[:, 0]  # (T,)
                log_probs.append(token_log_probs.detach().double())
                if self.optimizer is not None:
                    self.model.zero_grad(set_to_none=True)
                    (-token_log_probs.mean()).backward()
                    self.optimizer.step()
                if progress is not None:
                    progress(label, (i + 1) * self.num_steps, total)
        return torch.cat(log_probs).cpu().numpy() if log_probs else np.zeros(0)


def evaluate_dynamic(model: RecurrentLM, ngram: KneserNey, splits: dict[str, torch.Tensor],
                     num_steps: int, learning_rates: Sequence[float], tune_tokens: int | None = None,
                     rms: list[torch.Tensor] | None = None, decay: float = 0.0, eps: float = 1e-3,
                     adaptive: dict[str, np.ndarray] | None = None, progress: Tick | None = None) -> DynamicResult:
    """Dynamic neural and adaptive n-gram perplexities, alone and mixed, on "val" and (optionally)
    "test" (`adaptive`: `adaptive_ngram_scores`, if the caller has them). The rate is the best of 0
    and `learning_rates` on the first `tune_tokens` of val (None: all), the chosen reader going on
    through the rest of val; the weight chosen on val."""
    check_splits(splits)
    if not learning_rates or min(learning_rates) < 0:
        raise ValueError(f"learning_rates must be a non-empty list of rates >= 0, got {list(learning_rates)}.")
    if tune_tokens is not None and tune_tokens <= num_steps:
        raise ValueError(f"evaluate.dynamic_tune_tokens must exceed dynamic_num_steps ({num_steps}) or be "
                         f"null (all of val), got {tune_tokens}: use e.g. 10000.")
    for ids in splits.values():
        check_enough_tokens(len(ids), 1, num_steps, "evaluated split", sampling="consecutive")
    tuning = splits["val"] if tune_tokens is None else splits["val"][: tune_tokens + 1]  # +1: the last target

    reader = partial(StreamReader, model, num_steps, rms=rms, decay=decay, eps=eps)  # reader(lr): a fresh one
    best = None  # (perplexity on the tuning tokens, rate, its reader, its log p there)
    for lr in [0.0, *(lr for lr in learning_rates if lr != 0.0)]:
        tuned = reader(lr)
        log_p = tuned.read(tuning, progress, f"rate {lr:g}, tuning on val")
        # A rate that diverges scores inf (perplexity_of): it loses. Ties: the first (no update).
        if best is None or perplexity_of(log_p) < best[0]:
            best = (perplexity_of(log_p), lr, tuned, log_p)
    _, lr, tuned, tuned_log_p = best
    # The tuning reader stopped before token len(tuned_log_p) of val: it goes on from there.
    rest = tuned.read(splits["val"][len(tuned_log_p):], progress, f"rate {lr:g}, the rest of val")
    neural = {"val": np.concatenate([tuned_log_p, rest])}
    if "test" in splits:
        neural["test"] = reader(lr).read(splits["test"], progress, f"rate {lr:g} on test")
    if adaptive is None:
        adaptive = adaptive_ngram_scores(ngram, splits, num_steps, progress)
    counted = {split: adaptive[split][:len(log_p)] for split, log_p in neural.items()}
    return DynamicResult(lr, *score_and_mix(neural, counted, WEIGHT_GRID))
