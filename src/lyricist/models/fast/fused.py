"""Whole-chunk recurrences as ``torch.autograd.Function``s: the forward loop outside autograd into
preallocated (T, B, ...) buffers, a hand-written backward doing step by step only what is sequential
(docs/speed.md, two paths); cells.py's ``step`` math, held to it, torch.nn and ``gradcheck`` by the
tests. ``x_proj`` (T, B, G*H) is every step's input half (``bias_ih`` included), the weights in
torch.nn's layout and gate order, the states (B, H), ``outputs`` (T, B, H)::

    outputs, *final_state = RNNSequence.apply(x_proj, weight_hh, bias_hh, h0, relu)
    outputs, *final_state, gates = XSequence.apply(x_proj, weight_hh, bias_hh, *state, overwrite)  # LSTM, GRU

``overwrite=True``: the LSTM and the GRU write their activated gates over ``x_proj`` (the caller's
temporary; ``mark_dirty``: misuse fails loudly, never wrong), returned last, not differentiable: a
fresh buffer costs its page faults (docs/speed.md: in place of fresh buffers).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable

from lyricist.models.fast.kernels import step_kernels
from lyricist.models.fast.matmul import add_linear_, linear_nograd, pack, parts


def _first_grad(grad_outputs: Tensor | None, grad_h_last: Tensor | None, like: Tensor) -> Tensor:
    """dL/dh_t (T, B, H, like the outputs) as known before the backward loop: the outputs' gradient plus
    the final state's at the last step (None: none came). Owned and contiguous: the loop adds into it."""
    grad_h = (torch.zeros_like(like, memory_format=torch.contiguous_format) if grad_outputs is None
              else grad_outputs.clone(memory_format=torch.contiguous_format))  # (T, B, H)
    if grad_h_last is not None:
        grad_h[-1] += grad_h_last
    return grad_h


def _gates_buffer(ctx, x_proj: Tensor, overwrite: bool) -> Tensor:
    """Where the activated gates go (T, B, G*H): over x_proj when the caller gives it up and it is a
    contiguous tensor of its own (not a view, whose base's gradient autograd would rebuild; not a leaf
    wanting a gradient), else a new buffer. Gradients that none reached come as None, not as zeros."""
    ctx.set_materialize_grads(False)
    own = x_proj._base is None and x_proj.is_contiguous() and not (x_proj.is_leaf and x_proj.requires_grad)
    if overwrite and own:
        ctx.mark_dirty(x_proj)
        gates = x_proj
    else:
        gates = torch.empty_like(x_proj, memory_format=torch.contiguous_format)
    ctx.mark_non_differentiable(gates)
    return gates


def _weight_grads(grad_gates: Tensor, hs: Tensor) -> tuple[Tensor, Tensor]:
    """(dW_hh, db_hh) = (sum_t dgates_t^T h_{t-1}, sum_t dgates_t), each as one op over T*B rows."""
    grad_gates_2d = grad_gates.reshape(-1, grad_gates.shape[-1])  # (T*B, G*H)
    h_prev_2d = hs[:-1].reshape(-1, hs.shape[-1])  # (T*B, H)
    grad_weight = grad_gates_2d.t().mm(h_prev_2d)  # (G*H, T*B) (T*B, H) -> (G*H, H); mm reads the transpose in place
    return grad_weight, grad_gates_2d.sum(0)


