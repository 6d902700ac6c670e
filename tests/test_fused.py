"""The fast whole-chunk recurrences (models/fused.py) and products (models/matmul.py):
gradcheck of every hand-written backward, and equality with the readable step loop."""

import functools

import pytest
import torch
import torch.nn.functional as F

from lyricist.models.fast import kernels, matmul
from lyricist.models.cells import make_cell
from lyricist.models.fast.fused import GRUSequence, LSTMSequence, RNNSequence
from lyricist.models.fast.head import LinearCrossEntropy, linear_cross_entropy

NUM_STEPS, BATCH_SIZE, HIDDEN_SIZE, INPUT_SIZE = 4, 3, 5, 6


def random_inputs(num_gates: int, num_states: int, scale: float = 1.0):
    generator = torch.Generator().manual_seed(0)
    gates = num_gates * HIDDEN_SIZE

    def rand(*shape):
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).requires_grad_()

    x_proj = rand(NUM_STEPS, BATCH_SIZE, gates)  # (T, B, G*H)
    weight_hh, bias_hh = rand(gates, HIDDEN_SIZE), rand(gates)
    state = [rand(BATCH_SIZE, HIDDEN_SIZE) for _ in range(num_states)]
    return x_proj, weight_hh, bias_hh, state


@pytest.mark.parametrize("relu", [False, True])
def test_rnn_sequence_gradcheck(relu):
    x_proj, weight_hh, bias_hh, (h0,) = random_inputs(1, 1, scale=0.5)
    assert torch.autograd.gradcheck(
        lambda *a: RNNSequence.apply(*a, relu), (x_proj, weight_hh, bias_hh, h0))


def require_compiled_step() -> None:
    """The compiled LSTM step must build on this project's machines (CI included); only an
    explicit LYRICIST_CPP_KERNELS=0 skips its tests."""
    if not kernels.switch.on:
        pytest.skip("LYRICIST_CPP_KERNELS=0")
    assert kernels.step_kernels() is not None, "csrc/steps.cpp did not build: see the warning"


@pytest.mark.parametrize("compiled", [True, False])
def test_lstm_sequence_gradcheck(compiled):
    if compiled:
        require_compiled_step()
    x_proj, weight_hh, bias_hh, (h0, c0) = random_inputs(4, 2)
    with kernels.cpp_kernels(compiled):
        assert torch.autograd.gradcheck(LSTMSequence.apply, (x_proj, weight_hh, bias_hh, h0, c0))


