"""Neural cache (Grave et al., 2017): a pointer to the recent positions whose hidden states look
like the current one, which copies what followed them. Lyrics repeat their choruses; the cache
predicts the repeat from the text already read, the way the adaptive n-gram counts it.

    p(w | h_t) = (1 - λ) p_model(w | h_t) + λ p_cache(w | h_t)
    p_cache(w | h_t) = Σ_{i in window, x_{i+1} = w} exp(θ h_t·h_i) / Σ_{i in window} exp(θ h_t·h_i)

The window holds the last `size` positions i < t of the split read as one stream (h_i: the last
layer's output that predicted x_{i+1}, what the head reads). θ (flatness) and λ are chosen on
val, then test is scored with them. The first position has an empty cache: p = p_model there.
Like dynamic evaluation it reads each token before predicting the next, never ahead, and it
is scored on the positions the adaptive n-gram is (1 .. len - 1), so the two mix per token.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lyricist.checkpoint import load_checkpoint
from lyricist.data.vocab import load_ids
from lyricist.evaluation.dynamic import adaptive_ngram_token_log_probs
from lyricist.evaluation.interpolation import WEIGHT_GRID, check_splits, choose_weight, mixture_log_probs, perplexity_of
from lyricist.evaluation.metrics import Perplexities
from lyricist.evaluation.ngram import KneserNey, best_kneser_ney, load_kneser_ney
from lyricist.models import RecurrentLM, eval_mode
from lyricist.settings import BaselineSettings, EvaluateSettings

THETAS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)  # Grave et al. tune θ on val; the range depends on |h|
LAMBDAS = tuple(i / 20 for i in range(20))  # 0 (no cache: never worse on val) .. 0.95


@dataclass(frozen=True)
class CacheResult:
    """The network with a neural cache, alone and mixed with the adaptive n-gram."""

    size: int  # positions the cache holds
    theta: float  # flatness, chosen on val
    lam: float  # weight of the cache, chosen on val
    weight: float  # of the cached network in the mixture with the adaptive n-gram, chosen on val
    cache: Perplexities
    ngram_adaptive: Perplexities  # over the same positions (1 .. len - 1 of each split)
    interpolated: Perplexities

    def as_flat_dict(self) -> dict:
        return {"cache_size": self.size, "cache_theta": self.theta, "cache_lambda": self.lam,
                "cache_interpolation_weight": self.weight,
                **{f"{prefix}{split}_ppl": getattr(ppl, split) for split in ("val", "test")
                   for prefix, ppl in (("cache_", self.cache), ("cache_interpolated_", self.interpolated))
                   if getattr(ppl, split) is not None}}


@torch.no_grad()
def stream_states(model: RecurrentLM, ids: torch.Tensor, chunk: int = 256) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """`ids` read as one stream, state carried: log p_model of tokens 1 .. len - 1 (N,), the hidden
    states that predicted them (N, H) and those tokens (N,). Chunks change the speed, not the numbers."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    state, log_probs, hidden = None, [], []
    with eval_mode(model):
        for start in range(0, len(ids) - 1, chunk):
            x = ids[start:start + chunk][None, : len(ids) - 1 - start]  # (1, T)
            h, state = model.features(x, state)  # (1, T, H)
            y = ids[start + 1:start + 1 + x.size(1)]  # (T,)
            logits = F.linear(h[0], model.head.weight, model.head.bias)  # (T, V)
            log_probs.append(F.log_softmax(logits.double(), dim=-1).gather(1, y[:, None])[:, 0])  # (T,)
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
        mixed = mixture_log_probs(cache_log_p, model_log_p, lam) if lam else model_log_p.copy()
    empty = np.isnan(cache_log_p)
    mixed[empty] = model_log_p[empty]
    return mixed


def evaluate_cache(model: RecurrentLM, splits: dict[str, torch.Tensor], size: int,
                   ngram: KneserNey | None = None, thetas: Sequence[float] = THETAS,
                   lambdas: Sequence[float] = LAMBDAS, weights: Sequence[float] = WEIGHT_GRID) -> CacheResult:
    """The cached network on "val" and (optionally) "test", θ and λ chosen on val (θ from
    `thetas`, λ from `lambdas`), alone and mixed with the adaptive `ngram` (each token counted
    once read; the mixture weight chosen on val). Without `ngram`, the mixture is left out (nan)."""
    check_splits(splits)
    if size < 1:
        raise ValueError(f"evaluate.cache_size must be an integer >= 1 (positions), got {size}: e.g. 2000")
    read = {split: stream_states(model, ids) for split, ids in splits.items()}
    log_p_val, hidden_val, targets_val = read["val"]
    best = None  # (val perplexity, θ, λ)
    for theta in thetas:
        cached = cache_log_probs(hidden_val, targets_val, theta, size)
        for lam in lambdas:
            ppl = perplexity_of(with_cache(log_p_val, cached, lam))
            if best is None or ppl < best[0]:
                best = (ppl, theta, lam)
    _, theta, lam = best
    scored = {split: with_cache(log_p, cache_log_probs(hidden, targets, theta, size), lam)
              for split, (log_p, hidden, targets) in read.items()}
    cache = Perplexities.of_splits({split: perplexity_of(lp) for split, lp in scored.items()})
    nan = Perplexities.of_splits({split: math.nan for split in splits})
    if ngram is None:
        return CacheResult(size, theta, lam, math.nan, cache, nan, nan)
    adaptive = {split: adaptive_ngram_token_log_probs(ngram, ids, np.arange(1, len(ids)))
                for split, ids in splits.items()}
    weight, _ = choose_weight(scored["val"], adaptive["val"], weights)
    kn = Perplexities.of_splits({split: perplexity_of(lp) for split, lp in adaptive.items()})
    mixed = Perplexities.of_splits({split: perplexity_of(mixture_log_probs(scored[split], adaptive[split], weight))
                                    for split in splits})
    return CacheResult(size, theta, lam, weight, cache, kn, mixed)


def cache_of_checkpoint(checkpoint, data_dir: Path, e: EvaluateSettings, b: BaselineSettings,
                        ngram_path: str | Path | None = None,
                        report: Callable[[str], None] = lambda line: None) -> CacheResult | None:
    """The evaluate stage's cache row for a checkpoint, with `evaluate.cache_size` and `cache_thetas`
    (null: no row; an ensemble has no one hidden state: no row) and the baseline's Kneser-Ney model
    (`ngram_path`, else fit here on train as the baseline does)."""
    if not e.cache_size or (not isinstance(checkpoint, (str, Path)) and len(checkpoint) > 1):
        return None
    start = time.perf_counter()
    loaded = load_checkpoint(checkpoint if isinstance(checkpoint, (str, Path)) else checkpoint[0])
    splits = {"val": load_ids(data_dir / "val.npy")}
    if (data_dir / "test.npy").is_file() and len(test := load_ids(data_dir / "test.npy")):
        splits["test"] = test
    vocab_size = len(loaded.vocab)
    if ngram_path is not None:
        ngram = load_kneser_ney(ngram_path, vocab_size, b.max_order, b.discount_mode, b.fixed_discount)
    else:
        ngram, _ = best_kneser_ney(load_ids(data_dir / "train.npy"), splits["val"], vocab_size, b.max_order,
                                   b.discount_mode, b.fixed_discount)
    result = evaluate_cache(loaded.model, splits, e.cache_size, ngram, thetas=e.cache_thetas or THETAS)
    report(f"  neural cache (θ {result.theta:g}, λ {result.lam:g} of {result.size} positions): "
           f"{time.perf_counter() - start:.1f} s")
    return result
