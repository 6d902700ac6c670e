"""Neural cache (Grave et al., 2017): a pointer to the recent positions whose hidden states look
like the current one, which copies what followed them: lyrics repeat their choruses.

    p(w | h_t) = (1 - λ) p_model(w | h_t) + λ p_cache(w | h_t)
    p_cache(w | h_t) = Σ_{i in window, x_{i+1} = w} exp(θ h_t·h_i) / Σ_{i in window} exp(θ h_t·h_i)

The window: the last `size` positions i < t of the split read as one stream (h_i: the last
layer's output that predicted x_{i+1}); empty at the first position, where p = p_model. θ and
λ are chosen on val. Scored on the adaptive n-gram's positions (1 .. len - 1), to mix per token.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lyricist.evaluation.interpolation import WEIGHT_GRID, check_splits, mixture_log_probs, perplexity_of, score_and_mix
from lyricist.evaluation.metrics import CacheResult
from lyricist.evaluation.ngram import KneserNey, adaptive_ngram_scores
from lyricist.models import RecurrentLM, eval_mode
from lyricist.models.stream import read_streams

LAMBDAS = tuple(i / 20 for i in range(20))  # 0 (no cache: never worse on val) .. 0.95


@torch.no_grad()
def stream_states(model: RecurrentLM, ids: torch.Tensor, chunk: int = 256) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """`ids` read as one stream, state carried: log p_model of tokens 1 .. len - 1 (N,), the hidden
    states that predicted them (N, H) and those tokens (N,). Chunks change the speed, not the numbers."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    whole, rest = divmod(len(ids) - 1, chunk)
    lengths = [chunk] * whole + ([rest] if rest else [])  # every token to the last
    log_probs, hidden = [], []
    with eval_mode(model):
        for h, y, _ in read_streams(model, ids, 1, chunk, lengths=lengths, head=False):  # (1, T, H), (1, T)
            logits = F.linear(h[0], model.head.weight, model.head.bias)  # (T, V)
            log_probs.append(F.log_softmax(logits.double(), dim=-1).gather(1, y[0, :, None])[:, 0])  # (T,)
            hidden.append(h[0].double())
    return torch.cat(log_probs).numpy(), torch.cat(hidden), ids[1:]


def cache_log_probs(hidden: torch.Tensor, targets: torch.Tensor, theta: float, size: int,
                    rows: int = 512) -> np.ndarray:
    """log p_cache of each target (N,): -inf where the window holds no earlier copy of it, nan at
    position 0 (an empty window). Computed `rows` positions at a time: (rows, rows + size) scores."""
    n = len(targets)
    out = np.empty(n)
    for a in range(0, n, rows):
        b, lo = min(a + rows, n), max(0, a - size)
        scores = theta * hidden[a:b] @ hidden[lo:b].T  # (b-a, b-lo): h_t·h_i
        t = torch.arange(a, b)[:, None]  # (b-a, 1)
        i = torch.arange(lo, b)[None, :]  # (1, b-lo)
        window = (i < t) & (i >= t - size)
        scores = scores.masked_fill(~window, -math.inf)
        out[a:b] = pointer_log_probs(scores, targets[lo:b], targets[a:b]).numpy()  # -inf - -inf = nan: empty window
    return out


def pointer_log_probs(scores: torch.Tensor, next_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log of the softmax mass of `scores` (R, M) on the M remembered positions followed by each
    row's target: next_ids (M,), targets (R,) -> (R,); -inf where none is."""
    same = scores.masked_fill(next_ids[None, :] != targets[:, None], -math.inf)
    return torch.logsumexp(same, dim=1) - torch.logsumexp(scores, dim=1)


def with_cache(model_log_p: np.ndarray, cache_log_p: np.ndarray, lam: float) -> np.ndarray:
    """log((1 - λ) p_model + λ p_cache) per token; p_model where the cache is empty (nan)."""
    with np.errstate(invalid="ignore"):  # nan (empty cache) is replaced below
        mixed = mixture_log_probs(cache_log_p, model_log_p, lam) if lam else model_log_p
    return np.where(np.isnan(cache_log_p), model_log_p, mixed)


def evaluate_cache(model: RecurrentLM, splits: dict[str, torch.Tensor], size: int, ngram: KneserNey,
                   thetas: Sequence[float], adaptive: dict[str, np.ndarray] | None = None) -> CacheResult:
    """The cached network on "val" and (optionally) "test", θ of `thetas` and λ of LAMBDAS chosen on
    val, alone and mixed with the adaptive `ngram` (`adaptive`: its scores, if the caller has them)."""
    check_splits(splits)
    if size < 1:
        raise ValueError(f"evaluate.cache_size must be an integer >= 1 (positions), got {size}: e.g. 2000")
    read = {split: stream_states(model, ids) for split, ids in splits.items()}
    log_p_val, hidden_val, targets_val = read["val"]
    tried = []  # (val perplexity, θ, λ)
    for theta in thetas:
        cached = cache_log_probs(hidden_val, targets_val, theta, size)
        tried += [(perplexity_of(with_cache(log_p_val, cached, lam)), theta, lam) for lam in LAMBDAS]
    _, theta, lam = min(tried, key=lambda t: t[0])  # ties: the first
    scored = {split: with_cache(log_p, cache_log_probs(hidden, targets, theta, size), lam)
              for split, (log_p, hidden, targets) in read.items()}
    if adaptive is None:
        adaptive = adaptive_ngram_scores(ngram, splits)
    return CacheResult(size, theta, lam, *score_and_mix(scored, adaptive, WEIGHT_GRID))
