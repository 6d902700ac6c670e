"""``x @ W^T (+ b)`` on the library measured fastest on this machine (choice.py; docs/speed.md), torch's
own where it is as fast: the one-off (dense) products by ``F.linear`` or oneDNN, a time loop's T
products by one weight by torch's mm or the weight packed once (``pack``) for MKL or oneDNN. Plain
torch where the private ops are missing or off, or the call is not float32 on CPU or has few rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from lyricist.models.fast import choice
from lyricist.models.fast.choice import Backend, private_op
from lyricist.models.fast.kernels import Switch

_ONEDNN = private_op("mkldnn", "_linear_pointwise")
_MKL_PACKED = private_op("mkl", "_mkl_linear")
_switch = Switch(True)
private = _switch.set  # private(False): torch's own products inside the block (the benchmark's b*)
_forced = Switch(None)  # the Backend ``use`` set, its loop backend too (not measured per shape); None: measured
use = _forced.set  # use(backend): the products inside the block on it (the tests compare every backend)
_measured = functools.cache(choice.choose)  # this machine's choice, read or measured once per process


def backend() -> Backend:
    """The Backend ``use`` set, else this machine's (choice.py)."""
    return _forced.on or _measured()


class Packed(NamedTuple):
    """A weight (O, I) packed for ``rows``-row inputs in MKL's (``mkl``) or oneDNN's layout, and the
    weight itself, which MKL's op also takes."""

    weight: Tensor
    packed: Tensor
    rows: int
    mkl: bool


# Measured here, one thread: on a single row (generation) oneDNN's call overhead loses to
# MKL (18 vs 7 us for (1, 256) x (256, 256)); from a batch of 32 rows on it wins. Packing a
# weight costs about 7 products of 32 rows, so a loop packs only when it is long enough.
MIN_ROWS = 8
MIN_USES_TO_PACK = 8


def _fast_candidate(tensors: tuple[Tensor, ...], rows: int) -> bool:
    """Whether a product may leave torch's own: switched on, float32 on CPU, enough rows."""
    return (_switch.on and rows >= MIN_ROWS
            and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors))


def _onednn_usable() -> bool:
    return _ONEDNN is not None and torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()


def uses_onednn(x: Tensor, *tensors: Tensor, rows: int | None = None) -> bool:
    """Whether a dense product of x (..., I) and these tensors runs on oneDNN (chosen here, and usable now)."""
    rows = x.numel() // max(x.shape[-1], 1) if rows is None else rows  # the leading dimensions' product
    return _fast_candidate((x, *tensors), rows) and backend().dense == "onednn" and _onednn_usable()


def pack(weight: Tensor, rows: int, uses: int) -> Tensor | Packed:
    """``weight`` (O, I) packed for ``uses`` products of ``rows``-row inputs (by choice.loop_for's backend, or
    ``use``'s), when allowed and the loop is long enough, else itself: packing once saves reordering it at
    every step (~15% of a (32, H) step). For ``linear_nograd``, ``add_linear_``, the compiled steps."""
    if uses < MIN_USES_TO_PACK or not _fast_candidate((weight,), rows):
        return weight
    loop = _forced.on.loop if _forced.on else choice.loop_for(rows, *weight.shape)
    mkl = loop == "mkl" and _MKL_PACKED is not None
    if mkl or (loop == "onednn" and _onednn_usable()):
        weight = weight.contiguous()  # the packing ops read (O, I) row by row
        reorder = torch.ops.mkl._mkl_reorder_linear_weight if mkl else torch.ops.mkldnn._reorder_linear_weight
        return Packed(weight, reorder(weight, rows), rows, mkl)
    return weight  # a transposed view stays one: torch's mm reads it in place


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
    if uses_onednn(x, weight):
        return _ONEDNN(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def add_linear_(out: Tensor, x: Tensor, weight: Tensor | Packed) -> Tensor:
    """out (N, O) += x (N, I) @ weight (O, I)^T in place: ``addmm_``, or a packed weight's product added."""
    if isinstance(weight, Packed):
        return out.add_(linear_nograd(x, weight))
    return out.addmm_(x, weight.t())


class _Linear(Function):
    """F.linear with every product of its forward and backward through ``linear_nograd``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = linear_nograd(x, weight, bias)
        # Not a view (same storage, nothing copied): a (T, B, I) input's product is a view of its (T*B, O)
        # result, and fused.py's ``overwrite`` writes over it, which autograd refuses on a view made inside
        # a Function (on another view, it copies the base).
        return y if y._base is None else y.new_empty(0).set_(y.untyped_storage(), y.storage_offset(), y.shape, y.stride())

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
    """Drop-in for ``F.linear`` (autograd included) that runs on oneDNN when it can; the
    result of a (..., I) input with more than one leading dimension is never a view (``_Linear.forward``)."""
    if x.dim() > 2 or uses_onednn(x, weight):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)
