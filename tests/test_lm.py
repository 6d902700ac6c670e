"""RecurrentLM: shapes, torch.nn.RNN/LSTM/GRU oracles, the reference path, config and dropout."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_lm
from lyricist.models import RecurrentLM

VOCAB_SIZE, HIDDEN_SIZE, EMBEDDING_SIZE = 11, 8, 6
BATCH_SIZE, NUM_STEPS = 3, 5
TOL = 1e-5

NUM_STATES = {"rnn": 1, "rnn_relu": 1, "lstm": 2, "gru": 1}


def random_ids(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(VOCAB_SIZE, (BATCH_SIZE, NUM_STEPS), generator=generator)


def make_model(cell="lstm", num_layers=1, embedding_size=None, dropout=0.0, **kw) -> RecurrentLM:
    # init="torch" so the weights are big enough for a mismatch to show (N(0, 0.01^2) is nearly linear).
    kw.setdefault("init", "torch")
    return make_lm(
        VOCAB_SIZE, cell=cell, hidden_size=HIDDEN_SIZE, num_layers=num_layers,
        embedding_size=embedding_size, dropout=dropout, **kw,
    )


def random_state(cell: str, num_layers: int, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(num_layers, BATCH_SIZE, HIDDEN_SIZE, dtype=dtype) for _ in range(NUM_STATES[cell]))


def loss_of(logits, state, seed: int = 1):
    """Cross-entropy on random targets plus a random projection of the final state,
    so the gradients flow through both outputs."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(VOCAB_SIZE, logits.shape[:2], generator=generator)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1))  # (B*T, V)
    for s in state:
        loss = loss + (s * torch.randn(s.shape, generator=generator, dtype=s.dtype)).sum()
    return loss


@pytest.mark.parametrize(
    "cell, embedding_size, num_layers",
    list(itertools.product(["rnn", "lstm", "gru"], [None, EMBEDDING_SIZE], [1, 2])),
)
def test_shapes(cell, embedding_size, num_layers):
    model = make_model(cell, num_layers, embedding_size)
    state = model.begin_state(BATCH_SIZE)
    assert model.num_states == len(state) == NUM_STATES[cell]
    for s in state:
        assert s.shape == (num_layers, BATCH_SIZE, HIDDEN_SIZE)
        assert torch.count_nonzero(s) == 0
    logits, new_state = model(random_ids())
    assert logits.shape == (BATCH_SIZE, NUM_STEPS, VOCAB_SIZE)
    assert logits.is_contiguous()
    assert len(new_state) == NUM_STATES[cell]
    for s in new_state:
        assert s.shape == (num_layers, BATCH_SIZE, HIDDEN_SIZE)


def test_begin_state_dtype_device():
    model = make_model("lstm").double()
    h, c = model.begin_state(4)
    assert h.dtype == c.dtype == torch.float64 and h.shape == (1, 4, HIDDEN_SIZE)
    (h,) = make_model("rnn").begin_state(2, device="cpu", dtype=torch.float16)
    assert h.dtype == torch.float16