@pytest.mark.parametrize("loop", ["mkl", "onednn", "torch"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_compiled_step_equals_torch_ops(kind, dtype, tol, loop):
    """Outputs, final state and every gradient: the C++ gate math and the torch-ops one agree
    (16 x 12: float32 takes the packed products of `loop` too; float64 always torch's)."""
    require_compiled_step()
    torch.manual_seed(0)
    cell = make_cell(kind, INPUT_SIZE, HIDDEN_SIZE, init="torch").to(dtype)
    x = torch.randn(12, 16, INPUT_SIZE, dtype=dtype)
    state = tuple(torch.randn(16, HIDDEN_SIZE, dtype=dtype) for _ in range(cell.num_states))
    upstream = torch.randn(12, 16, HIDDEN_SIZE, dtype=dtype)

    def run(compiled: bool):
        cell.zero_grad()
        xg, sg = x.clone().requires_grad_(), tuple(s.clone().requires_grad_() for s in state)
        with kernels.cpp_kernels(compiled), matmul.use(matmul.Backend(dense="torch", loop=loop)):
            outputs, final = cell.sequence(cell.project_input(xg), sg)  # (T, B, H)
            loss = (outputs * upstream).sum() + sum((f * (2 + k)).sum() for k, f in enumerate(final))
            loss.backward()
        return [outputs, *final, xg.grad, *(s.grad for s in sg), *(p.grad.clone() for p in cell.parameters())]

    for a, b in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_compiled_step_split_over_two_threads_equals_torch_ops(kind):
    """64 x 512 entries a step: the compiled gate math splits the batch's rows over the threads."""
    require_compiled_step()
    torch.manual_seed(0)
    cell = make_cell(kind, 8, 512, init="torch")
    x, upstream = torch.randn(3, 64, 8), torch.randn(3, 64, 512)  # (T, B, I), (T, B, H)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = []
        for compiled in (True, False):
            cell.zero_grad()
            xg = x.clone().requires_grad_()
            with kernels.cpp_kernels(compiled):
                outputs, _ = cell.sequence(cell.project_input(xg), cell.begin_state(64))
                (outputs * upstream).sum().backward()
            results.append([outputs, xg.grad, *(p.grad.clone() for p in cell.parameters())])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("where", ["x_proj", "h0", "c0"])
def test_a_nan_runs_through_the_compiled_step(where):
    """-ffast-math without finite-math-only: a NaN in the input-side gates or in either state
    reaches the outputs and the final state (what the divergence guard relies on)."""
    require_compiled_step()
    x_proj, weight_hh, bias_hh, (h0, c0) = random_inputs(4, 2)
    x_proj, weight_hh, bias_hh, h0, c0 = (t.detach().float() for t in (x_proj, weight_hh, bias_hh, h0, c0))
    poisoned = {"x_proj": x_proj[0], "h0": h0, "c0": c0}[where]
    poisoned.view(-1)[0] = float("nan")
    with kernels.cpp_kernels(True):
        outputs, h, c, _ = LSTMSequence.apply(x_proj, weight_hh, bias_hh, h0, c0)
    assert torch.isnan(outputs[-1, 0]).any() and torch.isnan(h[0]).any() and torch.isnan(c[0]).any()
    assert torch.isfinite(outputs[:, 1:]).all(), "other sequences of the batch stay finite"


@pytest.mark.parametrize("where", ["x_proj", "h0"])
def test_a_nan_runs_through_the_compiled_gru_step(where):
    require_compiled_step()
    x_proj, weight_hh, bias_hh, (h0,) = random_inputs(3, 1)
    x_proj, weight_hh, bias_hh, h0 = (t.detach().float() for t in (x_proj, weight_hh, bias_hh, h0))
    {"x_proj": x_proj[0], "h0": h0}[where].view(-1)[0] = float("nan")
    with kernels.cpp_kernels(True):
        outputs, h, _ = GRUSequence.apply(x_proj, weight_hh, bias_hh, h0)
    assert torch.isnan(outputs[-1, 0]).any() and torch.isnan(h[0]).any()
    assert torch.isfinite(outputs[:, 1:]).all(), "other sequences of the batch stay finite"


def test_without_a_compiler_the_lstm_warns_once_and_uses_torch_ops(monkeypatch, tmp_path):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # nothing built there yet
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setattr(kernels, "_module", None)
    monkeypatch.setattr(kernels, "_tried", False)
    monkeypatch.setattr(kernels.switch, "on", True)
    with pytest.warns(RuntimeWarning, match="could not be built, using torch ops instead.*Ninja is required"):
        assert kernels.step_kernels() is None
    x_proj, weight_hh, bias_hh, (h0, c0) = random_inputs(4, 2)
    outputs, h, c, _ = LSTMSequence.apply(x_proj, weight_hh, bias_hh, h0, c0)  # the torch-ops path
    assert outputs.shape == (NUM_STEPS, BATCH_SIZE, HIDDEN_SIZE)
    torch.testing.assert_close(h, outputs[-1])


@pytest.mark.parametrize("compiled", [True, False])
def test_gru_sequence_gradcheck(compiled):
    if compiled:
        require_compiled_step()
    x_proj, weight_hh, bias_hh, (h0,) = random_inputs(3, 1)
    with kernels.cpp_kernels(compiled):
        assert torch.autograd.gradcheck(GRUSequence.apply, (x_proj, weight_hh, bias_hh, h0))


# (3, 4): small products on torch's default matmul; (16, 12): float32 takes oneDNN with
# packed weights (matmul.MIN_ROWS, MIN_USES_TO_PACK), as a real training batch does.
@pytest.mark.parametrize("batch_size, num_steps", [(BATCH_SIZE, NUM_STEPS), (16, 12)])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kind", ["rnn", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_sequence_equals_step_loop(kind, dtype, tol, batch_size, num_steps, overwrite):
    """Outputs, final state and every gradient (inputs, weights, initial state) of the fused
    path equal those of the readable loop over `step`, its gates written over x_proj or not."""
    torch.manual_seed(0)
    cell = make_cell(kind, INPUT_SIZE, HIDDEN_SIZE, init="torch").to(dtype)
    xs = torch.randn(num_steps, batch_size, INPUT_SIZE, dtype=dtype)
    state0 = [torch.randn(batch_size, HIDDEN_SIZE, dtype=dtype) for _ in range(cell.num_states)]
    upstream = torch.randn(num_steps, batch_size, HIDDEN_SIZE, dtype=dtype)
    state_upstream = [torch.randn(batch_size, HIDDEN_SIZE, dtype=dtype) for _ in state0]

    def run(sequence):
        cell.zero_grad()
        x = xs.clone().requires_grad_()
        state = tuple(s.clone().requires_grad_() for s in state0)
        outputs, final = sequence(cell.project_input(x), state)  # (T, B, H)
        loss = (outputs * upstream).sum() + sum((f * u).sum() for f, u in zip(final, state_upstream))
        loss.backward()
        grads = [x.grad] + [s.grad for s in state] + [p.grad.clone() for p in cell.parameters()]
        return [outputs, *final], grads

    values, grads = run(functools.partial(cell.sequence, overwrite=overwrite))
    ref_values, ref_grads = run(cell.sequence_reference)
    for a, b in zip(values + grads, ref_values + ref_grads, strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, atol=tol, rtol=0)


SEQUENCES = {"lstm": (LSTMSequence, 4, 2), "gru": (GRUSequence, 3, 1)}  # Function, gates, states


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_overwrite_puts_the_gates_in_x_projs_buffer(kind, compiled):
    """overwrite=True: the gates come back in x_proj's own buffer (no (T, B, G*H) buffer
    allocated for them), and every gradient still passes gradcheck."""
    if compiled:
        require_compiled_step()
    sequence, num_gates, num_states = SEQUENCES[kind]
    x_proj, weight_hh, bias_hh, state = random_inputs(num_gates, num_states)

    def run(x_proj, *rest):
        own = x_proj * 1.0  # a tensor of this function's own, which it gives up (gradcheck's leaves stay intact)
        *results, gates = sequence.apply(own, *rest, True)
        assert gates.data_ptr() == own.data_ptr() and not gates.requires_grad
        return tuple(results)

    with kernels.cpp_kernels(compiled):
        assert torch.autograd.gradcheck(run, (x_proj, weight_hh, bias_hh, *state))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_overwriting_a_tensor_another_op_saved_fails_loudly(kind):
    """The overwrite is declared to autograd (mark_dirty): when x_proj is something another
    op needs for its gradient, backward stops with autograd's own error instead of using
    the gates as if they were x_proj."""
    sequence, num_gates, num_states = SEQUENCES[kind]
    x_proj, weight_hh, bias_hh, state = random_inputs(num_gates, num_states)
    saved = x_proj.exp()  # exp keeps its output for its own gradient
    outputs = sequence.apply(saved, weight_hh, bias_hh, *state, True)[0]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        outputs.sum().backward()


@pytest.mark.parametrize("which", ["view", "leaf"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_view_or_a_leaf_is_never_overwritten(kind, which):
    """A view's base may be in use elsewhere (and autograd would rebuild the base's gradient
    around the overwrite), a leaf that wants a gradient is the caller's to keep: overwrite=True
    leaves either untouched and still computes."""
    sequence, num_gates, num_states = SEQUENCES[kind]
    x_proj, weight_hh, bias_hh, state = random_inputs(num_gates, num_states)
    if which == "view":
        x_proj = x_proj.detach().reshape(-1).view(x_proj.shape)  # (T, B, G*H), a view of the flat tensor
    before = x_proj.detach().clone()
    outputs, *_, gates = sequence.apply(x_proj, weight_hh, bias_hh, *state, True)
    assert torch.equal(x_proj, before) and gates.data_ptr() != x_proj.data_ptr()
    outputs.sum().backward()
    assert weight_hh.grad is not None and (which == "view" or x_proj.grad is not None)


def test_final_state_does_not_alias_outputs():
    """The carried state is detached and reused by the next batch: writing to the outputs
    (as an in-place dropout would) must not change it."""
    cell = make_cell("rnn", INPUT_SIZE, HIDDEN_SIZE, init="torch")
    outputs, (h,) = cell.sequence(torch.randn(NUM_STEPS, BATCH_SIZE, HIDDEN_SIZE), cell.begin_state(BATCH_SIZE))
    before = h.clone()
    outputs.detach().zero_()
    torch.testing.assert_close(h, before, atol=0, rtol=0)


@pytest.mark.parametrize("dense", ["onednn", "torch"])
def test_linear_equals_f_linear_with_gradients(dense):
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16, requires_grad=True)  # (B, T, I): any leading shape
    weight, bias = torch.randn(9, 16, requires_grad=True), torch.randn(9, requires_grad=True)
    upstream = torch.randn(2, 7, 9)
    with matmul.use(matmul.Backend(dense=dense, loop="torch")):
        y = matmul.linear(x, weight, bias)
        (y * upstream).sum().backward()
    grads = [x.grad, weight.grad, bias.grad]
    x.grad = weight.grad = bias.grad = None
    ref = F.linear(x, weight, bias)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, [x.grad, weight.grad, bias.grad], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loop", ["mkl", "onednn", "torch"])
@pytest.mark.parametrize("transposed", [False, True])
def test_packed_weight_products_equal_plain_ones(loop, transposed):
    """MKL's packing, oneDNN's and none (torch's addmm_) give the plain products, bias included,
    of a weight or of a transposed view (as the backward loops pass W_hh^T)."""
    torch.manual_seed(0)
    x, out, bias = torch.randn(8, 16), torch.randn(8, 12), torch.randn(12)
    weight = torch.randn(16, 12).t() if transposed else torch.randn(12, 16)  # (12, 16)
    with matmul.use(matmul.Backend(dense="torch", loop=loop)):
        packed = matmul.pack(weight, rows=8, uses=matmul.MIN_USES_TO_PACK)
    if loop == "torch":
        assert packed is weight
    else:
        assert isinstance(packed, matmul.Packed) and packed.mkl == (loop == "mkl") and packed.packed.is_mkldnn
    torch.testing.assert_close(matmul.linear_nograd(x, packed, bias), x @ weight.T + bias, atol=1e-5, rtol=1e-5)
    expected = out + x @ weight.T
    torch.testing.assert_close(matmul.add_linear_(out, x, packed), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)  # in place


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_sequences_equal_under_either_packing(kind):
    """The compiled steps call MKL's and oneDNN's packed products themselves, or torch's mm and
    addmm_ in place: all give the outputs and gradients of the plain products (float32, a batch
    large enough to pack)."""
    torch.manual_seed(0)
    cell = make_cell(kind, INPUT_SIZE, HIDDEN_SIZE, init="torch")
    x, upstream = torch.randn(12, 16, INPUT_SIZE), torch.randn(12, 16, HIDDEN_SIZE)

    def run(loop: str, private: bool = True):
        cell.zero_grad()
        xg = x.clone().requires_grad_()
        with matmul.use(matmul.Backend(dense="torch", loop=loop)), matmul.private(private):
            outputs, _ = cell.sequence(cell.project_input(xg), cell.begin_state(16))  # (T, B, H)
            (outputs * upstream).sum().backward()
        return [outputs, xg.grad, *(p.grad.clone() for p in cell.parameters())]

    plain = run("torch", private=False)
    for loop in ("mkl", "onednn", "torch"):
        for a, b in zip(run(loop), plain, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_short_loops_and_single_rows_stay_on_plain_weights():
    """Packing pays only over a long loop of many-row products: generation (1 row, 1 step)
    must not pay a reorder per character."""
    weight = torch.randn(12, 16)
    assert matmul.pack(weight, rows=1, uses=100) is weight
    assert matmul.pack(weight, rows=32, uses=1) is weight
    with matmul.use(matmul.Backend(dense="onednn", loop="mkl")):
        assert matmul.pack(weight, rows=1, uses=100) is weight
        assert not matmul.uses_onednn(weight, rows=1)


def test_linear_cross_entropy_gradcheck():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(9, (6,), generator=generator)
    assert torch.autograd.gradcheck(lambda h, w, b: LinearCrossEntropy.apply(h, w, b, targets), (hidden, weight, bias))


@pytest.mark.parametrize("rows", [6, 70])  # 70: float32 takes oneDNN for the products
def test_linear_cross_entropy_equals_f_cross_entropy(rows):
    torch.manual_seed(0)
    hidden = torch.randn(2, rows // 2, 16, requires_grad=True)  # (B, T, H)
    weight, bias = torch.randn(30, 16, requires_grad=True), torch.randn(30, requires_grad=True)
    targets = torch.randint(30, (2, rows // 2))
    loss = linear_cross_entropy(hidden, weight, bias, targets)
    loss.backward()
    grads = [hidden.grad, weight.grad, bias.grad]
    hidden.grad = weight.grad = bias.grad = None
    ref = F.cross_entropy(F.linear(hidden, weight, bias).reshape(-1, 30), targets.reshape(-1))  # (B*T, V)
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, [hidden.grad, weight.grad, bias.grad], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_linear_cross_entropy_backward_twice_and_nan_and_bad_targets():
    """The saved softmax comes through a first backward unchanged (retain_graph gives the same
    gradients twice); a diverged model's NaN reaches the loss, which the training loop's guard
    reads; a target outside the vocabulary is refused."""
    torch.manual_seed(0)
    hidden = torch.randn(70, 16, requires_grad=True)  # 70 rows: float32 takes oneDNN
    weight, bias = torch.randn(30, 16, requires_grad=True), torch.randn(30, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, bias, torch.randint(30, (70,)))
    first = torch.autograd.grad(loss, (hidden, weight, bias), retain_graph=True)
    for a, b in zip(first, torch.autograd.grad(loss, (hidden, weight, bias)), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    poisoned = hidden.detach().clone()
    poisoned[3, 1] = float("nan")
    assert torch.isnan(linear_cross_entropy(poisoned, weight, bias, torch.zeros(70, dtype=torch.long)))
    with pytest.raises(RuntimeError, match="out of bounds"):
        linear_cross_entropy(hidden, weight, bias, torch.full((70,), 30))


@pytest.mark.parametrize("kind, compiled", [("rnn", False), ("rnn_relu", False), ("gru", False), ("gru", True),
                                            ("lstm", False), ("lstm", True)])
def test_a_given_weight_hh_is_used_at_every_step_and_gets_the_gradient(kind, compiled):
    """`weight_hh=` (the language model's DropConnect copy): both paths run as a cell whose
    parameter is that matrix, and the gradient goes to the given tensor, not the parameter."""
    if compiled:
        require_compiled_step()
    torch.manual_seed(0)
    cell = make_cell(kind, INPUT_SIZE, HIDDEN_SIZE, init="torch").double()
    other = make_cell(kind, INPUT_SIZE, HIDDEN_SIZE, init="torch").double()
    other.load_state_dict(cell.state_dict())
    with torch.no_grad():
        other.weight_hh.mul_(torch.rand_like(other.weight_hh) > 0.5)  # a masked W_hh
    x_proj = cell.project_input(torch.randn(NUM_STEPS, BATCH_SIZE, INPUT_SIZE, dtype=torch.float64)).detach()
    state = cell.begin_state(BATCH_SIZE)
    with kernels.cpp_kernels(compiled):
        expected, expected_final = other.sequence(x_proj, state)
        (expected.sum() + expected_final[0].sum()).backward()
        for sequence in (cell.sequence, cell.sequence_reference):
            given = other.weight_hh.detach().clone().requires_grad_()
            outputs, final = sequence(x_proj, state, weight_hh=given)
            (outputs.sum() + final[0].sum()).backward()
            torch.testing.assert_close(outputs, expected, atol=1e-12, rtol=0)
            torch.testing.assert_close(given.grad, other.weight_hh.grad, atol=1e-12, rtol=0)
            assert cell.weight_hh.grad is None
