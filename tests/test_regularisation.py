"""AWD-LSTM's two in-model regularisers: DropConnect on W_hh (``weight_drop``) and embedding row
dropout (``embedding_row_dropout``). Each is held to a twin model without dropout whose weights
carry the batch's mask, to the readable path, and to today's model when off."""

import copy
import itertools
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import make_lm
from lyricist.checkpoint import load_checkpoint
from lyricist.data.vocab import Vocab
from lyricist.models import RecurrentLM, regularisers
from lyricist.models.fast.kernels import cpp_kernels
from lyricist.models.regularisers import dropout_mask
from lyricist.models.regularisers.ar_tar import ActivationPenalty
from lyricist.models.regularisers.embedding_row_dropout import EmbeddingRowDropout
from lyricist.models.regularisers.weight_drop import WeightDrop
from lyricist.cli.config import settings_of
from lyricist.settings import ModelSettings
from conftest import train
from conftest import TINY, compose_config, with_data

VOCAB_SIZE, HIDDEN_SIZE, EMBEDDING_SIZE = 11, 8, 6
BATCH_SIZE, NUM_STEPS = 3, 5
TOL = 1e-5


def make_model(cell="lstm", num_layers=1, embedding_size=None, weight_drop=0.5, embedding_row_dropout=0.3,
               **kw) -> RecurrentLM:
    torch.manual_seed(0)
    kw.setdefault("init", "torch")  # big enough weights for a mismatch to show
    return make_lm(VOCAB_SIZE, cell=cell, hidden_size=HIDDEN_SIZE, num_layers=num_layers,
                       embedding_size=embedding_size, weight_drop=weight_drop,
                       embedding_row_dropout=embedding_row_dropout, **kw)


def draw_masks(model: RecurrentLM) -> SimpleNamespace:
    """A chunk's masks as the model draws them (``RecurrentLM.draw``): the scale of each row of the
    input table (V,) and each layer's W_hh mask, None where off."""
    active, _ = model.draw()
    rows = next((r.mask for r in active if isinstance(r, EmbeddingRowDropout)), None)
    weight_hh = next((r.masks for r in active if isinstance(r, WeightDrop)), [None] * model.num_layers)
    return SimpleNamespace(rows=rows, weight_hh=weight_hh)


def random_ids(seed: int = 0, vocab_size: int = VOCAB_SIZE) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size, (BATCH_SIZE, NUM_STEPS), generator=generator)


def loss_of(logits, state):
    """Cross-entropy on fixed targets plus a projection of the final state (gradients through both)."""
    generator = torch.Generator().manual_seed(1)
    targets = torch.randint(VOCAB_SIZE, logits.shape[:2], generator=generator)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1))  # (B*T, V)
    return loss + sum((s * torch.randn(s.shape, generator=generator)).sum() for s in state)


def run(model, forward, seed, ids):
    """logits, final state and every parameter's gradient of one call with the RNG at `seed`."""
    model.zero_grad()
    torch.manual_seed(seed)
    logits, state = forward(ids)
    loss_of(logits, state).backward()
    return logits, state, {name: p.grad.clone() for name, p in model.named_parameters()}


def twin_with(model: RecurrentLM, masks) -> RecurrentLM:
    """A copy in eval mode (no dropout at all) whose weights carry `masks`: W_hh * mask per layer,
    and the batch's dropped rows of the input table (embedding rows, or W_ih's columns) zeroed."""
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for cell, mask in zip(twin.cells, masks.weight_hh):
            if mask is not None:
                cell.weight_hh.mul_(mask)
        if masks.rows is not None:
            if twin.embedding is None:
                twin.cells[0].weight_ih.mul_(masks.rows)  # (G*H, V) * (V,): column `id` is row `id` of W_ih^T
            else:
                twin.embedding.weight.mul_(masks.rows.unsqueeze(1))  # (V, E) * (V, 1)
    return twin


CASES = list(itertools.product(["rnn", "lstm", "gru"], [None, EMBEDDING_SIZE], [1, 2]))


