"""Train one model: `train(settings, output_dir)` builds, fits and reports (to MLflow too). All that can fail (data,
model, checkpoint to resume, tracking store, Trainer settings) fails before any output, the run directory claimed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from lyricist import rundir
from lyricist.checkpoint import read_checkpoint_meta
from lyricist.data.vocab import Vocab
from lyricist.models import RecurrentLM
from lyricist.project import project_root
from lyricist.settings import LoggerSettings, Settings
from lyricist.tracking import inputs, registry, serving, store
from lyricist.training import quiet
from lyricist.training.callbacks import AtomicCheckpointIO, EpochCSVLogger, SamplesCallback, read_epoch_history
from lyricist.training.datamodule import LyricsDataModule, load_encoded
from lyricist.training.module import LitLanguageModel
from lyricist.training.resume import check_resumable, resolve_resume


def train(s: Settings, output_dir: str | Path, parent_run_id: str | None = None,
          callbacks: list[pl.Callback] | None = None) -> dict:
    """Train the model of `s` into `output_dir` (checkpoints/, metrics.csv), `callbacks` added to the run's
    own (a search's pruning); the final metrics, `val/ppl` the best epoch's (what a search minimises)."""
    quiet.silence_known_noise()
    output_dir = Path(output_dir)
    rundir.check_run_dir(output_dir, bool(s.train.resume), s.train.overwrite)  # reads only
    root = project_root(s.paths.root)
    pl.seed_everything(s.train.seed, workers=True, verbose=False)

    vocab, splits = load_encoded(root / s.paths.encoded, s.data, s.train.eval_batch_size)
    module = LitLanguageModel(RecurrentLM(s.model, len(vocab)), vocab, s.optim, s.train, s.data)
    module.extra_checkpoint["decoding"] = s.generate.model_dump()  # lyricist-generate's defaults
    datamodule = LyricsDataModule(splits["train"], splits["val"], s.data.batch_size, s.data.num_steps,
                                  s.data.sampling, s.train.eval_batch_size, s.train.seed, s.data.variable_length)
    resume_path = resolve_resume(s.train.resume, output_dir)
    resume_meta = read_checkpoint_meta(resume_path) if resume_path else {}
    if resume_path:
        check_resumable(resume_path, module, s.trainer.max_epochs)
    # Tracking before any output: an unreachable server fails here, not after training. Rank 0's
    # run only: a second machine's first process is no DDP child to Lightning until its Trainer starts.
    tracking = s.logger.enabled and not rundir.is_ddp_child()
    tracking_uri = store.resolve_tracking_uri(s.logger.tracking_uri, root) if tracking else None
    mlf = _open_run(s, tracking_uri, root, resume_meta.get("mlflow_run_id"), parent_run_id) if tracking_uri else None
    run_id = mlf.run_id if mlf else None
    if run_id:
        module.extra_checkpoint["mlflow_run_id"] = run_id
        inputs.log_corpus(tracking_uri, run_id, s.data.name, root / s.data.raw_path, root / s.paths.encoded)
    # Trainer settings that cannot work here (accelerator=gpu without one) fail before train.overwrite deletes.
    try:
        with quiet.quiet_probe():
            s.trainer.build(logger=False, callbacks=[], enable_checkpointing=False)
    except MisconfigurationException as err:
        raise ValueError(f"trainer settings refused ({err}): trainer.accelerator={s.trainer.accelerator}, "
                         f"devices={s.trainer.devices}; on a machine without a GPU use trainer.accelerator=cpu "
                         "(the default, trainer=default)") from err
    # The first write into output_dir: the lock (a second process is refused), then train.overwrite's removal.
    locked = rundir.claim_run_dir(output_dir, bool(s.train.resume), s.train.overwrite)
    try:
        csv_logger = EpochCSVLogger(output_dir / "metrics.csv",
                                    keep_epochs_below=resume_meta["epoch"] + 1 if resume_path else None)
        trainer = s.trainer.build(
            logger=[csv_logger] + ([mlf] if mlf else []), default_root_dir=str(output_dir),
            plugins=[AtomicCheckpointIO()],  # a full disk or a kill leaves the previous checkpoint whole
            callbacks=_callbacks(s, output_dir, tracking_uri, run_id, train_text=vocab.decode(splits["train"], unk="\ufffd"))
            + list(callbacks or []))
        with inputs.system_metrics(tracking_uri, run_id, s.logger.system_metrics):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path)
        if not trainer.is_global_zero:  # DDP: rank 0 reports
            return {}
        # From metrics.csv, which holds every epoch, those this process did not train too (ddp_spawn, a resume).
        history = read_epoch_history(output_dir / "metrics.csv")
        metrics = dict(history[-1]) if history else {}
        metrics["val/ppl"] = min((row["val/ppl"] for row in history), default=math.inf)
        best_path = trainer.checkpoint_callback.best_model_path
        if mlf:
            _finish_run(mlf, tracking_uri, best_path, vocab, metrics["val/ppl"], s.logger)
    except BaseException as err:
        if mlf:  # not left RUNNING: FAILED, with the reason as a tag
            store.mark_failed(tracking_uri, mlf.run_id, err)
        raise
    finally:
        if locked:
            rundir.release_run_dir(output_dir)
    lines = ["", "lyricist: training finished",
             f"  best val perplexity   {metrics['val/ppl']:.2f}",
             f"  best checkpoint       {best_path}",
             f"  per-epoch metrics     {output_dir / 'metrics.csv'}"]
    if run_id:
        lines.append(f"  MLflow run            {run_id} (experiment {s.logger.experiment_name!r})")
        lines.append(f"  browse                mlflow ui --backend-store-uri {tracking_uri}, then "
                     f"{store.experiment_url(store.UI_URL, mlf.experiment_id)}")
    print("\n".join(lines))
    return metrics


def _callbacks(s: Settings, output_dir: Path, tracking_uri: str | None, run_id: str | None,
               train_text: str = "") -> list[pl.Callback]:
    """The best and last checkpoints, early stopping (patience set, 0 too), the progress bar, the MLflow samples."""
    checkpoints = str(output_dir / "checkpoints")
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(checkpoints, "best", monitor="val/ppl", mode="min", enable_version_counter=False),
        # last.ckpt after every epoch, what train.resume continues from (save_last writes only improving ones).
        ModelCheckpoint(checkpoints, "last", monitor=None, save_top_k=1, enable_version_counter=False)]
    if s.train.early_stopping_patience is not None:
        callbacks.append(EarlyStopping("val/ppl", patience=s.train.early_stopping_patience))
    if s.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    if run_id is not None:
        callbacks.append(SamplesCallback(s.data.prefixes, s.train.samples_every_n_epochs, s.generate,
                                         tracking_uri, run_id, train_text))
    return callbacks


def _open_run(s: Settings, tracking_uri: str, root: Path, resume_run_id: str | None,
             parent_run_id: str | None) -> MLFlowLogger:
    """The run's MLflow logger, its store and experiment made first; a resumed run continues the checkpoint's."""
    store.ensure_experiment(tracking_uri, s.logger.experiment_name)
    mlf = MLFlowLogger(
        experiment_name=s.logger.experiment_name, tracking_uri=tracking_uri,
        # A name that says what ran (MLflow's random names repeat under a fixed seed).
        run_name=s.logger.run_name or f"{s.model.cell} {s.data.sampling} h{s.model.hidden_size} {s.data.name}",
        run_id=resume_run_id,
        tags={"git_commit": store.git_commit(root),
              "data_md5": store.raw_data_md5(s.data.raw_path, root),
              "corpus": s.data.name, "model": s.model.cell,
              **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})})
    store.with_retry(lambda: mlf.run_id)  # creates the run
    if resume_run_id is None:  # a resumed run has its params already (MLflow refuses changes)
        mlf.log_hyperparams(store.flatten(s.model_dump(by_alias=True)))
    return mlf


def _finish_run(mlf: MLFlowLogger, tracking_uri: str, best_path: str, vocab: Vocab,
               best_val_ppl: float, logger: LoggerSettings) -> None:
    client, run_id = mlf.experiment, mlf.run_id
    store.with_retry(lambda: client.log_metric(run_id, "best/val_ppl", best_val_ppl))
    store.with_retry(lambda: client.log_artifact(run_id, best_path, "checkpoints"))
    vocab_json = json.dumps(vocab.to_dict(), ensure_ascii=False, indent=1)
    store.with_retry(lambda: client.log_text(run_id, vocab_json, "vocab.json"))
    if logger.log_model:
        model = serving.log_pyfunc_model(tracking_uri, run_id, best_path, logger)
        if logger.registered_model_name:  # a new version; the alias `champion` moves only to a better one
            registry.register(tracking_uri, logger.registered_model_name, model.model_uri, model.model_id, run_id,
                              best_val_ppl)
    mlf.finalize("success")