def make_oracle(model: RecurrentLM, cell: str, num_layers: int) -> nn.Module:
    input_size = model.cells[0].input_size
    if cell == "lstm":
        oracle = nn.LSTM(input_size, HIDDEN_SIZE, num_layers)
    elif cell == "gru":
        oracle = nn.GRU(input_size, HIDDEN_SIZE, num_layers)
    else:
        nonlinearity = "relu" if cell == "rnn_relu" else "tanh"
        oracle = nn.RNN(input_size, HIDDEN_SIZE, num_layers, nonlinearity=nonlinearity)
    with torch.no_grad():
        for layer, our_cell in enumerate(model.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(oracle, f"{name}_l{layer}").copy_(getattr(our_cell, name))
    return oracle


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("embedding_size", [None, EMBEDDING_SIZE])
@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "lstm", "gru"])
def test_matches_torch_recurrent_modules(cell, embedding_size, num_layers, given_state, dtype):
    torch.manual_seed(0)
    model = make_model(cell, num_layers, embedding_size).to(dtype)
    oracle = make_oracle(model, cell, num_layers).to(dtype)
    oracle_head = nn.Linear(HIDDEN_SIZE, VOCAB_SIZE).to(dtype)
    oracle_head.load_state_dict(model.head.state_dict())
    oracle_embedding = None
    if embedding_size is not None:
        oracle_embedding = nn.Embedding(VOCAB_SIZE, embedding_size).to(dtype)
        oracle_embedding.load_state_dict(model.embedding.state_dict())

    ids = random_ids()
    init_state = random_state(cell, num_layers, dtype) if given_state else None

    # Ours.
    our_state0 = None if init_state is None else tuple(s.clone().requires_grad_() for s in init_state)
    logits, state = model(ids, our_state0)
    loss_of(logits, state).backward()

    # Oracle: time-major, one-hot or embedded input, the same head.
    ref_state0 = None if init_state is None else tuple(s.clone().requires_grad_() for s in init_state)
    if embedding_size is None:
        inputs = F.one_hot(ids.t(), VOCAB_SIZE).to(dtype)  # (T, B, V)
    else:
        inputs = oracle_embedding(ids.t())  # (T, B, E)
    if ref_state0 is None:
        outputs, ref_state = oracle(inputs)
    else:
        outputs, ref_state = oracle(inputs, ref_state0 if cell == "lstm" else ref_state0[0])
    ref_state = ref_state if cell == "lstm" else (ref_state,)
    ref_logits = oracle_head(outputs).transpose(0, 1)  # (T, B, V) -> (B, T, V)
    loss_of(ref_logits, ref_state).backward()

    assert logits.dtype == dtype
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    assert len(state) == len(ref_state)
    for a, b in zip(state, ref_state):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    for layer, our_cell in enumerate(model.cells):
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            torch.testing.assert_close(
                getattr(our_cell, name).grad, getattr(oracle, f"{name}_l{layer}").grad,
                atol=TOL, rtol=0, msg=f"{name}_l{layer}",
            )
    torch.testing.assert_close(model.head.weight.grad, oracle_head.weight.grad, atol=TOL, rtol=0)
    torch.testing.assert_close(model.head.bias.grad, oracle_head.bias.grad, atol=TOL, rtol=0)
    if embedding_size is not None:
        torch.testing.assert_close(model.embedding.weight.grad, oracle_embedding.weight.grad, atol=TOL, rtol=0)
    if init_state is not None:
        for a, b in zip(our_state0, ref_state0):
            torch.testing.assert_close(a.grad, b.grad, atol=TOL, rtol=0)


def test_one_hot_gather_equals_explicit_one_hot():
    torch.manual_seed(0)
    model = make_model("lstm")
    first = model.cells[0]
    ids = random_ids().t()  # (T, B)
    gathered = model._project_first_layer(ids)
    explicit = F.one_hot(ids, VOCAB_SIZE).float() @ first.weight_ih.T + first.bias_ih  # (T, B, 4H)
    torch.testing.assert_close(gathered, explicit)
    # The gradients match too (the gather scatters back into the columns of weight_ih).
    (grad_gathered,) = torch.autograd.grad(gathered.pow(2).sum(), first.weight_ih)
    (grad_explicit,) = torch.autograd.grad(explicit.pow(2).sum(), first.weight_ih)
    torch.testing.assert_close(grad_gathered, grad_explicit)


@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize(
    "cell, embedding_size, num_layers",
    list(itertools.product(["rnn", "lstm", "gru"], [None, EMBEDDING_SIZE], [1, 2])),
)
def test_forward_equals_reference(cell, embedding_size, num_layers, given_state):
    torch.manual_seed(0)
    model = make_model(cell, num_layers, embedding_size, dropout=0.3).eval()  # eval: dropout masks can't differ
    ids = random_ids()
    init_state = random_state(cell, num_layers) if given_state else None

    def run(forward):
        model.zero_grad()
        state0 = None if init_state is None else tuple(s.clone().requires_grad_() for s in init_state)
        logits, state = forward(ids, state0)
        loss_of(logits, state).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        state_grads = None if state0 is None else [s.grad for s in state0]
        return logits, state, grads, state_grads

    logits, state, grads, state_grads = run(model.forward)
    ref_logits, ref_state, ref_grads, ref_state_grads = run(model.forward_reference)
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    for a, b in zip(state, ref_state, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=TOL, rtol=0, msg=name)
    if state_grads is not None:
        for a, b in zip(state_grads, ref_state_grads, strict=True):
            torch.testing.assert_close(a, b, atol=TOL, rtol=0)


@pytest.mark.parametrize("embedding_size", [None, EMBEDDING_SIZE])
def test_rebuild_from_config(embedding_size):
    model = make_model("gru", num_layers=2, embedding_size=embedding_size, dropout=0.2, init_scale=0.05,
                       weight_drop=0.25, embedding_row_dropout=0.1)
    assert model.vocab_size == VOCAB_SIZE and model.config.model_dump() == dict(
        cell="gru", hidden_size=HIDDEN_SIZE, num_layers=2,
        embedding_size=embedding_size, dropout=0.2, init="torch", init_scale=0.05,
        embedding_dropout=None, output_dropout=None, tie_weights=False, forget_bias=None, locked_dropout=False,
        weight_drop=0.25, embedding_row_dropout=0.1, ar_alpha=0.0, tar_beta=0.0,
    )
    rebuilt = RecurrentLM(model.config, model.vocab_size)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    model.eval(), rebuilt.eval()
    ids = random_ids()
    torch.testing.assert_close(model(ids)[0], rebuilt(ids)[0], atol=0, rtol=0)


