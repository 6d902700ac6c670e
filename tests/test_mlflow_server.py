"""A team's shared `mlflow server` (database backend) on loopback receives a sweep's runs."""

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, free_port, serving, project_env

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "server",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", str(tmp_path / "server-artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    uri = f"http://127.0.0.1:{port}"
    with serving(command, f"{uri}/health", cwd=tmp_path):
        yield uri


def test_sweep_logs_into_a_shared_mlflow_server(mlflow_server, tiny_data, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lyricist.train", "-m", *TINY, "trainer.max_epochs=1",
         f"paths.encoded={tiny_data}", f"logger.tracking_uri={mlflow_server}",
         f"hydra.sweep.dir={tmp_path / 'multirun'}", "model=rnn,lstm"],
        capture_output=True, text=True, cwd=tmp_path, env=project_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    assert len(runs) == 3 and sorted(r.data.params["model.cell"] for r in jobs) == ["lstm", "rnn"]
    for job in jobs:
        assert job.data.metrics["val/ppl"] > 1
        assert "samples" in {a.path for a in client.list_artifacts(job.info.run_id)}
