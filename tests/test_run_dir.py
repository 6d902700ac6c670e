"""A run directory that protects itself (#17): a fresh run never replaces the run already in
its directory unless told to, two processes never write to one directory, and a refusal
changes nothing there (not even Hydra's `.hydra/`)."""

import hashlib
import os
import subprocess
import sys

import pytest

from conftest import TINY, compose_config, project_env, with_data
from lyricist import rundir
from conftest import train


def _snapshot(folder):
    """Every file under `folder` with its md5 (and the set of folders): equal means untouched."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def earlier_run(tmp_path):
    """A directory as a finished run leaves it (its files' contents do not matter here)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"the earlier run's weights")
    (run / "metrics.csv").write_text("epoch,val/ppl\n0,12.5\n1,11.0\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("model:\n  cell: gru\n")
    return run


def _train_cli(*overrides, env=None, cwd, multirun=False):
    args = [sys.executable, "-m", "lyricist.train", *(["-m"] if multirun else []), *TINY, "logger=none",
            *overrides]
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=env or project_env())


def test_a_fresh_run_into_a_directory_holding_a_run_is_refused_before_hydra_writes(earlier_run, tiny_data):
    before = _snapshot(earlier_run)
    proc = _train_cli(f"hydra.run.dir={earlier_run}", f"paths.encoded={tiny_data}", cwd=earlier_run.parent)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {earlier_run} already holds a run (checkpoints, metrics.csv)")
    assert "train.resume=auto" in proc.stderr and "train.overwrite=true" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _snapshot(earlier_run) == before  # .hydra/ too: refused before Hydra writes it


def test_a_second_process_on_a_directory_in_use_is_refused(tmp_path, tiny_data):
    run = tmp_path / "busy"
    assert rundir.lock_run_dir(run)  # this test process is "the other run"
    try:
        before = _snapshot(run)
        proc = _train_cli(f"hydra.run.dir={run}", f"paths.encoded={tiny_data}", cwd=tmp_path)
        assert proc.returncode == 2
        assert f"is in use by another run (process {os.getpid()})" in proc.stderr
        assert _snapshot(run) == before
    finally:
        rundir.release_run_dir(run)
    assert rundir.lock_run_dir(run)  # released: the next run may take it
    rundir.release_run_dir(run)


def test_a_bad_value_prints_one_line_and_creates_no_run_directory(tmp_path, tiny_data):
    run = tmp_path / "run"
    proc = _train_cli(f"hydra.run.dir={run}", f"paths.encoded={tiny_data}", "model.hidden_size=abc",
                      cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == ("error: model.hidden_size='abc' is not allowed: use a valid integer "
                                           "(hidden units per layer)")
    assert "Traceback" not in proc.stderr and not run.exists()
    # The full trace on demand, as Hydra gives it.
    full = _train_cli(f"hydra.run.dir={run}", f"paths.encoded={tiny_data}", "model.hidden_size=abc",
                      cwd=tmp_path, env=dict(project_env(), HYDRA_FULL_ERROR="1"))
    assert full.returncode == 2 and "Traceback" in full.stderr and "lyricist/settings.py" in full.stderr


def test_a_data_error_inside_training_is_one_line_too(tmp_path):
    proc = _train_cli(f"hydra.run.dir={tmp_path / 'run'}", f"paths.encoded={tmp_path / 'nowhere'}",
                      cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "encoded data missing" in proc.stderr and "dvc pull data/raw/*.dvc && dvc repro vocab" in proc.stderr


def test_a_sweep_into_a_sweep_directory_holding_runs_is_refused(earlier_run, tiny_data):
    sweep = earlier_run.parent
    earlier_run.rename(sweep / "0")  # job 0 of an earlier sweep into the same hydra.sweep.dir
    before = _snapshot(sweep)
    proc = _train_cli(f"hydra.sweep.dir={sweep}", f"paths.encoded={tiny_data}", "model=rnn,gru",
                      cwd=sweep, multirun=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{sweep / '0'} already holds a run" in proc.stderr
    assert _snapshot(sweep) == before


def test_train_refuses_then_overwrites_when_told(earlier_run, tiny_data):
    cfg = with_data(compose_config(TINY + ["logger=none", "trainer.max_epochs=1"]), tiny_data)
    before = _snapshot(earlier_run)
    with pytest.raises(rundir.RunDirError, match="already holds a run"):
        train(cfg, output_dir=earlier_run)
    assert _snapshot(earlier_run) == before
    cfg.train.overwrite = True
    # Trainer settings that cannot run here are refused before the earlier run is removed.
    cfg.trainer.accelerator = "gpu"
    with pytest.raises(ValueError, match="trainer settings refused .*trainer.accelerator=cpu"):
        train(cfg, output_dir=earlier_run)
    assert _snapshot(earlier_run) == before
    cfg.trainer.accelerator = "cpu"
    train(cfg, output_dir=earlier_run)
    assert (earlier_run / "checkpoints" / "best.ckpt").read_bytes() != b"the earlier run's weights"
    assert [line.split(",")[0] for line in (earlier_run / "metrics.csv").read_text().splitlines()[1:]] == ["0"]
    cfg.train.overwrite, cfg.train.resume = False, "auto"  # resuming the run there is allowed
    cfg.trainer.max_epochs = 2
    train(cfg, output_dir=earlier_run)
    assert len((earlier_run / "metrics.csv").read_text().splitlines()) == 3


def test_train_overwrite_must_be_a_boolean(tiny_data, tmp_path):
    cfg = with_data(compose_config(TINY + ["logger=none", "train.overwrite=yes"]), tiny_data)
    with pytest.raises(ValueError, match=r"^train.overwrite='yes' is not allowed: use a valid boolean"):
        train(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    ({"model.hidden_size": 12, "model.embedding_size": 12}, r"holds another model than the config builds \(.*checkpoint \(64, 16\), config \(48, 12\)"),
    ({"optim": "sgd"}, r"was trained with another optimizer .*optim=SGD has .*momentum"),
])
def test_resuming_a_checkpoint_of_another_model_or_optimizer_is_refused_by_name(change, message, tiny_data, tmp_path):
    cfg = with_data(compose_config(TINY + ["logger=none", "trainer.max_epochs=1"]), tiny_data)
    train(cfg, output_dir=tmp_path / "run")
    before = _snapshot(tmp_path / "run")
    overrides = [f"{k}={v}" for k, v in change.items()]
    other = with_data(compose_config(TINY + ["logger=none", "trainer.max_epochs=2", "train.resume=auto", *overrides]),
                      tiny_data)
    with pytest.raises(ValueError, match=message):
        train(other, output_dir=tmp_path / "run")
    assert _snapshot(tmp_path / "run") == before