@pytest.mark.parametrize("cell, embedding_size, num_layers, compiled",
                         [(*case, True) for case in CASES] + [(*case, False) for case in CASES if case[0] == "lstm"])
def test_fast_path_equals_reference_under_the_same_masks(cell, embedding_size, num_layers, compiled):
    """`compiled=False`: the lstm's gate math in torch ops instead of the C++ step."""
    model = make_model(cell, num_layers, embedding_size).train()
    ids = random_ids()
    with cpp_kernels(compiled):
        logits, state, grads = run(model, model.forward, 7, ids)
    ref_logits, ref_state, ref_grads = run(model, model.forward_reference, 7, ids)
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    for a, b in zip(state, ref_state, strict=True):
        torch.testing.assert_close(a, b, atol=TOL, rtol=0)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=TOL, rtol=0, msg=name)
    # The masks did something: eval mode gives other logits.
    with torch.no_grad():
        assert not torch.allclose(model.eval()(ids)[0], logits, atol=1e-3)


@pytest.mark.parametrize("cell, embedding_size, num_layers", CASES)
def test_one_mask_per_batch_fixed_over_its_steps_redrawn_for_the_next(cell, embedding_size, num_layers):
    model = make_model(cell, num_layers, embedding_size).train()
    ids = random_ids()
    torch.manual_seed(3)
    masks = [draw_masks(model), draw_masks(model)]  # what two batches in a row will draw
    torch.manual_seed(3)
    for batch_masks in masks:
        model.zero_grad()
        logits, state = model(ids)
        loss_of(logits, state).backward()
        # A model with fixed, masked weights at every step and for every sequence gives the same numbers.
        twin = twin_with(model, batch_masks)
        twin_logits, twin_state = twin(ids)
        torch.testing.assert_close(logits, twin_logits, atol=TOL, rtol=0)
        loss_of(twin_logits, twin_state).backward()
        # The raw W_hh gets the masked copy's gradient times the mask: zero where dropped.
        for cell_, twin_cell, mask in zip(model.cells, twin.cells, batch_masks.weight_hh, strict=True):
            torch.testing.assert_close(cell_.weight_hh.grad, twin_cell.weight_hh.grad * mask, atol=TOL, rtol=0)
    first, second = masks
    assert not torch.equal(first.weight_hh[0], second.weight_hh[0])
    assert not torch.equal(first.rows, second.rows)


def test_masks_are_scaled_bernoulli_draws_at_the_asked_rates():
    torch.manual_seed(0)
    model = make_lm(2000, "gru", hidden_size=64, num_layers=2, weight_drop=0.4, embedding_row_dropout=0.1)
    masks = draw_masks(model)
    for mask, rate in [(masks.rows, 0.1), *((m, 0.4) for m in masks.weight_hh)]:
        dropped, kept = mask.unique().tolist()
        assert dropped == 0.0 and kept == pytest.approx(1 / (1 - rate))
        assert (mask == 0).float().mean().item() == pytest.approx(rate, abs=0.02)
    assert masks.rows.shape == (2000,) and masks.weight_hh[1].shape == (3 * 64, 64)
    assert not torch.equal(masks.weight_hh[0], masks.weight_hh[1])  # each layer its own


def test_each_file_is_built_where_its_settings_switch_it_on_and_draws_in_the_files_order():
    """models/regularisers/: none at the defaults; the row mask is drawn before the DropConnect
    masks (embedding_row_dropout.py before weight_drop.py), as before the hooks existed, so a run's
    numbers stay what they were."""
    assert regularisers.build(ModelSettings()) == []
    built = regularisers.build(ModelSettings(weight_drop=0.5, embedding_row_dropout=0.1, tar_beta=1.0))
    assert [type(r) for r in built] == [ActivationPenalty, EmbeddingRowDropout, WeightDrop]
    model = make_model("gru", num_layers=2).train()
    torch.manual_seed(3)
    masks = draw_masks(model)
    torch.manual_seed(3)
    assert torch.equal(masks.rows, dropout_mask((VOCAB_SIZE,), 0.3, model.head.weight))
    for mask, cell in zip(masks.weight_hh, model.cells, strict=True):
        assert torch.equal(mask, dropout_mask(cell.weight_hh.shape, 0.5, cell.weight_hh))
    model.eval()
    active, weights_hh = model.draw()  # eval mode: nothing at work, the parameters themselves
    assert active == [] and all(w is cell.weight_hh for w, cell in zip(weights_hh, model.cells, strict=True))


