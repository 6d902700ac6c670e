"""Perplexity from a mean loss that cannot overflow: where `math.exp(loss)` raises OverflowError (a diverged
model, a huge model.init_scale) it is inf, which a caller treats as a divergence (one line), never a traceback."""

from __future__ import annotations

import math
import sys

MAX_LOSS = math.log(sys.float_info.max)  # 709.78...: exp() of anything above overflows float64


def perplexity(loss: float) -> float:
    """exp(loss): inf when the loss is +inf or above MAX_LOSS, nan for a nan loss."""
    if math.isnan(loss):
        return math.nan
    return math.exp(loss) if loss <= MAX_LOSS else math.inf


def why_not_finite(loss: float) -> str | None:
    """None when exp(loss) is a finite perplexity, else what is wrong, for a message."""
    if math.isfinite(perplexity(loss)):
        return None
    return "is not finite" if not math.isfinite(loss) else f"overflows its perplexity (exp of more than {MAX_LOSS:.2f})"
