"""Recurrent cells written from tensor ops, their parameters under torch.nn's names, layouts and
gate order (``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih``, ``bias_hh (G*H,)``), so
that the tests can copy weights to and from the torch.nn cells, their oracles.

A step is split in two: ``project_input(x)``, which does not depend on the state (a language model
runs it once on the whole (T, B, I) chunk), and ``step(x_proj_t, state)``. A chunk of T steps has
two equal paths: ``sequence`` (fast/fused.py's hand-written backward) and ``sequence_reference`` (a
loop over ``step``, autograd's backward); the tests hold one to the other. The state is a tuple of
(B, H) tensors, ``h`` first: ``(h,)`` or the LSTM's ``(h, c)``. An optional ``weight_hh`` (G*H, H)
replaces the parameter: a regulariser's copy (regularisers/weight_drop.py).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lyricist.models.fast import GRUSequence, LSTMSequence, RNNSequence, linear

State = tuple[Tensor, ...]

INITS = ("normal", "uniform", "torch")
NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


class RecurrentCell(nn.Module):
    """Shared parameters and plumbing; subclasses set the class attributes and ``step``."""

    num_gates: int = 1  # G: how many H-sized blocks are stacked in the weights
    num_states: int = 1  # 1 => (h,), 2 => (h, c)
    fused: type  # the chunk's Function in fast/fused.py: outputs, the final state, the gates

    def __init__(self, input_size: int, hidden_size: int, init: str = "normal", init_scale: float = 0.01):
        super().__init__()
        if input_size <= 0 or hidden_size <= 0:
            raise ValueError(f"input_size and hidden_size must be positive, got input_size={input_size}, "
                             f"hidden_size={hidden_size}")
        self.input_size, self.hidden_size = input_size, hidden_size
        gates_size = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(gates_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(gates_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(gates_size))
        self.bias_hh = nn.Parameter(torch.empty(gates_size))
        self.reset_parameters(init, init_scale)

    @torch.no_grad()
    def reset_parameters(self, init: str = "normal", scale: float = 0.01) -> None:
        """``init`` as settings.ModelSettings says: zero biases for ``normal``; ``torch`` ignores ``scale``."""
        if init == "normal":
            for weight in (self.weight_ih, self.weight_hh):
                weight.normal_(0.0, scale)
            for bias in (self.bias_ih, self.bias_hh):
                bias.zero_()
        elif init in ("uniform", "torch"):
            bound = scale if init == "uniform" else 1.0 / math.sqrt(self.hidden_size)
            for param in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
                param.uniform_(-bound, bound)
        else:
            raise ValueError(f"unknown init {init!r}; expected one of {INITS}")

    def begin_state(self, batch_size: int) -> State:
        """All-zero state: ``num_states`` tensors of shape (B, H)."""
        return tuple(self.weight_hh.new_zeros(batch_size, self.hidden_size) for _ in range(self.num_states))

    def project_input(self, x: Tensor) -> Tensor:
        """Input half of the gates, for any leading shape: (..., I) -> (..., G*H)."""
        return linear(x, self.weight_ih, self.bias_ih)  # F.linear, on oneDNN where faster (matmul.py)

    def recurrent_weight(self, weight_hh: Tensor | None) -> Tensor:
        """The W_hh (G*H, H) a step multiplies by: the given one (a DropConnect copy) or the parameter."""
        return self.weight_hh if weight_hh is None else weight_hh

    def project_state(self, h: Tensor, weight_hh: Tensor | None = None) -> Tensor:
        """Recurrent half of the gates: (B, H) -> (B, G*H)."""
        return F.linear(h, self.recurrent_weight(weight_hh), self.bias_hh)

    def step(self, x_proj: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        """One time step from the pre-projected input (B, G*H) and the state (each (B, H))."""
        raise NotImplementedError

    def sequence(self, x_proj: Tensor, state: State, weight_hh: Tensor | None = None,
                 overwrite: bool = False) -> tuple[Tensor, State]:
        """All T steps of x_proj (T, B, G*H): the outputs h (T, B, H) and the final state, by ``fused``.
        ``overwrite``: x_proj is the caller's to lose (the LSTM and the GRU write their gates over it)."""
        outputs, *final, _gates = self.fused.apply(x_proj, self.recurrent_weight(weight_hh), self.bias_hh, *state,
                                                   overwrite)
        return outputs, tuple(final)

    def sequence_reference(self, x_proj: Tensor, state: State,
                           weight_hh: Tensor | None = None) -> tuple[Tensor, State]:
        """``sequence`` as a plain loop over ``step``; autograd does the backward."""
        outputs = []
        for x_proj_t in x_proj:  # (B, G*H)
            state = self.step(x_proj_t, state, weight_hh)
            outputs.append(state[0])
        return torch.stack(outputs), state  # (T, B, H)

    def forward(self, x: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        """One time step from the raw input (B, I)."""
        return self.step(self.project_input(x), state, weight_hh)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}"