@pytest.mark.parametrize("embedding_size", [None, EMBEDDING_SIZE])
def test_row_dropout_zeroes_every_occurrence_of_a_dropped_character(embedding_size):
    model = make_model("lstm", embedding_size=embedding_size, embedding_row_dropout=0.5).train()
    first = model.cells[0]
    ids = random_ids(vocab_size=4).t()  # (T, B): few characters, so each occurs several times
    rows = torch.tensor([0.0, 2.0, 0.0, 2.0] + [2.0] * (VOCAB_SIZE - 4))  # characters 0 and 2 dropped
    with torch.no_grad():
        row_dropout = EmbeddingRowDropout(model.config)
        row_dropout.mask = rows
        dropped = model._project_first_layer(ids, [row_dropout])  # (T, B, 4H)
        kept = model._project_first_layer(ids)
    is_dropped = (ids == 0) | (ids == 2)
    assert is_dropped.any() and (~is_dropped).any()
    # A dropped character reads a zero vector: only the bias gets through.
    torch.testing.assert_close(dropped[is_dropped], first.bias_ih.detach().expand(int(is_dropped.sum()), -1),
                               atol=0, rtol=0)
    # A kept one is scaled by 1 / (1 - p) before the (linear) input projection.
    bias = first.bias_ih.detach()
    torch.testing.assert_close(dropped[~is_dropped] - bias, 2 * (kept[~is_dropped] - bias), atol=TOL, rtol=0)


