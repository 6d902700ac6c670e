"""AWD-LSTM's training-side regularisation (issue #15): AR/TAR, weight averaging (NT-ASGD's
trigger), variable-length batches with the lr scaled to match; each off by default."""

import csv
import re

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn

from conftest import plateau_cfg, with_data
from conftest import make_lit, make_lm
from lyricist.checkpoint import load_checkpoint
from lyricist.data.batching import consecutive_batches, variable_lengths
from lyricist.data.vocab import Vocab
from lyricist.models import RecurrentLM
from lyricist.models.regularisers.ar_tar import ActivationPenalty
from lyricist.settings import ModelSettings
from conftest import train
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel

VOCAB = Vocab.build("abcdefghij")


def _lstm(**kwargs) -> RecurrentLM:
    return make_lm(len(VOCAB), cell="lstm", hidden_size=8, embedding_size=4, init="torch", **kwargs)


def _lit(model: RecurrentLM, lr: float = 0.5, **kwargs) -> LitLanguageModel:
    return make_lit(model, VOCAB, lr=lr, **kwargs)


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, len(VOCAB), (n,), generator=torch.Generator().manual_seed(seed))


def _trainer(epochs: int, callbacks=(), **kwargs) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", callbacks=list(callbacks), **kwargs)


# -- AR / TAR ---------------------------------------------------------------------------

