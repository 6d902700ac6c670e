"""A run directory that protects itself (#17): a fresh run never replaces the run already in
its directory unless told to, two processes never write to one directory, and a refusal
changes nothing there (not even Hydra's `.hydra/`). A run resumed in it (after SIGKILL, with its
lr schedule) ends as the run never stopped; a checkpoint it cannot resume from is one line."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import (LYRICS, TINY, compose_config, empty_store, metric_rows, plateau_cfg, project_env, train,
                      train_cli_in_process, with_data, write_encoded)
from lyricist import rundir


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


def _train_cli(*overrides, env=None, cwd, multirun=False, in_process=None):
    """`python -m lyricist.train`; in_process=(monkeypatch, capsys): its main in this process, where
    the test is its message (no interpreter start-up); `env` then holds the variables to add."""
    args = [*(["-m"] if multirun else []), *TINY, "logger=none", *overrides]
    if in_process:
        return train_cli_in_process(args, cwd, *in_process, env=env)
    return subprocess.run([sys.executable, "-m", "lyricist.train", *args], capture_output=True, text=True, cwd=cwd,
                          env=env or project_env())


def test_a_fresh_run_into_a_directory_holding_a_run_is_refused_before_hydra_writes(earlier_run, tiny_data, monkeypatch,
                                                                                   capsys):
    before = _snapshot(earlier_run)
    proc = _train_cli(f"hydra.run.dir={earlier_run}", f"paths.encoded={tiny_data}", cwd=earlier_run.parent,
                      in_process=(monkeypatch, capsys))
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


def test_a_bad_value_prints_one_line_and_creates_no_run_directory(tmp_path, tiny_data, monkeypatch, capsys):
    run = tmp_path / "run"
    proc = _train_cli(f"hydra.run.dir={run}", f"paths.encoded={tiny_data}", "model.hidden_size=abc",
                      cwd=tmp_path, in_process=(monkeypatch, capsys))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == ("error: model.hidden_size='abc' is not allowed: use a valid integer "
                                           "(hidden units per layer)")
    assert "Traceback" not in proc.stderr and not run.exists()
    # The full trace on demand, as Hydra gives it.
    full = _train_cli(f"hydra.run.dir={run}", f"paths.encoded={tiny_data}", "model.hidden_size=abc",
                      cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"}, in_process=(monkeypatch, capsys))
    assert full.returncode == 2 and "Traceback" in full.stderr and "lyricist/settings.py" in full.stderr


def test_a_data_error_inside_training_is_one_line_too(tmp_path, monkeypatch, capsys):
    proc = _train_cli(f"hydra.run.dir={tmp_path / 'run'}", f"paths.encoded={tmp_path / 'nowhere'}",
                      cwd=tmp_path, in_process=(monkeypatch, capsys))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "encoded data missing" in proc.stderr and "dvc pull data/raw/*.dvc && dvc repro vocab" in proc.stderr


def test_a_sweep_into_a_sweep_directory_holding_runs_is_refused(earlier_run, tiny_data, monkeypatch, capsys):
    sweep = earlier_run.parent
    earlier_run.rename(sweep / "0")  # job 0 of an earlier sweep into the same hydra.sweep.dir
    before = _snapshot(sweep)
    proc = _train_cli(f"hydra.sweep.dir={sweep}", f"paths.encoded={tiny_data}", "model=rnn,gru",
                      cwd=sweep, multirun=True, in_process=(monkeypatch, capsys))
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


def test_a_metrics_csv_with_its_header_alone_is_no_run(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train/loss,train/ppl,val/loss,val/ppl\n")
    assert rundir.existing_run(tmp_path) == []
    rundir.check_run_dir(tmp_path, resume=False, overwrite=False)  # not refused
    (tmp_path / "metrics.csv").write_text("epoch,train/loss\n0,3.2\n")
    assert rundir.existing_run(tmp_path) == ["metrics.csv"]


def test_resume_refuses_a_truncated_checkpoint_and_more_epochs_than_max_epochs(tiny_cfg, tiny_data, tmp_path):
    cfg = with_data(tiny_cfg, tiny_data)
    cfg.logger.enabled = False
    train(cfg, tmp_path / "run")  # 2 epochs
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg.train.resume, cfg.trainer.max_epochs = "auto", 1
    with pytest.raises(ValueError, match=r"train.resume='.*last.ckpt' has finished 2 epochs, more than "
                                         r"trainer.max_epochs=1: to train on, raise it above 2"):
        train(cfg, tmp_path / "run")
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])  # a copy cut short
    cfg.trainer.max_epochs = 3
    with pytest.raises(ValueError, match=r"checkpoint .*last.ckpt is corrupt or not a torch file"):
        train(cfg, tmp_path / "run")


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
def test_sigkill_mid_epoch_then_same_command_resumes_to_identical_metrics(bigger_data, tmp_path, _empty_store):
    uri = empty_store(_empty_store, tmp_path / "mlflow.db")
    # What this test reads is metrics.csv and the runs' val/ppl: no logged model (test_serving's).
    args = TINY + ["trainer.max_epochs=3", "train.early_stopping_patience=null",
                   f"paths.encoded={bigger_data}", f"logger.tracking_uri={uri}", "logger.log_model=false",
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
        if row_seen_at is None and metrics_csv.is_file() and len(metric_rows(metrics_csv)) >= 1:
            row_seen_at = _cpu_seconds(victim.pid)
        time.sleep(0.05)  # how often to look, not how long to wait
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_rows = len(metric_rows(metrics_csv))
    assert 1 <= killed_rows < 3

    resumed = subprocess.run(command(tmp_path / "victim"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert metric_rows(metrics_csv) == metric_rows(tmp_path / "reference" / "metrics.csv")  # bitwise, CPU

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
    reference = metric_rows(tmp_path / "reference" / "metrics.csv")
    lrs = [float(r["train/lr"]) for r in reference]
    # A scheduler started afresh at epoch 2 would take epoch 2's val ppl for an improvement
    # and keep the lr: only a restored one lowers it here.
    assert lrs[3] < lrs[2], f"no plateau across the resume point ({lrs}): the test proves nothing"

    cfg.trainer.max_epochs = 2
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "resumed")
    cfg.trainer.max_epochs, cfg.train.resume = 4, "auto"
    train(with_data(cfg, plateau_data), output_dir=tmp_path / "resumed")
    assert metric_rows(tmp_path / "resumed" / "metrics.csv") == reference  # bitwise, CPU
