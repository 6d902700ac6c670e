"""The divergence guard: a loss or perplexity that is not finite, overflows or explodes stops
training with one line naming the fix, the last good checkpoint kept and the run folder usable."""

import hashlib
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from conftest import TINY, compose_config, make_lit, make_lm, project_env, train, train_cli_in_process, with_data
from lyricist.data.vocab import Vocab
from lyricist.evaluation.ppl import MAX_LOSS, perplexity
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import TrainingDiverged


def _app(overrides, tiny_data, run_dir, cwd, in_process=None):
    """`python -m lyricist.train` with the tiny config, as a user runs it; in_process=(monkeypatch,
    capsys): its main in this process (no interpreter start-up)."""
    args = [*TINY, "logger=none", "trainer.max_epochs=1", f"paths.encoded={tiny_data}", f"hydra.run.dir={run_dir}",
            *overrides]
    if in_process:
        return train_cli_in_process(args, cwd, *in_process)
    return subprocess.run([sys.executable, "-m", "lyricist.train", *args], capture_output=True, text=True, cwd=cwd,
                          env=project_env(), timeout=300)


def test_perplexity_of_any_loss_is_a_number_never_an_overflow():
    assert perplexity(1.0) == pytest.approx(2.718281828)
    assert perplexity(MAX_LOSS) < float("inf")
    assert perplexity(1e30) == perplexity(710.0) == perplexity(float("inf")) == float("inf")
    assert perplexity(float("nan")) != perplexity(float("nan"))  # nan stays nan


def test_a_huge_init_scale_without_the_guard_is_a_divergence_in_one_line_and_the_folder_stays_usable(
        tiny_data, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    refused = _app(["model.init_scale=1e30"], tiny_data, run_dir, tmp_path, (monkeypatch, capsys))  # bounded by the schema now
    assert refused.returncode == 2 and "error: model.init_scale=1e+30 is not allowed: use a value <= 10" in refused.stderr
    assert not run_dir.exists()
    proc = _app(["optim.lr=1e12", "train.divergence_factor=null"], tiny_data, run_dir, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "\nerror: training loss " in proc.stderr and ("overflows its perplexity" in proc.stderr
                                                         or "is not finite" in proc.stderr)
    assert "optim.lr" in proc.stderr and "Traceback" not in proc.stderr
    # No epoch finished: metrics.csv holds its header alone, which is no run to protect.
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1
    again = _app([], tiny_data, run_dir, tmp_path, (monkeypatch, capsys))
    assert again.returncode == 0, again.stderr[-2000:]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2


class _HugeHeadAtValidation(pl.Callback):
    """Fault injection: the head's weights become huge (finite) before validation, so the val loss
    is finite but far past exp()'s range (train's loss, computed before, is fine)."""

    def on_validation_epoch_start(self, trainer, module):
        with torch.no_grad():
            module.model.head.weight.mul_(1e30)


def test_a_val_loss_past_exps_range_is_a_divergence_not_an_overflow_error(tmp_path):
    vocab = Vocab.build("abcdefgh")
    ids = torch.randint(0, len(vocab), (600,), generator=torch.Generator().manual_seed(0))
    lit = make_lit(make_lm(len(vocab), hidden_size=8), vocab, lr=0.1, divergence_factor=None)
    trainer = pl.Trainer(max_epochs=1, logger=False, callbacks=[_HugeHeadAtValidation()], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    data = LyricsDataModule(ids, ids[:200], batch_size=4, num_steps=5, eval_batch_size=2)
    with pytest.raises(TrainingDiverged, match=r"validation loss \S+ overflows its perplexity .* at epoch 0"):
        trainer.fit(lit, datamodule=data)


def _file_md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


class _PoisonWeightsAtEpoch(pl.Callback):
    """Fault injection: a weight (the head's unless named) turns to NaN at the start of an epoch."""

    def __init__(self, epoch, parameter="head.weight"):
        self.epoch, self.parameter = epoch, parameter

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                module.model.get_parameter(self.parameter).view(-1)[0] = float("nan")


def test_nan_in_the_lstm_gates_stops_training_through_the_compiled_step(tmp_path):
    """A NaN in one input-side gate bias runs through the C++ step (no fast-math assumption
    swallows it) to the loss, and the divergence guard stops the run."""
    from lyricist.models.fast import kernels

    if not kernels.switch.on:
        pytest.skip("LYRICIST_CPP_KERNELS=0")
    assert kernels.step_kernels() is not None
    vocab = Vocab.build("abcdefgh")
    ids = torch.randint(0, len(vocab), (600,), generator=torch.Generator().manual_seed(0))
    lit = make_lit(make_lm(len(vocab), cell="lstm", hidden_size=8, embedding_size=4), vocab, lr=0.1)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                         callbacks=[_PoisonWeightsAtEpoch(1, "cells.0.bias_ih")],
                         enable_progress_bar=False, enable_model_summary=False)
    data = LyricsDataModule(ids, ids[:200], batch_size=4, num_steps=5, eval_batch_size=2)
    with kernels.cpp_kernels(True), pytest.raises(TrainingDiverged, match=r"not finite at epoch 1, batch 0"):
        trainer.fit(lit, datamodule=data)


def test_nan_loss_stops_with_epoch_step_and_hint_and_keeps_last_good_checkpoint(tmp_path):
    vocab = Vocab.build("abcdefgh")
    ids = torch.randint(0, len(vocab), (600,), generator=torch.Generator().manual_seed(0))
    lit = make_lit(make_lm(len(vocab), hidden_size=8), vocab, lr=0.1)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/ppl", save_last=True)
    trainer = pl.Trainer(max_epochs=3, logger=False, callbacks=[ckpt, _PoisonWeightsAtEpoch(1)],
                         enable_progress_bar=False, enable_model_summary=False)
    data = LyricsDataModule(ids, ids[:200], batch_size=4, num_steps=5, eval_batch_size=2)
    with pytest.raises(TrainingDiverged, match=r"not finite at epoch 1, batch 0.*optim\.lr.*clip_theta"):
        trainer.fit(lit, datamodule=data)
    last = tmp_path / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # epoch 0's, untouched
    before = _file_md5(last)
    assert all(torch.isfinite(v).all() for v in torch.load(last, weights_only=True)["state_dict"].values())
    assert _file_md5(last) == before


def test_exploding_loss_stops_training(tiny_cfg, tiny_data, tmp_path):
    cfg = tiny_cfg
    cfg.logger.enabled = False
    cfg.optim = compose_config(["optim=sgd", "optim.lr=1e6"]).optim
    cfg.train.clip_theta = None
    with pytest.raises(TrainingDiverged, match="(exploded|not finite).*optim.lr"):
        train(with_data(cfg, tiny_data), output_dir=tmp_path / "run")