def test_raw_features_are_the_last_layers_outputs_before_output_dropout():
    """The hook AR/TAR read: torch.nn.LSTM's outputs (the oracle), and `features` is them dropped."""
    torch.manual_seed(0)
    model = _lstm(num_layers=2, dropout=0.0, output_dropout=0.5).double()
    oracle = nn.LSTM(4, 8, num_layers=2, batch_first=True).double()
    with torch.no_grad():
        for layer, cell in enumerate(model.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(oracle, f"{name}_l{layer}").copy_(getattr(cell, name))
    ids = _ids(3 * 7).view(3, 7)
    raw, _ = model.raw_features(ids)
    expected, _ = oracle(model.embedding(ids))  # (B, T, H)
    assert torch.allclose(raw, expected, rtol=1e-10, atol=1e-12)
    torch.manual_seed(1)
    dropped, _ = model.features(ids)
    torch.manual_seed(1)
    assert torch.equal(dropped, F.dropout(raw, 0.5, training=True))  # the same mask, drawn the same way


@pytest.mark.parametrize("alpha, beta", [(2.0, 0.0), (0.0, 1.0), (2.0, 1.0)])
def test_ar_and_tar_are_added_to_the_differentiated_loss_only(alpha, beta):
    torch.manual_seed(0)
    lit = _lit(_lstm(dropout=0.0, output_dropout=0.5, ar_alpha=alpha, tar_beta=beta).double())
    ids, targets = _ids(2 * 9).view(2, 9), _ids(2 * 9, seed=1).view(2, 9)
    state = lit.model.begin_state(2)
    torch.manual_seed(3)
    loss, objective, _ = lit.model.objective(ids, targets, state)

    # Direct computation: the same dropout mask (same seed, same draw), then the formulas.
    torch.manual_seed(3)
    raw, _ = lit.model.raw_features(ids, state)  # (B, T, H)
    dropped = F.dropout(raw, 0.5, training=True)
    cross_entropy = F.cross_entropy(lit.model.head(dropped).flatten(0, 1), targets.flatten())
    ar = alpha * (dropped ** 2).mean()
    tar = beta * ((raw[:, 1:] - raw[:, :-1]) ** 2).mean()
    assert float(loss) == pytest.approx(float(cross_entropy), rel=1e-12)  # what is logged: no penalty
    assert float(objective) == pytest.approx(float(cross_entropy + ar + tar), rel=1e-12)
    assert float(objective - loss) > 0


def test_tar_of_a_one_step_batch_is_zero_and_ar_still_counts():
    raw = torch.randn(3, 1, 4)
    assert float(ActivationPenalty(ModelSettings(ar_alpha=0.0, tar_beta=5.0)).penalty(raw, raw)) == 0.0
    assert float(ActivationPenalty(ModelSettings(ar_alpha=2.0, tar_beta=5.0)).penalty(raw, raw)) == pytest.approx(
        float(2.0 * (raw ** 2).mean()))


def test_without_ar_and_tar_the_training_loss_is_the_models_own():
    """Off (the default) is the path training always took: model.loss, bit for bit."""
    torch.manual_seed(0)
    lit = _lit(_lstm(dropout=0.3))
    ids, targets = _ids(2 * 9).view(2, 9), _ids(2 * 9, seed=1).view(2, 9)
    torch.manual_seed(3)
    loss, objective, _ = lit.model.objective(ids, targets, lit.model.begin_state(2))
    torch.manual_seed(3)
    assert objective is loss and torch.equal(loss, lit.model.loss(ids, targets)[0])


# -- weight averaging ---------------------------------------------------------------------

class _RecordIterates(pl.Callback):
    """After every training step: the trained weights, and whether averaging had started."""

    def __init__(self):
        self.iterates, self.averaging = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.iterates.append([p.detach().clone() for p in module.model.parameters()])
        self.averaging.append(module.averaged is not None)


def _averaged_run(tmp_path, patience: int, val_ids: torch.Tensor, epochs: int = 4):
    torch.manual_seed(0)
    lit = _lit(_lstm(dropout=0.2), lr=1.0, weight_averaging="nt", averaging_patience=patience)
    record = _RecordIterates()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/ppl", save_last=True)
    data = LyricsDataModule(_ids(4 * 61), val_ids, batch_size=4, num_steps=6, eval_batch_size=2)
    val_ppls = []

    class _ValPpl(pl.Callback):
        def on_validation_end(self, trainer, module):  # after the module's own epoch-end hook
            val_ppls.append(module.epoch_metrics["val/ppl"])

    trainer = _trainer(epochs, [record, checkpoint, _ValPpl()], num_sanity_val_steps=0)
    trainer.fit(lit, datamodule=data)
    # Lightning writes last.ckpt only at epochs that improve val/ppl: this one is the end's.
    trainer.save_checkpoint(tmp_path / "end.ckpt")
    return lit, record, val_ppls


def _mean_of_iterates(record: _RecordIterates) -> list[torch.Tensor]:
    averaged = [it for it, on in zip(record.iterates, record.averaging) if on]
    return [torch.stack(ps).mean(dim=0) for ps in zip(*averaged)], len(averaged)


def test_averaging_from_the_first_step_is_the_mean_of_all_iterates(tmp_path):
    lit, record, _ = _averaged_run(tmp_path, patience=0, val_ids=_stalling_val(), epochs=2)
    assert all(record.averaging) and len(record.iterates) == 2 * 10
    means, count = _mean_of_iterates(record)
    assert int(lit.averaged.n_averaged) == count
    for mean, averaged, trained in zip(means, lit.averaged.module.parameters(), lit.model.parameters()):
        assert torch.allclose(averaged, mean, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(averaged, trained)  # not simply the last weights

    # What Lightning does on resume (the hook, then a strict load): the trained weights come
    # back as model.*, the average as averaged.module.*; with averaging switched off, no average.
    for averaging in ("nt", None):
        checkpoint = torch.load(tmp_path / "end.ckpt", weights_only=True)
        resumed = _lit(_lstm(dropout=0.2), weight_averaging=averaging, averaging_patience=0)
        resumed.on_load_checkpoint(checkpoint)
        resumed.load_state_dict(checkpoint["state_dict"], strict=True)
        assert all(torch.equal(a, b) for a, b in zip(resumed.model.parameters(), lit.model.parameters()))
        assert (resumed.averaged is None) == (averaging is None)
        if averaging:
            assert all(torch.equal(a, b) for a, b in zip(resumed.eval_model.parameters(),
                                                         lit.averaged.module.parameters()))
            assert int(resumed.averaged.n_averaged) == count


def _stalling_val() -> torch.Tensor:
    """Val text unlike the training text (shuffled other ids): its perplexity soon stops improving."""
    return _ids(200, seed=5)[torch.randperm(200, generator=torch.Generator().manual_seed(0))]


def _val_ppl(model: RecurrentLM, ids: torch.Tensor) -> float:
    """Perplexity over `ids` read as 2 consecutive streams of 6 steps, as validation reads it."""
    state, total, tokens = None, 0.0, 0
    with torch.no_grad():
        for x, y in consecutive_batches(ids, 2, 6):
            loss, state = model.eval().loss(x, y, state)
            total, tokens = total + float(loss) * y.numel(), tokens + y.numel()
    return float(torch.exp(torch.tensor(total / tokens, dtype=torch.float64)))


def test_non_monotonic_trigger_starts_averaging_when_val_stalls_and_everything_after_uses_it(tmp_path):
    lit, record, val_ppls = _averaged_run(tmp_path, patience=1, val_ids=_stalling_val(), epochs=5)
    started = record.averaging.index(True) // 10 if any(record.averaging) else None  # 10 batches an epoch
    assert started is not None and 1 <= started < 5, (
        f"averaging did not start mid-run ({val_ppls}): the test proves nothing")
    # The trigger: epoch started-1 was the first one not better than the best before it.
    assert val_ppls[started - 1] >= min(val_ppls[:started - 1], default=float("inf"))
    assert all(val_ppls[i] < min(val_ppls[:i]) for i in range(1, started - 1))
    assert not any(record.averaging[: started * 10]) and all(record.averaging[started * 10:])
    means, _ = _mean_of_iterates(record)
    for mean, averaged in zip(means, lit.averaged.module.parameters()):
        assert torch.allclose(averaged, mean, rtol=1e-5, atol=1e-6)

    # The checkpoint's model weights (what evaluate, generate and the MLflow model load) are
    # the average; the trained weights travel beside them for a resumed run.
    last = load_checkpoint(tmp_path / "end.ckpt")
    for name, value in lit.averaged.module.state_dict().items():
        assert torch.equal(last.model.state_dict()[name], value), name
    saved = torch.load(tmp_path / "end.ckpt", weights_only=True)
    for name, value in lit.model.state_dict().items():
        assert torch.equal(saved["lyricist_resume"]["iterate"][name], value), name
    # The last epoch's val/ppl is the averaged model's, not the trained weights'.
    assert _val_ppl(last.model, _stalling_val()) == pytest.approx(val_ppls[-1], rel=1e-6)
    assert _val_ppl(lit.model, _stalling_val()) != pytest.approx(val_ppls[-1], rel=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("patience", [0, 1])
def test_resume_with_averaging_and_variable_length_matches_the_uninterrupted_run(
        tiny_cfg, plateau_data, tmp_path, patience):
    """The average, its trigger, the lengths' draws and AR/TAR all resume bit for bit.
    patience 0: averaging from the first step, so the resume point's checkpoint holds an average;
    1: the run stops just before the epoch that triggers averaging, so only the trigger's saved
    best val/ppl makes the resumed run start averaging when the uninterrupted one did."""
    cfg = plateau_cfg(tiny_cfg, epochs=5)
    cfg.logger.enabled, cfg.optim.scheduler._target_ = False, None
    for key, value in [("train.weight_averaging", "nt"), ("train.averaging_patience", patience),
                       ("data.variable_length", True), ("model.ar_alpha", 2.0), ("model.tar_beta", 1.0)]:
        OmegaConf.update(cfg, key, value)
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "reference")
    reference = _csv_rows(tmp_path / "reference" / "metrics.csv")
    val_ppls = [float(row["val/ppl"]) for row in reference]
    first_bad = next((i for i in range(1, 5) if val_ppls[i] >= min(val_ppls[:i])), None)
    stop = 2 if patience == 0 else first_bad
    assert stop is not None and 1 <= stop < 4, f"no stall mid-run ({val_ppls}): the test proves nothing"

    cfg.trainer.max_epochs = stop
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "resumed")
    at_resume = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ("iterate" in at_resume["lyricist_resume"]) == (patience == 0)
    cfg.trainer.max_epochs, cfg.train.resume = 5, "auto"
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "resumed")
    assert _csv_rows(tmp_path / "resumed" / "metrics.csv") == reference  # bitwise, CPU
    ours, theirs = (load_checkpoint(tmp_path / run / "checkpoints" / "best.ckpt").model.state_dict()
                    for run in ("resumed", "reference"))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def _csv_rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "tokens_per_sec"} for row in csv.DictReader(f)]