class RNNSequence(Function):
    """Elman recurrence h_t = act(x_proj_t + h_{t-1} W_hh^T + b_hh), act = tanh or relu."""

    @staticmethod
    def forward(ctx, x_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor, h0: Tensor, relu: bool = False):
        num_steps, batch_size, hidden_size = x_proj.shape
        hs = x_proj.new_empty(num_steps + 1, batch_size, hidden_size)  # hs[0] = h0, hs[t + 1] = h_t
        hs[0] = h0
        # Every step's pre-activation starts as its input half; the recurrent half is added in place.
        torch.add(x_proj, bias_hh, out=hs[1:])
        weight = pack(weight_hh, batch_size, uses=num_steps)
        for t in range(num_steps):
            pre = add_linear_(hs[t + 1], hs[t], weight)  # (B, H)
            pre.relu_() if relu else pre.tanh_()
        ctx.relu = relu
        ctx.save_for_backward(weight_hh, hs)
        # The final state is cloned so that it does not alias the outputs (and the saved buffer).
        return hs[1:], hs[-1].clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: Tensor, grad_h_last: Tensor):
        weight_hh, hs = ctx.saved_tensors
        outputs = hs[1:]  # (T, B, H)
        # The activation's derivative from its output, for all steps at once: tanh' = 1 - h^2, relu' = [h > 0].
        slope = (outputs > 0).to(outputs.dtype) if ctx.relu else 1.0 - outputs.square()  # (T, B, H)
        weight_t = pack(weight_hh.t(), hs.shape[1], uses=hs.shape[0] - 1)  # (H, H): dpre W = dpre (W^T)^T
        grad = _first_grad(grad_outputs, grad_h_last, outputs)  # dL/dh_t, turned into dL/dpre_t in place
        for t in range(grad.shape[0] - 1, 0, -1):
            grad[t].mul_(slope[t])
            add_linear_(grad[t - 1], grad[t], weight_t)  # pre_t = ... + h_{t-1} W^T  =>  dh_{t-1} += dpre_t W
        grad[0].mul_(slope[0])
        grad_h0 = linear_nograd(grad[0], weight_t) if ctx.needs_input_grad[3] else None  # none for a detached state
        return grad, *_weight_grads(grad, hs), grad_h0, None


