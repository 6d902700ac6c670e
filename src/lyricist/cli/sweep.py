"""One MLflow parent run per Hydra sweep, the jobs nested under it (`hydra.callbacks.mlflow_sweep`).

Before the jobs start, the sweep's main process creates the parent run and writes its id into the
sweep directory, where each job (in whatever process the launcher gives it) reads it. After the last
job it logs the best child's val perplexity and puts the alias `best` on its registered version. A
failed job marks the parent FAILED at once, in its own process, with the tags `error` and
`failed_job.<num>` (Hydra's basic sweeper raises the job's error and never calls on_multirun_end).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from lyricist.project import project_root
from lyricist.tracking import store

PARENT_FILE = "mlflow_parent_run_id"


def parent_run_id_for_current_job() -> str | None:
    """The sweep's parent run id when this Hydra job is part of a multirun, else None."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = Path(HydraConfig.get().sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


class MlflowSweepCallback(Callback):
    client: MlflowClient | None = None  # the parent run's, in the sweep's main process only
    parent_run_id: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.logger.enabled:
            return
        root = project_root(config.paths.root)
        overrides = " ".join(config.hydra.overrides.task)
        # Created here, once, before parallel jobs race to create tables and experiment.
        self.client, self.parent_run_id = store.open_parent_run(
            store.resolve_tracking_uri(config.logger.tracking_uri, root), config.logger.experiment_name,
            f"sweep {overrides}", {"sweep": "parent"}, root, {"sweep.overrides": overrides})
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(self.parent_run_id)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        parent = parent_run_id_for_current_job()  # HydraConfig is still the job's
        if job_return.status != JobStatus.FAILED or not config.logger.enabled or not parent:
            return
        client = MlflowClient(store.resolve_tracking_uri(config.logger.tracking_uri, project_root(config.paths.root)))
        reason = store.failure_reason(job_return._return_value)  # .return_value would raise it
        job = f"{config.hydra.job.num} ({' '.join(config.hydra.overrides.task)})"
        store.with_retry(lambda: client.set_tag(parent, f"failed_job.{config.hydra.job.num}", reason))
        store.with_retry(lambda: client.set_tag(parent, store.ERROR_TAG, f"job {job} failed: {reason}"[:5000]))
        store.with_retry(lambda: client.set_terminated(parent, "FAILED"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.client is None:
            return
        client, parent = self.client, self.parent_run_id
        children = store.with_retry(lambda: client.search_runs(
            [client.get_run(parent).info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"))
        scored = [(r.data.metrics["best/val_ppl"], r) for r in children
                  if "best/val_ppl" in r.data.metrics]
        store.with_retry(lambda: client.log_metric(parent, "sweep/jobs_finished", len(scored)))
        if scored:
            best_ppl, best = min(scored, key=lambda pair: pair[0])
            store.with_retry(lambda: client.log_metric(parent, "best/val_ppl", best_ppl))
            store.with_retry(lambda: client.set_tag(parent, "best_child_run_id", best.info.run_id))
            name = config.logger.get("registered_model_name")
            if name and config.logger.get("log_model"):
                # Each job registered its model (lyricist.tracking.registry): the best one's version.
                [version] = store.with_retry(lambda: client.search_model_versions(
                    f"name = '{name}' and run_id = '{best.info.run_id}'"))
                client.set_registered_model_alias(name, "best", version.version)
        failed = store.ERROR_TAG in store.with_retry(lambda: client.get_run(parent)).data.tags
        status = "FINISHED" if len(scored) == len(children) and children and not failed else "FAILED"
        store.with_retry(lambda: client.set_terminated(parent, status))
