"""``x @ W^T (+ b)`` on oneDNN where that is faster than torch's default.

Why: on CPU, torch's float32 ``mm``/``addmm`` call MKL, and MKL runs its AVX2 kernels on
non-Intel CPUs; oneDNN, which ships inside torch (torch.nn.LSTM's fused CPU kernel runs on
it), runs AVX-512 ones. On the AMD EPYC this project is benchmarked on (2 threads) that is
~1.7x on the (T*B, H) x (H, V) head product of a training step (7.5 vs 13 ms) and ~1.4x on a
(B, H) x (H, 4H) time step with the weight packed (92 vs 127 us). Weight gradients, whose
first operand is a transpose, stay on ``mm``, which reads it in place (oneDNN copies it).

``torch.ops.mkldnn._linear_pointwise`` is oneDNN's inner product on ordinary dense
tensors. It is a private op, so everything here falls back to plain torch when it is
missing, when mkldnn is switched off (``torch.backends.mkldnn.flags(enabled=False)``),
or when the call is not float32 on CPU or has few rows -- the float64 tests take the fallback. The
results are the same up to float32 rounding (a different summation order).

A time loop's weight is packed once for its T products (``pack``). On an Intel CPU MKL's own
packed product (``torch.ops.mkl._mkl_linear``, also private) is the faster one: measured on a
2-core Xeon, 2 threads, a (64, 512) x (512, 1536) step took 457 us against oneDNN's 552 (2048
columns: 548 vs 698; a 32 x 256 LSTM step's backward product 82 vs 127 us), while the AMD EPYC
above gets MKL's AVX2 kernels; so Intel packs with MKL and every other CPU with oneDNN.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from lyricist.models.fast.switch import Switch

_ONEDNN = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
_MKL_PACKED = getattr(getattr(torch.ops, "mkl", None), "_mkl_linear", None)
_switch = Switch(True)


def _intel_cpu() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# Which library packs a time loop's weight on this machine (see above); the tests turn it off and on.
mkl_packing = Switch(_MKL_PACKED is not None and torch.backends.mkl.is_available() and _intel_cpu())


class Packed(NamedTuple):
    """A weight (O, I) prepared for many products with ``rows``-row inputs: ``packed`` holds its
    numbers in MKL's (``mkl``) or oneDNN's blocked layout; ``weight`` is the weight itself,
    which MKL's op also takes (for inputs of another row count)."""

    weight: Tensor
    packed: Tensor
    rows: int
    mkl: bool


def onednn(enabled: bool) -> contextlib.AbstractContextManager:
    """Use oneDNN (``True``) or always torch's default matmul (``False``) inside the block;
    the benchmark uses it to show what the matmul backend alone is worth."""
    return _switch.set(enabled)


# Measured here, one thread: on a single row (generation) oneDNN's call overhead loses to
# MKL (18 vs 7 us for (1, 256) x (256, 256)); from a batch of 32 rows on it wins. Packing a
# weight costs about 7 products of 32 rows, so a loop packs only when it is long enough.
MIN_ROWS = 8
MIN_USES_TO_PACK = 8


def uses_onednn(*tensors: Tensor, rows: int = MIN_ROWS) -> bool:
    return (_switch.on and rows >= MIN_ROWS and _ONEDNN is not None and torch.backends.mkldnn.is_available()
            and torch._C._get_mkldnn_enabled()
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def _rows(x: Tensor) -> int:
    return x.numel() // max(x.shape[-1], 1)


def pack(weight: Tensor, rows: int, uses: int) -> Tensor | Packed:
    """``weight`` (O, I) packed for ``uses`` products with ``rows``-row inputs (MKL's layout on
    Intel, oneDNN's elsewhere), when the optimised products are on and the loop is long enough;
    otherwise the weight unchanged. A time loop multiplies by the same weight T times; packing
    it once saves reordering it at every step (~15% of a (32, H) step). Only for
    ``linear_nograd``, ``add_linear_`` and the compiled steps (``parts``)."""
    if uses < MIN_USES_TO_PACK or not uses_onednn(weight, rows=rows):
        return weight
    if mkl_packing.on:
        return Packed(weight, torch.ops.mkl._mkl_reorder_linear_weight(weight, rows), rows, mkl=True)
    return Packed(weight, torch.ops.mkldnn._reorder_linear_weight(weight, rows), rows, mkl=False)


def parts(weight: Tensor | Packed) -> tuple[Tensor, Tensor | None, bool]:
    """(weight, packed or None, whether MKL packed it): how the compiled steps take a weight."""
    if isinstance(weight, Packed):
        return weight.weight, weight.packed, weight.mkl
    return weight, None, False


def linear_nograd(x: Tensor, weight: Tensor | Packed, bias: Tensor | None = None) -> Tensor:
    """x (..., I) @ weight (O, I)^T + bias (O,) -> (..., O), outside autograd."""
    if isinstance(weight, Packed):
        if weight.mkl:
            return _MKL_PACKED(x, weight.packed, weight.weight, bias, weight.rows)
        return _ONEDNN(x, weight.packed, bias, "none", [], "")
    if uses_onednn(x, weight, rows=_rows(x)):
        return _ONEDNN(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def add_linear_(out: Tensor, x: Tensor, weight: Tensor | Packed) -> Tensor:
    """out (N, O) += x (N, I) @ weight (O, I)^T, in place (the role of ``addmm_``)."""
    if isinstance(weight, Packed) or uses_onednn(x, weight, out, rows=_rows(x)):
        return out.add_(linear_nograd(x, weight))
    return out.addmm_(x, weight.t())


class _Linear(Function):
    """F.linear with every product of its forward and backward through ``linear_nograd``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear_nograd(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        grad_y = grad_y.reshape(-1, weight.shape[0])  # (..., O) -> (N, O)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = linear_nograd(grad_y, weight.t()).view(x.shape)  # dy W: (N, O) (O, I) -> (..., I)
        if ctx.needs_input_grad[1]:
            # dy^T x: (O, N) (N, I). Plain mm here: it reads the transposed operand in place,
            # where oneDNN would first copy the (N, O) gradient (measured slower, ~9 vs ~12 ms).
            grad_weight = grad_y.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_y.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Drop-in for ``F.linear`` (autograd included) that runs on oneDNN when it can."""
    if uses_onednn(x, weight, rows=_rows(x)):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
