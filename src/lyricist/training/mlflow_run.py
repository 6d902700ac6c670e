"""The run's MLflow logger: opened (or continued, on resume) before training, finished after it
with the best val perplexity, the checkpoint, the vocabulary and the servable model."""

from __future__ import annotations

import json
from pathlib import Path

from pytorch_lightning.loggers import MLFlowLogger

from lyricist.data.vocab import Vocab
from lyricist.settings import LoggerSettings, Settings
from lyricist.tracking import registry, serving, store


def open_run(s: Settings, tracking_uri: str, root: Path, resume_run_id: str | None,
             parent_run_id: str | None) -> MLFlowLogger:
    """The run's MLflow logger, its store and experiment created first (with retries);
    resuming continues the checkpoint's run instead of opening a new one."""
    store.ensure_experiment(tracking_uri, s.logger.experiment_name)
    mlf = MLFlowLogger(
        experiment_name=s.logger.experiment_name, tracking_uri=tracking_uri,
        # A name that says what ran (MLflow's random names repeat under a fixed seed).
        run_name=s.logger.run_name or f"{s.model.cell} {s.data.sampling} h{s.model.hidden_size} {s.data.name}",
        run_id=resume_run_id,
        tags={"git_commit": store.git_commit(root),
              "data_md5": store.raw_data_md5(s.data.raw_path, root),
              "corpus": s.data.name, "model": s.model.cell,
              **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})},
    )
    store.with_retry(lambda: mlf.run_id)  # creates the run
    if resume_run_id is None:  # a resumed run has its params already (MLflow refuses changes)
        mlf.log_hyperparams(store.flatten(s.model_dump(by_alias=True)))
    return mlf


def finish_run(mlf: MLFlowLogger, tracking_uri: str, best_path: str, vocab: Vocab,
               best_val_ppl: float, logger: LoggerSettings) -> None:
    client, run_id = mlf.experiment, mlf.run_id
    store.with_retry(lambda: client.log_metric(run_id, "best/val_ppl", best_val_ppl))
    store.with_retry(lambda: client.log_artifact(run_id, best_path, "checkpoints"))
    vocab_json = json.dumps(vocab.to_dict(), ensure_ascii=False, indent=1)
    store.with_retry(lambda: client.log_text(run_id, vocab_json, "vocab.json"))
    if logger.log_model:
        model = serving.log_pyfunc_model(tracking_uri, run_id, best_path, max_num_chars=logger.serve_max_num_chars,
                                         max_seconds=logger.serve_max_seconds)
        if logger.registered_model_name:  # a new version; the alias `champion` moves only to a better one
            registry.register(tracking_uri, logger.registered_model_name, model.model_uri, model.model_id, run_id,
                              best_val_ppl)
    mlf.finalize("success")