class LSTMSequence(Function):
    """LSTM recurrence, gate order i, f, g, o as torch.nn; state (h, c)."""

    @staticmethod
    def forward(ctx, x_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor, h0: Tensor, c0: Tensor,
                overwrite: bool = False):
        num_steps, batch_size, gates_size = x_proj.shape
        hidden = gates_size // 4
        gates = _gates_buffer(ctx, x_proj, overwrite)  # the activated gates, what backward needs: (T, B, 4H)
        hs = x_proj.new_empty(num_steps + 1, batch_size, hidden)  # hs[0] = h0, hs[t + 1] = h_t
        cs = x_proj.new_empty(num_steps + 1, batch_size, hidden)  # cs[0] = c0, cs[t + 1] = c_t
        tanh_cs = x_proj.new_empty(num_steps, batch_size, hidden)  # tanh(c_t), reused by backward
        hs[0], cs[0] = h0, c0
        weight = pack(weight_hh, batch_size, uses=num_steps)
        kernels = step_kernels() if x_proj.device.type == "cpu" else None
        if kernels is not None:  # the loop below in C++ (csrc/steps.cpp), b_hh added in its step
            # x_proj and gates may be one buffer: each entry is read before it is written.
            kernels.lstm_forward(x_proj.contiguous(), bias_hh.contiguous(), *parts(weight), gates, hs, cs, tanh_cs)
        else:
            torch.add(x_proj, bias_hh, out=gates)  # the pre-activations' input half, the loop adds the rest
            for t in range(num_steps):
                g = add_linear_(gates[t], hs[t], weight)  # (B, 4H)
                g[:, : 2 * hidden].sigmoid_()  # i, f
                g[:, 2 * hidden : 3 * hidden].tanh_()  # g (the candidate)
                g[:, 3 * hidden :].sigmoid_()  # o
                i, f, cand, o = g.chunk(4, dim=1)  # 4 x (B, H)
                torch.mul(f, cs[t], out=cs[t + 1]).addcmul_(i, cand)  # c_t = f c_{t-1} + i g
                torch.mul(o, torch.tanh(cs[t + 1], out=tanh_cs[t]), out=hs[t + 1])  # h_t = o tanh(c_t)
        ctx.save_for_backward(weight_hh, gates, hs, cs, tanh_cs)
        return hs[1:], hs[-1].clone(), cs[-1].clone(), gates

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: Tensor | None, grad_h_last: Tensor | None, grad_c_last: Tensor | None, _gates):
        weight_hh, gates, hs, cs, tanh_cs = ctx.saved_tensors
        num_steps, batch_size, _ = gates.shape
        grad_h = _first_grad(grad_outputs, grad_h_last, hs[1:])  # (T, B, H)
        grad_c = (torch.zeros_like(cs[0]) if grad_c_last is None  # dL/dc (B, H), carried back in time
                  else grad_c_last.clone(memory_format=torch.contiguous_format))
        grad_gates = torch.empty_like(gates)  # (T, B, 4H)
        weight_t = pack(weight_hh.t(), batch_size, uses=num_steps)  # (H, 4H): dgates W = dgates (W^T)^T
        kernels = step_kernels() if gates.device.type == "cpu" else None
        if kernels is not None:  # the loop below, in C++ (csrc/steps.cpp)
            kernels.lstm_backward(grad_h, grad_c, gates, cs, tanh_cs, grad_gates, *parts(weight_t))
        else:
            i, f, cand, o = gates.chunk(4, dim=2)  # 4 x (T, B, H)
            # Everything that does not depend on the incoming gradient, for all steps at once:
            #   dc_t += dh_t * o (1 - tanh(c_t)^2)
            #   dpre_i = dc_t * g sig'(i),  dpre_f = dc_t * c_{t-1} sig'(f),  dpre_g = dc_t * i (1 - g^2),
            #   dpre_o = dh_t * tanh(c_t) sig'(o)                         (sig'(x) = s (1 - s) from s)
            c_from_h = o * (1.0 - tanh_cs.square())  # (T, B, H)
            coef = (gates - gates.square()).view(num_steps, batch_size, 4, -1)  # sig' of every gate: (T, B, 4, H)
            coef[:, :, 0].mul_(cand)
            coef[:, :, 1].mul_(cs[:-1])
            torch.mul(i, 1.0 - cand.square(), out=coef[:, :, 2])
            coef[:, :, 3].mul_(tanh_cs)
            for t in range(num_steps - 1, -1, -1):
                grad_c.addcmul_(grad_h[t], c_from_h[t])
                blocks = grad_gates[t].view(batch_size, 4, -1)  # (B, 4H) seen as (B, 4, H)
                torch.mul(grad_c.unsqueeze(1), coef[t, :, :3], out=blocks[:, :3])  # i, f, g: from dc
                torch.mul(grad_h[t], coef[t, :, 3], out=blocks[:, 3])  # o: from dh
                grad_c.mul_(f[t])  # c_t = f_t c_{t-1} + ...  =>  dc_{t-1} = dc_t f_t
                if t > 0:
                    add_linear_(grad_h[t - 1], grad_gates[t], weight_t)
        # A carried state is detached, so training never needs dL/dh_0: no product for it then.
        grad_h0 = linear_nograd(grad_gates[0], weight_t) if ctx.needs_input_grad[3] else None
        return grad_gates, *_weight_grads(grad_gates, hs), grad_h0, grad_c if ctx.needs_input_grad[4] else None, None


