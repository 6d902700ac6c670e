"""Neural + n-gram interpolation: p(x) = w * p_neural(x | history) + (1 - w) * p_kn(x | context),
both scored per token on the same positions of a split: those the network predicts reading it
as `batch_size` streams (as the static perplexity does), the n-gram seeing the tokens before
each position in the split itself (across stream borders). w is chosen on val, a grid over [0, 1].
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lyricist.data.batching import check_enough_tokens
from lyricist.evaluation.metrics import InterpolationResult, Perplexities
from lyricist.evaluation.ngram import KneserNey, ngram_token_log_probs
from lyricist.evaluation.ppl import perplexity as ppl
from lyricist.models import RecurrentLM, eval_mode
from lyricist.models.stream import read_streams

WEIGHT_GRID = tuple(i / 20 for i in range(21))  # 0.0, 0.05, ..., 1.0 (exact decimals)


@torch.no_grad()
def neural_token_log_probs(model: RecurrentLM, ids: torch.Tensor, batch_size: int,
                           num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, log p) of every token the network predicts reading `ids` as `batch_size`
    consecutive streams, state carried (the tail that fills no batch left out); sorted by
    position. Stream b holds ids[b * L : (b + 1) * L] (L = len(ids) // batch_size): the label at
    column j of batch i is the token at b * L + i * num_steps + j + 1."""
    check_enough_tokens(len(ids), batch_size, num_steps, "evaluated split", sampling="consecutive")
    stream_starts = torch.arange(batch_size) * (len(ids) // batch_size)  # (B,)
    columns = torch.arange(num_steps) + 1  # (T,)
    positions, log_probs = [], []
    with eval_mode(model):
        for i, (logits, y, _) in enumerate(read_streams(model, ids, batch_size, num_steps)):  # (B, T, V), (B, T)
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")  # (B*T,)
            log_probs.append(-nll.double().cpu())
            positions.append((stream_starts[:, None] + i * num_steps + columns[None, :]).reshape(-1))  # (B*T,)
    positions_np = torch.cat(positions).numpy()
    order = np.argsort(positions_np, kind="stable")
    return positions_np[order], torch.cat(log_probs).numpy()[order]


def mixture_log_probs(neural: np.ndarray, ngram: np.ndarray, weight: float) -> np.ndarray:
    """log(w * p_neural + (1 - w) * p_ngram) per token: w = 1 gives `neural`, w = 0 `ngram`, exactly."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the mixture weight must lie in [0, 1], got {weight}.")
    log_w = math.log(weight) if weight > 0 else -math.inf  # -inf: that side drops out exactly
    log_1mw = math.log1p(-weight) if weight < 1 else -math.inf
    return np.logaddexp(log_w + neural, log_1mw + ngram)


def perplexity_of(log_probs: np.ndarray) -> float:
    """exp(mean negative log-likelihood) of per-token log-probabilities (inf for a diverged model)."""
    return ppl(-float(np.mean(log_probs)))


def check_splits(splits: dict) -> None:
    """What is chosen is chosen on "val"; "test" (optional) is scored with it."""
    if "val" not in splits:
        raise ValueError("the mixture weight is chosen on val: pass a 'val' split.")
    if not set(splits) <= {"val", "test"}:
        raise ValueError(f"the splits are 'val' and optionally 'test', got {sorted(splits)}.")


def choose_weight(neural: np.ndarray, ngram: np.ndarray,
                  weights: Sequence[float] = WEIGHT_GRID) -> tuple[float, float]:
    """The weight of `weights` with the lowest mixture perplexity on these tokens, and that perplexity."""
    scored = [(perplexity_of(mixture_log_probs(neural, ngram, w)), w) for w in weights]
    best_ppl, best_w = min(scored, key=lambda pair: pair[0])
    return best_w, best_ppl


def score_and_mix(neural: dict[str, np.ndarray], ngram: dict[str, np.ndarray],
                  weights: Sequence[float]) -> tuple[float, Perplexities, Perplexities, Perplexities]:
    """From the network's and the n-gram's log p at the same positions of each split: the
    mixture weight chosen on val, and the network's, the n-gram's and the mixture's perplexities."""
    pairs = {split: (log_p, ngram[split]) for split, log_p in neural.items()}
    for split, (log_p, kn) in pairs.items():
        if len(kn) != len(log_p):
            raise ValueError(f"{split}: the n-gram scored {len(kn)} positions, the network {len(log_p)}; "
                             "score both on the same positions.")
    weight, _ = choose_weight(*pairs["val"], weights=weights)
    ppl = {split: [perplexity_of(lp) for lp in (log_p, kn, mixture_log_probs(log_p, kn, weight))]
           for split, (log_p, kn) in pairs.items()}  # split -> [network, n-gram, mixture]
    return weight, *(Perplexities(**{split: p[i] for split, p in ppl.items()}) for i in range(3))


def interpolate_with_ngram(model: RecurrentLM, splits: dict[str, torch.Tensor], ngram: KneserNey, batch_size: int,
                           num_steps: int, weights: Sequence[float] = WEIGHT_GRID,
                           neural: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> InterpolationResult:
    """The network mixed with `ngram` (the baseline's val-best Kneser-Ney model), the weight chosen on
    "val" (`neural`: the network's `neural_token_log_probs` per split, if the caller has them)."""
    check_splits(splits)
    if neural is None:
        neural = {split: neural_token_log_probs(model, ids, batch_size, num_steps) for split, ids in splits.items()}
    ngram_log_p = {split: ngram_token_log_probs(ngram, ids, neural[split][0]) for split, ids in splits.items()}
    weight, _, kn, mixed = score_and_mix({split: neural[split][1] for split in splits}, ngram_log_p, weights)
    return InterpolationResult(order=ngram.order, weight=weight, ngram=kn, interpolated=mixed)
