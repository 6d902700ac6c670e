"""Faults survived: kill + resume, divergence, unreachable tracking, locked SQLite, determinism,
and bad configuration refused before any training."""

import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.errors import MissingConfigException
from mlflow.tracking import MlflowClient
from pytorch_lightning.callbacks import ModelCheckpoint

from conftest import LYRICS, TINY, compose_config, plateau_cfg, write_encoded, with_data
from conftest import make_lit, make_lm
from lyricist.tracking import store
from lyricist.models import RecurrentLM
from conftest import train
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel, TrainingDiverged
from lyricist.data.vocab import Vocab


def _rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "tokens_per_sec"} for row in csv.DictReader(f)]


def _cpu_seconds(pid: int) -> float:
    """The CPU time a process has spent (user + system, /proc/<pid>/stat): its own progress,
    however busy the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3, the state
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def bigger_data(tmp_path):
    """Enough batches that an epoch takes a few seconds, so a kill lands mid-epoch."""
    return write_encoded(tmp_path / "encoded", LYRICS * 60, val_fraction=0.1, test_fraction=0.0)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes_to_identical_metrics(bigger_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = TINY + ["trainer.max_epochs=3", "train.early_stopping_patience=null",
                   f"paths.encoded={bigger_data}", f"logger.tracking_uri={uri}",
                   "train.resume=auto", "data.sampling=random"]  # random: the shuffle must resume too
    command = lambda run_dir: [sys.executable, "-m", "lyricist.train", *args, f"hydra.run.dir={run_dir}"]

    reference = subprocess.run(command(tmp_path / "reference"), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr

    victim = subprocess.Popen(command(tmp_path / "victim"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    metrics_csv = tmp_path / "victim" / "metrics.csv"
    # Events, not time (a busy machine stretches time, and a wall-clock sleep with it): epoch 0's
    # row, then 0.3 s of the victim's own CPU time into the next epoch.
    row_seen_at = None
    while row_seen_at is None or _cpu_seconds(victim.pid) < row_seen_at + 0.3:
        assert victim.poll() is None, "the run finished before it could be killed: make epochs longer"
        if row_seen_at is None and metrics_csv.is_file() and len(_rows(metrics_csv)) >= 1:
            row_seen_at = _cpu_seconds(victim.pid)
        time.sleep(0.05)  # how often to look, not how long to wait
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_rows = len(_rows(metrics_csv))
    assert 1 <= killed_rows < 3

    resumed = subprocess.run(command(tmp_path / "victim"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert _rows(metrics_csv) == _rows(tmp_path / "reference" / "metrics.csv")  # bitwise, CPU

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    assert len(runs) == 2, "the resumed run must continue its MLflow run, not open a third"
    histories = [[m.value for m in sorted(client.get_metric_history(r.info.run_id, "val/ppl"),
                                          key=lambda m: m.step)] for r in runs]
    assert histories[0] == histories[1] and len(histories[0]) == 3


@pytest.mark.slow
def test_lr_schedule_resumes_to_identical_metrics(tiny_cfg, plateau_data, tmp_path):
    """The plateau scheduler's state (best val ppl so far, bad epochs) travels in the checkpoint."""
    cfg = plateau_cfg(tiny_cfg, epochs=4)
    cfg.logger.enabled = False
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "reference")
    reference = _rows(tmp_path / "reference" / "metrics.csv")
    lrs = [float(r["train/lr"]) for r in reference]
    # A scheduler started afresh at epoch 2 would take epoch 2's val ppl for an improvement
    # and keep the lr: only a restored one lowers it here.
    assert lrs[3] < lrs[2], f"no plateau across the resume point ({lrs}): the test proves nothing"

    cfg.trainer.max_epochs = 2
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "resumed")
    cfg.trainer.max_epochs, cfg.train.resume = 4, "auto"
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "resumed")
    assert _rows(tmp_path / "resumed" / "metrics.csv") == reference  # bitwise, CPU


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


def test_unreachable_tracking_server_fails_before_training(tiny_cfg, tiny_data, tmp_path):
    tiny_cfg.logger.tracking_uri = "http://127.0.0.1:9"  # nothing listens on the discard port
    started = time.time()
    with pytest.raises(RuntimeError, match="cannot reach the MLflow tracking server"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    assert time.time() - started < 30
    assert not (tmp_path / "run").exists(), "nothing may be written before tracking works"


def test_locked_sqlite_is_retried_and_other_errors_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert store.with_retry(flaky, delay=0.01) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        store.with_retry(lambda: (_ for _ in ()).throw(ValueError("other")), delay=0.01)


def test_same_config_and_seed_give_identical_val_perplexity(tiny_cfg, tiny_data, tmp_path):
    tiny_cfg.logger.enabled = False
    first = train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "a")
    second = train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "b")
    assert first["val/ppl"] == second["val/ppl"]
    assert _rows(tmp_path / "a" / "metrics.csv") == _rows(tmp_path / "b" / "metrics.csv")


@pytest.mark.parametrize("override, message", [
    ("model.hidden_size=0", "hidden_size"),
    ("model.num_layers=0", "num_layers"),
    ("model.dropout=1.5", "dropout"),
    ("model.cell=transformer", "transformer"),
    ("train.clip_theta=0", "clip_theta"),
    ("data.sampling=shuffled", "sampling"),
    ("data.batch_size=100000", "batch_size"),
])
def test_bad_config_is_refused_before_training(override, message, tiny_data, tmp_path):
    cfg = compose_config(TINY + ["logger=none", override])
    with pytest.raises(Exception, match=message):
        train(with_data(cfg, tiny_data), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["model=transformer", "optim=rmsprop", "data=wikipedia"])
def test_unknown_group_options_name_the_choices(override):
    with pytest.raises(MissingConfigException, match="Available options"):
        compose_config([override])


MEMORY_PROBE = f"""
import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import make_lit, make_lm
import json, resource, torch, pytorch_lightning as pl
from lyricist.models import RecurrentLM
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel
from lyricist.data.vocab import Vocab

class PeakRss(pl.Callback):
    peaks_mb = []
    def on_train_epoch_end(self, trainer, module):
        self.peaks_mb.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # KiB -> MiB

vocab = Vocab.build("".join(chr(0x4E00 + i) for i in range(300)))
ids = torch.randint(0, len(vocab), (32 * 35 * 12 + 32,), generator=torch.Generator().manual_seed(0))
lit = make_lit(make_lm(len(vocab), cell="lstm", hidden_size=128, embedding_size=64), vocab, lr=1e-3,
               optimizer="torch.optim.Adam")
trainer = pl.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, callbacks=[PeakRss()],
                     enable_progress_bar=False, enable_model_summary=False)
trainer.fit(lit, datamodule=LyricsDataModule(ids, ids[:2000], 32, 35, "consecutive", 8))
print(json.dumps(PeakRss.peaks_mb))
"""


@pytest.mark.slow
def test_training_memory_does_not_grow_epoch_over_epoch():
    # A fresh process, so that peak RSS measures this training and nothing run before it.
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"peak RSS per epoch (MiB): {[round(p, 1) for p in peaks]}")
    growth = peaks[-1] - peaks[2]
    assert growth < 5, f"peak RSS grew {growth:.1f} MiB from epoch 3 to epoch 10: something keeps history"