@pytest.mark.parametrize("cell, embedding_size, num_layers", CASES)
def test_eval_mode_is_exactly_the_model_without_them(cell, embedding_size, num_layers):
    model = make_model(cell, num_layers, embedding_size, dropout=0.3).eval()
    plain = make_model(cell, num_layers, embedding_size, dropout=0.3, weight_drop=0.0,
                       embedding_row_dropout=0.0).eval()
    plain.load_state_dict(model.state_dict())
    ids = random_ids()
    rng = torch.get_rng_state()
    for forward, plain_forward in [(model, plain), (model.forward_reference, plain.forward_reference)]:
        logits, state = forward(ids)
        plain_logits, plain_state = plain_forward(ids)
        torch.testing.assert_close(logits, plain_logits, atol=0, rtol=0)
        for a, b in zip(state, plain_state, strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing drawn


def test_rate_zero_draws_nothing_so_training_is_todays_model():
    """At 0 no mask is drawn, so every other dropout mask, and the numbers, stay as before."""
    model = make_model("lstm", num_layers=2, embedding_size=EMBEDDING_SIZE, dropout=0.5, weight_drop=0.0,
                       embedding_row_dropout=0.0).train()
    rng = torch.get_rng_state()
    masks = draw_masks(model)
    assert masks.rows is None and masks.weight_hh == [None, None]
    assert torch.equal(torch.get_rng_state(), rng)
    torch.manual_seed(0)
    today = make_lm(VOCAB_SIZE, "lstm", HIDDEN_SIZE, 2, EMBEDDING_SIZE, dropout=0.5, init="torch").train()
    today.load_state_dict(model.state_dict())
    ids = random_ids()
    torch.manual_seed(5)
    logits = model(ids)[0]
    torch.manual_seed(5)
    torch.testing.assert_close(logits, today(ids)[0], atol=0, rtol=0)


def test_with_tied_weights_and_locked_dropout():
    model = make_model("lstm", num_layers=2, embedding_size=HIDDEN_SIZE, tie_weights=True, locked_dropout=True,
                       dropout=0.3).train()
    ids = random_ids()
    weight = model.head.weight.detach().clone()
    torch.manual_seed(1)
    loss, _ = model.loss(ids, random_ids(1))
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad is model.embedding.weight.grad
    torch.testing.assert_close(model.head.weight, weight, atol=0, rtol=0)  # the mask works on a copy
    # The head's input is still locked: a unit dropped at one step of a row is dropped at all.
    torch.manual_seed(2)
    hidden, _ = model.features(ids)
    assert torch.equal(hidden == 0, (hidden[:, :1] == 0).expand_as(hidden))
    # Under the batch's masks, the tied model equals its twin (the tied table masked, the head
    # left whole) -- checked through the twin's features, which do not read the head.
    torch.manual_seed(4)
    masks = draw_masks(model)
    model.dropout.p = model.embedding_dropout.p = model.output_dropout.p = 0.0
    torch.manual_seed(4)
    hidden, state = model.features(ids)
    twin_hidden, twin_state = twin_with(model, masks).features(ids)
    torch.testing.assert_close(hidden, twin_hidden, atol=TOL, rtol=0)
    rebuilt = RecurrentLM(model.config, model.vocab_size)
    assert rebuilt.config.weight_drop == 0.5 and rebuilt.config.embedding_row_dropout == 0.3


@pytest.mark.parametrize("key", ["weight_drop", "embedding_row_dropout"])
@pytest.mark.parametrize("value", [1.0, -0.1])
def test_a_rate_outside_zero_one_is_refused_by_name(key, value):
    cfg = compose_config([f"model.{key}={value}"])
    with pytest.raises(ValueError, match=rf"^model\.{key}={value} is not allowed: use a value [<>]=? [01]"):
        settings_of(cfg)
    with pytest.raises(ValueError, match=rf"^model\.{key}='high' is not allowed"):
        settings_of(compose_config([f"model.{key}=high"]))


def test_config_defaults_are_off_but_for_the_default_lstm():
    for model in ("rnn", "gru", "lstm"):
        cfg = compose_config([f"model={model}"])
        on = model == "lstm"  # the tuned default (conf/model/lstm.yaml)
        assert (cfg.model.weight_drop, cfg.model.embedding_row_dropout) == ((0.5, 0.1) if on else (0.0, 0.0))
        settings_of(cfg)


def test_a_checkpoint_from_before_these_options_still_loads(tmp_path):
    model = make_model("gru", embedding_size=EMBEDDING_SIZE, weight_drop=0.0, embedding_row_dropout=0.0).eval()
    old_config = {k: v for k, v in model.config.model_dump().items() if k not in ("weight_drop", "embedding_row_dropout")}
    old_config["vocab_size"] = model.vocab_size  # checkpoints before the typed settings held it in model_config
    vocab = Vocab.build("abcdefghij")
    assert len(vocab) == VOCAB_SIZE
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3,
                "lyricist": {"model_config": old_config, "vocab": vocab.to_dict()}}, tmp_path / "old.ckpt")
    loaded = load_checkpoint(tmp_path / "old.ckpt").model
    assert loaded.config == model.config  # the missing keys read as off
    ids = random_ids()
    torch.testing.assert_close(loaded(ids)[0], model(ids)[0], atol=0, rtol=0)


def test_a_tiny_training_run_keeps_them_in_its_checkpoint(tiny_data, tmp_path):
    cfg = with_data(compose_config(TINY + ["logger=none", "trainer.max_epochs=1", "model.weight_drop=0.3",
                                           "model.embedding_row_dropout=0.1"]), tiny_data)
    metrics = train(cfg, output_dir=tmp_path / "run")
    assert math.isfinite(metrics["val/ppl"])
    loaded = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert loaded.model.config.weight_drop == 0.3 and loaded.model.config.embedding_row_dropout == 0.1
    assert not loaded.model.training  # loaded for use: no masks drawn
