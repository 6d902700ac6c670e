"""A real (tiny) training run: Lightning Trainer, MLflow SQLite store, checkpoints (whole, even on
a full disk, carrying the decoding), generation; the same seed gives the same run; bad settings
refused before it starts."""

import csv
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import pytorch_lightning as pl
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import TINY, compose_config, gen, metric_rows, plateau_cfg, tiny_config, train, with_data
from lyricist.training.callbacks import read_epoch_history
from lyricist.checkpoint import load_checkpoint, read_checkpoint_meta
from lyricist.data.vocab import load_ids
from lyricist.evaluation.lyrics import NgramSet, lyric_metrics
from lyricist.evaluation.evaluate import evaluate_checkpoint
from lyricist.decoding import generate
from lyricist.settings import Decoding


def test_tiny_run_logs_metrics_samples_and_artifacts_to_mlflow(tiny_cfg, tiny_data, tmp_path):
    out = tmp_path / "run"
    metrics = train(with_data(tiny_cfg, tiny_data), output_dir=out)

    assert math.isfinite(metrics["val/ppl"]) and metrics["val/ppl"] > 1
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train/ppl", "val/ppl", "tokens_per_sec", "grad_norm", "train/lr"} <= set(rows[0])

    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name(tiny_cfg.logger.experiment_name)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    for name in ("train/loss", "train/ppl", "val/loss", "val/ppl", "tokens_per_sec", "grad_norm", "train/lr"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1], name
    assert run.data.params["model.hidden_size"] == "16"
    assert run.data.params["data.sampling"] == "consecutive"
    assert len(run.data.tags["git_commit"]) in (40, len("unknown"))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples", "checkpoints", "vocab.json"} <= artifacts
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert samples == ["samples/epoch_001.txt", "samples/epoch_002.txt"]
    text = client.download_artifacts(run.info.run_id, "samples/epoch_002.txt", str(tmp_path))
    # The samples follow generate.* and are measured against the train text, at each epoch's step.
    last = load_checkpoint(out / "checkpoints" / "last.ckpt")
    decoding = {k: v for k, v in OmegaConf.to_container(tiny_cfg.generate).items() if k not in ("num_chars", "seed")}
    texts = [gen(last.model, last.vocab, p, 10, allow_unknown=True, seed=tiny_cfg.generate.seed + i, **decoding)
             for i, p in enumerate(tiny_cfg.data.prefixes)]  # each prefix its own seed
    assert open(text, encoding="utf-8").read() == "\n\n".join(texts) + "\n" and texts[0].startswith("分开")
    reference = NgramSet(last.vocab.decode(load_ids(tiny_data / "train.npy"), unk="\ufffd"))
    for name, value in lyric_metrics(texts, reference).as_flat_dict("samples/").items():
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [0, 1] and history[-1].value == pytest.approx(value), name

    # The checkpoint rebuilds the model + vocabulary through one function, and remembers its run.
    loaded = load_checkpoint(out / "checkpoints" / "best.ckpt")
    assert loaded.meta["mlflow_run_id"] == run.info.run_id
    assert gen(loaded.model, loaded.vocab, "不分开", 5).startswith("不分开")
    scores, samples_md = evaluate_checkpoint(out / "checkpoints" / "best.ckpt", tiny_data, batch_size=2,
                                             num_steps=8, prefixes=["分开"], decoding=Decoding(num_chars=10))
    assert scores.neural.val == pytest.approx(metrics["val/ppl"], rel=1e-4)
    assert scores.neural.test is not None and "## 分开" in samples_md