class GRUSequence(Function):
    """GRU recurrence, gate order r, z, n as torch.nn:
    r, z = sig(x_rz + W_hrz h + b_hrz);  n = tanh(x_n + r (W_hn h + b_hn));  h' = n + z (h - n)."""

    @staticmethod
    def forward(ctx, x_proj: Tensor, weight_hh: Tensor, bias_hh: Tensor, h0: Tensor, overwrite: bool = False):
        num_steps, batch_size, gates_size = x_proj.shape
        hidden = gates_size // 3
        gates = _gates_buffer(ctx, x_proj, overwrite)  # the activated r, z, n of every step: (T, B, 3H)
        x_proj = x_proj.contiguous()  # (T, B, 3H): the compiled loop walks it by pointer (maybe gates' own buffer)
        hs = x_proj.new_empty(num_steps + 1, batch_size, hidden)  # hs[0] = h0, hs[t + 1] = h_t
        hn = torch.empty_like(hs[1:])  # W_hn h_{t-1} + b_hn, the recurrent half that r scales: (T, B, H)
        hs[0] = h0
        weight = pack(weight_hh, batch_size, uses=num_steps)
        kernels = step_kernels() if x_proj.device.type == "cpu" else None
        if kernels is not None:  # the loop below, in C++ (csrc/steps.cpp)
            kernels.gru_forward(x_proj, *parts(weight), bias_hh.contiguous(), hs, gates, hn)
        else:
            for t in range(num_steps):
                h_proj = linear_nograd(hs[t], weight, bias_hh)  # (B, 3H)
                rz, new = gates[t, :, : 2 * hidden], gates[t, :, 2 * hidden :]  # (B, 2H), (B, H)
                torch.add(x_proj[t, :, : 2 * hidden], h_proj[:, : 2 * hidden], out=rz).sigmoid_()
                hn[t] = h_proj[:, 2 * hidden :]
                torch.addcmul(x_proj[t, :, 2 * hidden :], rz[:, :hidden], hn[t], out=new).tanh_()
                torch.lerp(new, hs[t], rz[:, hidden:], out=hs[t + 1])  # n + z (h - n): z near 1 keeps the old state
        ctx.save_for_backward(weight_hh, hs, gates, hn)
        return hs[1:], hs[-1].clone(), gates

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_outputs: Tensor | None, grad_h_last: Tensor | None, _gates):
        weight_hh, hs, gates, hn = ctx.saved_tensors
        num_steps, batch_size, _ = gates.shape
        hidden = hn.shape[-1]
        grad_h = _first_grad(grad_outputs, grad_h_last, hs[1:])  # (T, B, H)
        grad_x_proj = torch.empty_like(gates)  # dL/dx_proj: (T, B, 3H)
        grad_h_proj = torch.empty_like(gates)  # dL/d(W_hh h + b_hh): (T, B, 3H)
        grad_h0 = torch.zeros_like(grad_h[0])  # (B, H): dh_0 z_0 here, the product below
        weight_t = pack(weight_hh.t(), batch_size, uses=num_steps)  # (H, 3H): dh_proj W = dh_proj (W^T)^T
        kernels = step_kernels() if gates.device.type == "cpu" else None
        if kernels is not None:  # the loop below, in C++ (csrc/steps.cpp)
            kernels.gru_backward(grad_h, gates, hn, hs, grad_x_proj, grad_h_proj, *parts(weight_t), grad_h0)
        else:
            r, z, new = gates.chunk(3, dim=2)  # 3 x (T, B, H)
            # For all steps at once:
            #   dpre_n = dh (1 - z)(1 - n^2)      dpre_r = dpre_n (W_hn h + b_hn) sig'(r)
            #   dpre_z = dh (h_{t-1} - n) sig'(z)  d(W_hn h + b_hn) = dpre_n r        dh_{t-1} gets dh z directly
            n_coef = (1.0 - z) * (1.0 - new.square())  # (T, B, H)
            r_coef = hn * r * (1.0 - r)
            z_coef = (hs[:-1] - new) * z * (1.0 - z)
            for t in range(num_steps - 1, -1, -1):
                grad_r, grad_z, grad_x_new = grad_x_proj[t].chunk(3, dim=1)  # 3 x (B, H)
                torch.mul(grad_h[t], n_coef[t], out=grad_x_new)
                torch.mul(grad_x_new, r_coef[t], out=grad_r)
                torch.mul(grad_h[t], z_coef[t], out=grad_z)
                grad_h_proj[t, :, : 2 * hidden] = grad_x_proj[t, :, : 2 * hidden]
                torch.mul(grad_x_new, r[t], out=grad_h_proj[t, :, 2 * hidden :])
                previous = grad_h[t - 1] if t > 0 else grad_h0
                previous.addcmul_(grad_h[t], z[t])
                if t > 0:
                    add_linear_(previous, grad_h_proj[t], weight_t)
        if ctx.needs_input_grad[3]:  # never in training: the carried state is detached
            add_linear_(grad_h0, grad_h_proj[0], weight_t)
        return grad_x_proj, *_weight_grads(grad_h_proj, hs), grad_h0 if ctx.needs_input_grad[3] else None, None