class RNNCell(RecurrentCell):
    """Elman cell: h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)."""

    def __init__(self, input_size: int, hidden_size: int, nonlinearity: str = "tanh", init: str = "normal",
                 init_scale: float = 0.01):
        # Checked before the parameters exist so a typo fails fast and clearly.
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}; expected one of {tuple(NONLINEARITIES)}")
        super().__init__(input_size, hidden_size, init, init_scale)
        self.nonlinearity = nonlinearity

    def step(self, x_proj: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        (h,) = state
        h = NONLINEARITIES[self.nonlinearity](x_proj + self.project_state(h, weight_hh))
        return (h,)

    def sequence(self, x_proj: Tensor, state: State, weight_hh: Tensor | None = None,
                 overwrite: bool = False) -> tuple[Tensor, State]:
        relu = self.nonlinearity == "relu"
        outputs, h = RNNSequence.apply(x_proj, self.recurrent_weight(weight_hh), self.bias_hh, state[0], relu)
        return outputs, (h,)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nonlinearity={self.nonlinearity!r}"


class LSTMCell(RecurrentCell):
    """LSTM cell with torch's gate order i, f, g, o. ``forget_bias``: the f block's starting bias
    (b_ih + b_hh), e.g. 1.0 to remember by default early on (Jozefowicz et al., 2015); None: ``init``'s."""

    num_gates = 4
    num_states = 2
    fused = LSTMSequence

    def __init__(self, input_size: int, hidden_size: int, init: str = "normal", init_scale: float = 0.01,
                 forget_bias: float | None = None):
        self.forget_bias = None if forget_bias is None else float(forget_bias)  # read by reset_parameters
        super().__init__(input_size, hidden_size, init, init_scale)

    @torch.no_grad()
    def reset_parameters(self, init: str = "normal", scale: float = 0.01) -> None:
        super().reset_parameters(init, scale)
        if self.forget_bias is not None:
            forget = slice(self.hidden_size, 2 * self.hidden_size)  # the f block of (i, f, g, o)
            self.bias_ih[forget] = self.forget_bias  # all in b_ih: the sum is exactly forget_bias
            self.bias_hh[forget] = 0.0

    def step(self, x_proj: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        h, c = state
        gates = x_proj + self.project_state(h, weight_hh)  # (B, 4H)
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=1)  # 4 x (B, H)
        c = torch.sigmoid(forget_gate) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
        h = torch.sigmoid(output_gate) * torch.tanh(c)
        return (h, c)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.forget_bias is None else f", forget_bias={self.forget_bias}")


class GRUCell(RecurrentCell):
    """GRU cell with torch's gate order r, z, n. The reset gate multiplies the *projected* previous
    state (``W_hn h + b_hn``), as torch does: the two projections stay apart until then."""

    num_gates = 3
    fused = GRUSequence

    def step(self, x_proj: Tensor, state: State, weight_hh: Tensor | None = None) -> State:
        (h,) = state
        x_reset, x_update, x_new = x_proj.chunk(3, dim=1)  # 3 x (B, H)
        h_reset, h_update, h_new = self.project_state(h, weight_hh).chunk(3, dim=1)  # 3 x (B, H)
        reset_gate = torch.sigmoid(x_reset + h_reset)
        update_gate = torch.sigmoid(x_update + h_update)
        candidate = torch.tanh(x_new + reset_gate * h_new)
        # update_gate near 1 keeps the old state: that is how the GRU carries memory across steps.
        h = (1.0 - update_gate) * candidate + update_gate * h
        return (h,)


CELLS = {
    "rnn": RNNCell,  # tanh
    "rnn_relu": functools.partial(RNNCell, nonlinearity="relu"),
    "lstm": LSTMCell,
    "gru": GRUCell,
}
CELL_KINDS = tuple(CELLS)


def make_cell(kind: str, input_size: int, hidden_size: int, **kwargs) -> RecurrentCell:
    """Build a cell by name (one of ``CELL_KINDS``); ``kwargs`` go to the cell's constructor."""
    if kind not in CELLS:
        raise ValueError(f"unknown cell kind {kind!r}; expected one of {CELL_KINDS}")
    return CELLS[kind](input_size, hidden_size, **kwargs)