def test_missing_data_fails_before_training_with_the_fix(tiny_cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        train(with_data(tiny_cfg, tmp_path / "nowhere"), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_too_short_split_fails_before_training(tiny_cfg, tiny_data, tmp_path):
    tiny_cfg.data.batch_size = 10_000
    with pytest.raises(ValueError, match="batch_size"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")


def test_data_prepared_with_other_settings_is_refused(tiny_cfg, tiny_data, tmp_path):
    (tiny_data / "prepared_with.json").write_text(
        '{"newline": "keep", "lowercase": false, "max_chars": null, "val_fraction": 0.05, '
        '"test_fraction": 0.05, "min_freq": 1}')
    tiny_cfg.data.max_chars = 20000
    with pytest.raises(ValueError, match=r"data.max_chars: prepared None, asked 20000.*dvc exp run"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_plateau_schedule_halves_the_lr_when_val_ppl_stops_improving(tiny_cfg, plateau_data, tmp_path):
    cfg = plateau_cfg(tiny_cfg, epochs=4)
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "run")
    rows = read_epoch_history(tmp_path / "run" / "metrics.csv")
    lrs, val_ppls = [r["train/lr"] for r in rows], [r["val/ppl"] for r in rows]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and lrs[0] == 0.005
    # ReduceLROnPlateau's rule with patience 0: an epoch whose val ppl is not below the best so
    # far (by torch's default relative threshold 1e-4) halves the lr of the next epoch.
    expected, best = [lrs[0]], math.inf
    for ppl in val_ppls[:-1]:
        improved = ppl < best * (1 - 1e-4)
        best = min(best, ppl)
        expected.append(expected[-1] if improved else expected[-1] * 0.5)
    assert lrs == expected
    assert lrs[-1] < lrs[0], f"val ppl {val_ppls} never stopped improving: the test proves nothing"

    client = MlflowClient(cfg.logger.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id])
    history = sorted(client.get_metric_history(run.info.run_id, "train/lr"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == list(enumerate(lrs))


def test_bad_lr_schedule_config_fails_before_training(tiny_cfg, tiny_data, tmp_path):
    tiny_cfg.optim.scheduler._target_ = "torch.optim.lr_scheduler.Stepping"
    with pytest.raises(ValueError, match=r"optim \(torch.optim.Adam, scheduler torch.optim.lr_scheduler.Stepping\) cannot be built"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    tiny_cfg.optim.scheduler._target_, tiny_cfg.optim.scheduler.factor = "torch.optim.lr_scheduler.ReduceLROnPlateau", 1.5
    with pytest.raises(ValueError, match=r"cannot be built: Factor should be < 1\.0"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("patience", [0, None])
def test_early_stopping_patience_zero_stops_at_the_first_epoch_without_progress(
        tiny_cfg, plateau_data, tmp_path, patience):
    """0 is a patience (stop after one epoch without a better val/ppl), not "off"; null is off."""
    cfg = plateau_cfg(tiny_cfg, epochs=6)
    cfg.optim.scheduler._target_ = None  # a constant lr: val ppl on shuffled text soon stops improving
    cfg.train.early_stopping_patience = patience
    cfg.train.weight_averaging = None  # it would wait 2 epochs without progress: patience 0 stops first
    cfg.logger.enabled = False
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "run")
    val_ppls = [r["val/ppl"] for r in read_epoch_history(tmp_path / "run" / "metrics.csv")]
    # last.ckpt is the last epoch's (what a resume continues from), though val got worse there;
    # best.ckpt the best one's.
    checkpoints = tmp_path / "run" / "checkpoints"
    assert read_checkpoint_meta(checkpoints / "last.ckpt")["epoch"] == len(val_ppls) - 1
    assert read_checkpoint_meta(checkpoints / "best.ckpt")["epoch"] == val_ppls.index(min(val_ppls))
    if patience is None:
        assert len(val_ppls) == 6
        return
    # Lightning's rule: stop at the first epoch not better than the best so far.
    first_worse = next(i for i in range(1, len(val_ppls)) if val_ppls[i] >= min(val_ppls[:i]))
    assert len(val_ppls) == first_worse + 1 < 6, val_ppls


@pytest.mark.parametrize("key, value", [
    ("model.hidden_size", "abc"), ("model.hidden_size", 1.5), ("data.batch_size", "abc"),
    ("data.num_steps", 0), ("train.eval_batch_size", 0), ("train.samples_every_n_epochs", 0),
    ("generate.num_chars", 0), ("trainer.max_epochs", 0), ("optim.lr", -1.0), ("optim.lr", float("nan")),
    ("model.init_scale", -1.0), ("train.divergence_factor", -1.0), ("model.num_layers", True),
    ("model.dropout", 1.0), ("model.embedding_dropout", -0.1), ("model.embedding_size", 0),
    ("train.clip_theta", 0), ("optim.weight_decay", -1e-4), ("optim.scheduler.interval", "batch"),
    ("optim.scheduler.monitor", "val/loss"), ("train.early_stopping_patience", 1.5), ("train.seed", "abc"),
])
def test_a_bad_value_is_refused_by_its_key_before_anything_is_written(tiny_data, tmp_path, key, value):
    """Values that used to fail after the first epoch, name another key, or train wrong."""
    tiny_cfg = tiny_config(tmp_path)  # no store yet: the refusal must not make one
    OmegaConf.update(tiny_cfg, key, value)
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}=.* is not allowed: use .* \(.+\)$"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_trained_model_keeps_its_decoding_for_the_cli_and_the_served_model(tiny_cfg, tiny_data, tmp_path):
    """conf's `generate:` travels in the checkpoint: what lyricist-generate and the served model
    default to for that model (lyricist.checkpoint.LoadedModel.decoding)."""
    from lyricist.checkpoint import load_checkpoint
    from lyricist.settings import Decoding
    from conftest import train

    tiny_cfg.logger.enabled = False
    tiny_cfg.generate.temperature = 0.7
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    decoding = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.ckpt").decoding
    assert decoding == Decoding(**OmegaConf.to_container(tiny_cfg.generate)) and decoding.temperature == 0.7


def test_same_config_and_seed_give_identical_val_perplexity(tiny_cfg, tiny_data, tmp_path):
    tiny_cfg.logger.enabled = False
    first = train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "a")
    second = train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "b")
    assert first["val/ppl"] == second["val/ppl"]
    assert metric_rows(tmp_path / "a" / "metrics.csv") == metric_rows(tmp_path / "b" / "metrics.csv")


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


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a real filesystem that fills (root only: elsewhere the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): run as root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


class FillTheDisk(pl.Callback):
    """At the start of epoch `epoch`, fills the disk but for 16 KiB (a checkpoint here is ~48 KiB)."""

    def __init__(self, disk: Path, epoch: int) -> None:
        self.disk, self.epoch = disk, epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with open(self.disk / "filler", "wb") as f:
                f.write(b"\0" * (shutil.disk_usage(self.disk).free - 16 * 1024))


@pytest.mark.parametrize("full_at", [0, 1])
def test_a_full_disk_leaves_no_partial_checkpoint_and_keeps_the_last_good_one(small_disk, tiny_data, full_at):
    """Full before the first checkpoint: none is left (main left a truncated best.ckpt, written in
    /tmp and copied over). Full before the second: the first stays whole, as the only one (a write
    beside it needs room for both)."""
    run = small_disk / "run"
    cfg = with_data(compose_config(TINY + ["logger=none"]), tiny_data)
    with pytest.raises(OSError) as err:  # errors.NoSpace: one line from the CLI
        train(cfg, output_dir=run, callbacks=[FillTheDisk(small_disk, full_at)])
    message = str(err.value)
    assert message.startswith(f"no space left in {run / 'checkpoints'} to write ") and "\n" not in message
    assert "MiB are free (the previous" in message and "train.resume=auto" in message
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ([] if full_at == 0 else ["best.ckpt", "last.ckpt"])  # no partial file
    for name in left:  # epoch 0's, whole
        assert load_checkpoint(run / "checkpoints" / name).meta["epoch"] == 0
