"""The hand-written cells against torch.nn's built-in cells (the oracles)."""

import math

import pytest
import torch
from torch import nn

from lyricist.models.cells import CELL_KINDS, GRUCell, LSTMCell, RNNCell, make_cell

INPUT_SIZE, HIDDEN_SIZE, BATCH_SIZE = 5, 7, 3
TOL = 1e-5


def make_pair(kind: str, dtype: torch.dtype):
    """A hand-written cell and its torch.nn oracle with the same weights."""
    if kind in ("tanh", "relu"):
        ours = RNNCell(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=kind, init="torch")
        oracle = nn.RNNCell(INPUT_SIZE, HIDDEN_SIZE, nonlinearity=kind)
    elif kind == "lstm":
        ours = LSTMCell(INPUT_SIZE, HIDDEN_SIZE, init="torch")
        oracle = nn.LSTMCell(INPUT_SIZE, HIDDEN_SIZE)
    else:
        ours = GRUCell(INPUT_SIZE, HIDDEN_SIZE, init="torch")
        oracle = nn.GRUCell(INPUT_SIZE, HIDDEN_SIZE)
    ours, oracle = ours.to(dtype), oracle.to(dtype)
    oracle.load_state_dict(ours.state_dict())  # same names and layouts, so a straight copy
    return ours, oracle


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["tanh", "relu", "lstm", "gru"])
def test_cell_matches_torch(kind, dtype):
    torch.manual_seed(0)
    ours, oracle = make_pair(kind, dtype)
    num_states = 2 if kind == "lstm" else 1
    x = torch.randn(BATCH_SIZE, INPUT_SIZE, dtype=dtype)
    state = tuple(torch.randn(BATCH_SIZE, HIDDEN_SIZE, dtype=dtype) for _ in range(num_states))
    upstream = tuple(torch.randn(BATCH_SIZE, HIDDEN_SIZE, dtype=dtype) for _ in range(num_states))

    def run(cell, is_oracle):
        xs = x.clone().requires_grad_()
        ss = tuple(s.clone().requires_grad_() for s in state)
        if is_oracle and num_states == 1:
            out = (cell(xs, ss[0]),)  # torch's RNNCell/GRUCell take and return a bare h
        else:
            out = cell(xs, ss)
        loss = sum((o * u).sum() for o, u in zip(out, upstream))
        loss.backward()
        return out, xs.grad, [s.grad for s in ss]

    out, x_grad, state_grads = run(ours, is_oracle=False)
    ref_out, ref_x_grad, ref_state_grads = run(oracle, is_oracle=True)

    assert isinstance(out, tuple) and len(out) == ours.num_states == num_states
    for a, b in zip(out, ref_out):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    torch.testing.assert_close(x_grad, ref_x_grad, atol=TOL, rtol=0)
    for a, b in zip(state_grads, ref_state_grads):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    ref_params = dict(oracle.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, ref_params[name].grad, atol=TOL, rtol=0, msg=name)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_step_on_projected_sequence_equals_forward(kind):
    torch.manual_seed(0)
    cell = make_cell(kind, INPUT_SIZE, HIDDEN_SIZE, init="torch")
    xs = torch.randn(4, BATCH_SIZE, INPUT_SIZE)
    projected = cell.project_input(xs)
    assert projected.shape == (4, BATCH_SIZE, cell.num_gates * HIDDEN_SIZE)
    state_step = state_forward = cell.begin_state(BATCH_SIZE)
    for t in range(4):
        state_step = cell.step(projected[t], state_step)
        state_forward = cell(xs[t], state_forward)
    for a, b in zip(state_step, state_forward):
        torch.testing.assert_close(a, b)


def test_tensorflow_chapter_worked_example():
    """Input size 1, hidden 2, x = [1, 2], h0 = 0; the book rounds the outputs to 1.56 and 2.73."""
    cell = RNNCell(1, 2).double()
    with torch.no_grad():
        w_state = torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)
        cell.weight_hh.copy_(w_state.T)  # the book computes h @ W_state; torch's layout is its transpose
        cell.weight_ih.copy_(torch.tensor([[0.5], [0.6]]))
        cell.bias_ih.copy_(torch.tensor([0.1, -0.1]))
        cell.bias_hh.zero_()
    w_output = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    b_output = 0.1

    expected_states = [[0.53704957, 0.46211716], [0.85973818, 0.88366641]]
    expected_outputs = [1.56128388, 2.72707101]
    state = (torch.zeros(1, 2, dtype=torch.float64),)
    for x, want_state, want_output in zip([1.0, 2.0], expected_states, expected_outputs):
        state = cell(torch.tensor([[x]], dtype=torch.float64), state)
        output = state[0] @ w_output + b_output  # (1, 1)
        torch.testing.assert_close(state[0], torch.tensor([want_state], dtype=torch.float64), atol=1e-6, rtol=0)
        assert output.item() == pytest.approx(want_output, abs=1e-6)


def test_num_states_and_layouts():
    rnn, lstm, gru = RNNCell(3, 4), LSTMCell(3, 4), GRUCell(3, 4)
    assert (rnn.num_states, lstm.num_states, gru.num_states) == (1, 2, 1)
    for cell, gates in [(rnn, 1), (lstm, 4), (gru, 3)]:
        assert cell.weight_ih.shape == (gates * 4, 3)
        assert cell.weight_hh.shape == (gates * 4, 4)
        assert cell.bias_ih.shape == cell.bias_hh.shape == (gates * 4,)


def test_unknown_nonlinearity_raises():
    with pytest.raises(ValueError, match="tanh.*relu"):
        RNNCell(3, 4, nonlinearity="sigmoid")


def test_unknown_cell_kind_raises():
    with pytest.raises(ValueError, match="lstm") as info:
        make_cell("transformer", 3, 4)
    for kind in CELL_KINDS:
        assert kind in str(info.value)


def test_unknown_init_and_bad_sizes_raise():
    with pytest.raises(ValueError, match="normal"):
        LSTMCell(3, 4, init="xavier")
    with pytest.raises(ValueError, match="positive"):
        RNNCell(0, 4)
    with pytest.raises(ValueError, match="positive"):
        LSTMCell(3, -1)


def test_make_cell_kinds():
    assert isinstance(make_cell("rnn", 3, 4), RNNCell) and make_cell("rnn", 3, 4).nonlinearity == "tanh"
    assert make_cell("rnn_relu", 3, 4).nonlinearity == "relu"
    assert isinstance(make_cell("lstm", 3, 4), LSTMCell)
    assert isinstance(make_cell("gru", 3, 4), GRUCell)


def test_init_normal():
    torch.manual_seed(0)
    cell = LSTMCell(128, 128)  # default init="normal", init_scale=0.01
    for weight in (cell.weight_ih, cell.weight_hh):
        assert weight.std().item() == pytest.approx(0.01, rel=0.05)
        assert abs(weight.mean().item()) < 1e-3
    assert torch.count_nonzero(cell.bias_ih) == 0 and torch.count_nonzero(cell.bias_hh) == 0


def test_init_uniform_and_torch():
    torch.manual_seed(0)
    cell = RNNCell(64, 64, init="uniform", init_scale=0.1)
    for param in cell.parameters():
        assert param.abs().max().item() <= 0.1
        assert param.abs().max().item() > 0.09
    cell.reset_parameters("torch")
    bound = 1 / math.sqrt(64)
    for param in cell.parameters():
        assert param.abs().max().item() <= bound
        assert param.abs().max().item() > 0.9 * bound
