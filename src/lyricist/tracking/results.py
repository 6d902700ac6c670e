"""The evaluate stage's results, logged into the checkpoint's MLflow run at its epoch, on the run's logged model
(docs/mlflow.md): evaluating the same checkpoint again overwrites them, no second run appears."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from lyricist.checkpoint import read_checkpoint_meta
from lyricist.project import project_root
from lyricist.settings import LoggerSettings
from lyricist.tracking import store

ARTIFACT_DIR = "evaluation"


def log_evaluation(checkpoints: Sequence[str], metrics: Mapping[str, float], step: int, files: Sequence[str | Path],
                   logger: LoggerSettings, root: str | None) -> str | None:
    """Log `metrics` ({MLflow name: value}) at `step` and `files` into the checkpoint's MLflow run: its id, or None
    for no run to log into (tracking off, an ensemble, no run, a store without it; the reports never depend on it)."""
    if not logger.enabled:
        return None  # logger=none
    if len(checkpoints) != 1:
        print("evaluate: an ensemble belongs to no single MLflow run: results not logged")
        return None
    run_id = read_checkpoint_meta(checkpoints[0]).get("mlflow_run_id")
    if not run_id:
        print(f"evaluate: {checkpoints[0]} was trained without MLflow: results not logged")
        return None
    uri = logger.tracking_uri or "the project's store"
    try:
        uri = store.resolve_tracking_uri(logger.tracking_uri, project_root(root) if root else None)
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise FileNotFoundError("no such file")  # and MLflow would make an empty store there
        store.check_reachable(uri)
        client = MlflowClient(uri)
        run = store.with_retry(lambda: client.get_run(run_id))  # refused here when the store lacks it
        # The run's logged model (search_logged_models ranks by its metrics) and corpus input (the metrics' data).
        model_id = next((m.model_id for m in run.outputs.model_outputs), None) if run.outputs else None
        dataset = next((d.dataset for d in run.inputs.dataset_inputs), None) if run.inputs else None
        now = int(time.time() * 1000)
        batch = [Metric(name, value, now, step, model_id=model_id, run_id=run_id,
                        dataset_name=dataset.name if dataset else None,
                        dataset_digest=dataset.digest if dataset else None) for name, value in metrics.items()]
        store.with_retry(lambda: client.log_batch(run_id, metrics=batch))
        for path in files:
            store.with_retry(lambda: client.log_artifact(run_id, str(path), ARTIFACT_DIR))
    except Exception as err:  # the reports are written: a missing store or run costs only this
        print(f"evaluate: results not logged to MLflow run {run_id} in {uri} ({err}); the reports "
              "are written. Evaluate where the run's store is (logger.tracking_uri), or train again")
        return None
    print(f"evaluate: results logged to MLflow run {run_id} (test/ppl, kn/*, mixed/*, {ARTIFACT_DIR}/)")
    return run_id

