"""Parallel Hydra sweeps (joblib) into one SQLite MLflow store: no lost run, no lock error,
one parent run with the jobs nested under it."""

import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, empty_store, project_env

pytestmark = pytest.mark.slow


def test_parallel_sweep_of_8_jobs_4_at_a_time_lands_every_run(tiny_data, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "lyricist.train", "-m", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=4", f"hydra.sweep.dir={tmp_path / 'multirun'}",
            *TINY, "trainer.max_epochs=2", f"paths.encoded={tiny_data}", f"logger.tracking_uri={uri}",
            "model=rnn,gru", "data.sampling=random,consecutive", "train.seed=1,2"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=project_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "locked" not in proc.stderr

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 9 and len(children) == 8
    combos = {(r.data.params["model.cell"], r.data.params["data.sampling"], r.data.params["train.seed"])
              for r in children}
    assert len(combos) == 8
    for child in children:
        assert child.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val/ppl")] == [0, 1]
        assert {"train/ppl", "tokens_per_sec", "grad_norm", "train/lr"} <= set(child.data.metrics)
    best = min(children, key=lambda r: r.data.metrics["best/val_ppl"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val_ppl"] == best.data.metrics["best/val_ppl"]
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    assert "model=rnn,gru" in parent.data.params["sweep.overrides"]


def test_a_failed_job_marks_itself_and_the_parent_failed_with_the_reason(tiny_data, tmp_path, _empty_store):
    uri = empty_store(_empty_store, tmp_path / "mlflow.db")
    # What this test reads is the runs' status and tags: no logged model (test_serving's).
    args = [sys.executable, "-m", "lyricist.train", "-m", f"hydra.sweep.dir={tmp_path / 'multirun'}",
            *TINY, "trainer.max_epochs=1", f"paths.encoded={tiny_data}", f"logger.tracking_uri={uri}",
            "logger.log_model=false",
            "optim=sgd", "train.clip_theta=null", "optim.lr=0.1,1e9"]  # job 1's loss explodes
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=project_env())
    assert proc.returncode != 0 and "TrainingDiverged" in proc.stderr

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = {r.data.params["optim.lr"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert children["0.1"].info.status == "FINISHED"
    failed = children["1000000000.0"]
    assert failed.info.status == "FAILED" and failed.data.tags["error"].startswith("TrainingDiverged: ")
    assert parent.info.status == "FAILED"
    assert parent.data.tags["failed_job.1"].startswith("TrainingDiverged: ")
    assert parent.data.tags["error"].startswith("job 1 (")