# -- variable-length batches ---------------------------------------------------------------

class _RecordingSGD(torch.optim.SGD):
    """SGD that notes the lr of every step (what the variable-length scaling must change)."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.lrs = []

    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]["lr"])
        return super().step(closure)


def test_variable_length_training_reads_each_epoch_whole_with_the_lr_scaled_by_length():
    ids = _ids(4 * 80)
    shapes = []
    lit = make_lit(_lstm(), VOCAB, lr=0.3, optimizer=f"{__name__}._RecordingSGD", variable_length=True, num_steps=6)

    class _Shapes(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            shapes.append((trainer.current_epoch, tuple(batch[0].shape)))

    data = LyricsDataModule(ids, ids[:100], batch_size=4, num_steps=6, eval_batch_size=2, variable_length=True)
    trainer = _trainer(2, [_Shapes()], enable_checkpointing=False)
    trainer.fit(lit, datamodule=data)
    per_epoch = [[t for e, (_, t) in shapes if e == epoch] for epoch in (0, 1)]
    for epoch, lengths in enumerate(per_epoch):
        assert sum(lengths) == 80 - 1, f"epoch {epoch} did not read every input column: {lengths}"
        assert lengths == variable_lengths(len(ids), 4, 6, torch.Generator().manual_seed(epoch))
    assert per_epoch[0] != per_epoch[1] and len(set(per_epoch[0])) > 1
    [optimizer] = trainer.optimizers
    assert optimizer.lrs == pytest.approx([0.3 * t / 6 for t in per_epoch[0] + per_epoch[1]], rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == 0.3  # put back after every step


def test_variable_length_refuses_random_sampling_naming_the_keys():
    with pytest.raises(ValueError, match=r"data\.variable_length=True needs data\.sampling=consecutive"):
        _lit(_lstm(), variable_length=True, sampling="random")


# -- settings refused before any output ------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("model.ar_alpha", -1.0), ("model.ar_alpha", float("nan")), ("model.tar_beta", "abc"),
    ("model.tar_beta", True), ("train.weight_averaging", "swa"), ("train.averaging_patience", -1),
    ("train.averaging_patience", 1.5), ("data.variable_length", "yes"),
])
def test_a_bad_awd_value_is_refused_by_its_key(tiny_cfg, tiny_data, tmp_path, key, value):
    OmegaConf.update(tiny_cfg, key, value)
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}=.* is not allowed: use .* \(.+\)$"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"data.variable_length": True, "data.sampling": "random"},
     r"data\.variable_length=True needs data\.sampling=consecutive"),
    ({"train.weight_averaging": "nt", "train.averaging_patience": 3, "train.early_stopping_patience": 3},
     r"train\.averaging_patience=3 and train\.early_stopping_patience=3 do not go together: .*smaller"),
])
def test_settings_that_do_not_go_together_are_refused(tiny_cfg, tiny_data, tmp_path, overrides, message):
    for key, value in overrides.items():
        OmegaConf.update(tiny_cfg, key, value)
    with pytest.raises(ValueError, match=message):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