def test_default_init_is_seed_normal():
    torch.manual_seed(0)
    model = make_lm(VOCAB_SIZE, cell="rnn", hidden_size=128)
    assert model.head.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.count_nonzero(model.head.bias) == 0
    assert model.cells[0].weight_hh.std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("embedding_size", [None, EMBEDDING_SIZE])
def test_dropout_only_in_train_mode(embedding_size):
    torch.manual_seed(0)
    model = make_model("lstm", num_layers=2, embedding_size=embedding_size, dropout=0.5)
    ids = random_ids()
    model.eval()
    torch.testing.assert_close(model(ids)[0], model(ids)[0], atol=0, rtol=0)
    model.train()
    assert not torch.equal(model(ids)[0], model(ids)[0])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="lstm"):
        make_lm(VOCAB_SIZE, cell="transformer")
    with pytest.raises(ValueError, match="num_layers"):
        make_lm(VOCAB_SIZE, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        make_lm(VOCAB_SIZE, dropout=1.0)
    with pytest.raises(ValueError, match="init"):
        make_lm(VOCAB_SIZE, init="xavier")
    with pytest.raises(ValueError, match="output_dropout"):
        make_lm(VOCAB_SIZE, embedding_size=4, output_dropout=-0.1)


def test_tie_weights_shares_one_matrix_and_trains_it_from_both_ends():
    torch.manual_seed(0)
    model = make_model("gru", embedding_size=HIDDEN_SIZE, tie_weights=True)
    assert model.embedding.weight is model.head.weight
    # Counted once: the tied model has V*H fewer parameters than the untied one.
    untied = make_model("gru", embedding_size=HIDDEN_SIZE)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(untied) - count(model) == VOCAB_SIZE * HIDDEN_SIZE
    logits, state = model(random_ids())
    loss_of(logits, state).backward()
    # The shared gradient is the head's plus the embedding's: rows of unseen ids get only the head's.
    assert model.head.weight.grad is model.embedding.weight.grad
    # A checkpoint rebuilds it tied again.
    rebuilt = RecurrentLM(model.config, model.vocab_size)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.embedding.weight is rebuilt.head.weight
    torch.testing.assert_close(rebuilt.head.weight, model.head.weight, atol=0, rtol=0)


@pytest.mark.parametrize("embedding_size", [None, 5])
def test_tie_weights_with_mismatched_sizes_names_the_fix(embedding_size):
    with pytest.raises(ValueError, match=rf"tie_weights.*set model.embedding_size={HIDDEN_SIZE} or model.tie_weights=false"):
        make_model("lstm", embedding_size=embedding_size, tie_weights=True)


def test_forget_bias_sets_the_forget_gate_only():
    model = make_model("lstm", num_layers=2, embedding_size=EMBEDDING_SIZE, forget_bias=1.0)
    for cell in model.cells:
        gate_bias = (cell.bias_ih + cell.bias_hh).detach().view(4, HIDDEN_SIZE)  # (i, f, g, o)
        torch.testing.assert_close(gate_bias[1], torch.ones(HIDDEN_SIZE), atol=0, rtol=0)
        assert not torch.allclose(gate_bias[0], torch.ones(HIDDEN_SIZE))
    with pytest.raises(ValueError, match="model.forget_bias is for model.cell=lstm"):
        make_model("gru", forget_bias=1.0)


def test_each_dropout_has_its_own_rate():
    torch.manual_seed(0)
    ids = random_ids()
    # Only output dropout on: a quarter of the head's inputs are zero, so logits rows differ from eval.
    model = make_model("lstm", embedding_size=EMBEDDING_SIZE, dropout=0.0, output_dropout=0.5).train()
    assert model.embedding_dropout.p == 0.0 and model.output_dropout.p == 0.5
    assert not torch.equal(model(ids)[0], model(ids)[0])
    # Only embedding dropout on: the final state changes (output dropout would leave it alone).
    model = make_model("lstm", embedding_size=EMBEDDING_SIZE, dropout=0.0, embedding_dropout=0.5).train()
    assert not torch.equal(model(ids)[1][0], model(ids)[1][0])
    model.eval()
    torch.testing.assert_close(model(ids)[1][0], model(ids)[1][0], atol=0, rtol=0)
    # Left unset, both follow `dropout`.
    model = make_model("lstm", embedding_size=EMBEDDING_SIZE, dropout=0.25)
    assert model.embedding_dropout.p == model.dropout.p == model.output_dropout.p == 0.25
