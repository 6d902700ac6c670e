"""Train one model: `train(cfg, output_dir)` builds, fits and reports; `main` is the Hydra entry.

    python -m lyricist.train model=rnn data.sampling=random
    python -m lyricist.train -m model=rnn,lstm data.sampling=random,consecutive

The composed config is checked once (lyricist.settings) and the library receives typed
settings: `RecurrentLM(s.model, V)`, `LitLanguageModel(model, vocab, s.optim, s.train, s.data)`,
the samples callback `s.generate`. The Trainer comes from conf/trainer/ by `_target_`.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import MisconfigurationException
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, read_write
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import MLFlowLogger

from lyricist import errors, rundir, settings
from lyricist.checkpoint import read_checkpoint_meta
from lyricist.data.batching import check_enough_tokens
from lyricist.data.prepared import check_record
from lyricist.data.vocab import Vocab, load_ids
from lyricist.models import RecurrentLM
from lyricist.project import project_root
from lyricist.tracking import inputs, registry, serving, store, sweep
from lyricist.training import quiet
from lyricist.training.callbacks import AtomicCheckpointIO, EpochCSVLogger, SamplesCallback, read_epoch_history
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel, TrainingDiverged

# What the entry point prints as one line (errors.run_cli): bad input, and a run stopped by
# the divergence guard or an unusable tracking store, whose messages say the fix.
USER_ERRORS = (*errors.USER_ERRORS, TrainingDiverged, store.TrackingError)


def train(cfg: DictConfig, output_dir: str | Path, parent_run_id: str | None = None,
          callbacks: list[pl.Callback] | None = None) -> dict:
    """Train the configured model; write checkpoints/ and metrics.csv under `output_dir`.
    `callbacks`: Lightning callbacks added to conf's (lyricist.tune's pruning callback).

    Returns the final metrics, among them `val/ppl` (the best epoch's), what a search minimises.
    """
    s = settings.load(cfg)  # every value checked, before any data is read or any output written
    quiet.silence_known_noise()
    output_dir = Path(output_dir)
    rundir.check_run_dir(output_dir, bool(s.train.resume), s.train.overwrite)  # reads only
    root = project_root(s.paths.root)
    pl.seed_everything(s.train.seed, workers=True, verbose=False)

    # Everything that can fail fast does so before the first batch and before any output.
    vocab, splits = load_encoded(root / s.paths.encoded, s.data, s.train.eval_batch_size)
    module = LitLanguageModel(RecurrentLM(s.model, len(vocab)), vocab, s.optim, s.train, s.data)
    module.extra_checkpoint["decoding"] = s.generate.model_dump()  # lyricist-generate's defaults
    datamodule = LyricsDataModule(splits["train"], splits["val"], s.data.batch_size, s.data.num_steps,
                                  s.data.sampling, s.train.eval_batch_size, s.train.seed, s.data.variable_length)
    resume_path = resolve_resume(s.train.resume, output_dir)
    resume_meta = read_checkpoint_meta(resume_path) if resume_path else {}
    if resume_path:
        check_resumable(resume_path, module)
        check_epochs_left(resume_path, resume_meta.get("epoch"), s.trainer.max_epochs)
    # Tracking before any output: an unreachable server fails here, not after training.
    tracking_uri = store.resolve_tracking_uri(s.logger.tracking_uri, root) if s.logger.enabled else None
    mlf = (_mlflow_logger(s, tracking_uri, root, resume_meta.get("mlflow_run_id"), parent_run_id)
           if tracking_uri else None)
    run_id = mlf.run_id if mlf else None
    if run_id:
        module.extra_checkpoint["mlflow_run_id"] = run_id
        inputs.log_corpus(tracking_uri, run_id, cfg.data.name, root / cfg.data.raw_path, root / cfg.paths.encoded)
    # Trainer settings that cannot work here (trainer.accelerator=gpu without one, ...) fail
    # now, before train.overwrite removes anything: a probe that writes nothing.
    try:
        with quiet.quiet_probe():
            instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    except MisconfigurationException as err:
        raise ValueError(f"trainer settings refused ({err}): trainer.accelerator={s.trainer.accelerator}, "
                         f"devices={s.trainer.devices}; on a machine without a GPU use trainer.accelerator=cpu "
                         "(the default, trainer=default)") from err
    # The first write into output_dir: the lock (a second process is refused here), then, with
    # train.overwrite, the earlier run's files removed.
    locked = rundir.claim_run_dir(output_dir, bool(s.train.resume), s.train.overwrite)
    try:
        run_callbacks = _callbacks(s, output_dir, tracking_uri, run_id,
                                   train_text=vocab.decode(splits["train"], unk="\ufffd")) + list(callbacks or [])
        return _fit_and_report(cfg, s, output_dir, module, datamodule, resume_path, resume_meta, mlf,
                               tracking_uri, vocab, run_callbacks)
    except BaseException as err:
        if mlf:  # not left RUNNING: FAILED, with the reason as a tag
            store.mark_failed(tracking_uri, mlf.run_id, err)
        raise
    finally:
        if locked:
            rundir.release_run_dir(output_dir)


def _fit_and_report(cfg: DictConfig, s: settings.Settings, output_dir: Path, module, datamodule,
                    resume_path: str | None, resume_meta: dict, mlf: MLFlowLogger | None,
                    tracking_uri: str | None, vocab: Vocab, callbacks: list[pl.Callback]) -> dict:
    run_id = mlf.run_id if mlf else None
    csv_logger = EpochCSVLogger(output_dir / "metrics.csv",
                                keep_epochs_below=resume_meta["epoch"] + 1 if resume_path else None)
    trainer = instantiate(cfg.trainer, logger=[csv_logger] + ([mlf] if mlf else []),
                          callbacks=callbacks, default_root_dir=str(output_dir), plugins=[AtomicCheckpointIO()])
    with inputs.system_metrics(tracking_uri, run_id, s.logger.system_metrics):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_path)

    if not trainer.is_global_zero:  # DDP: rank 0 reports
        return {}
    # From the per-epoch file, which holds every epoch even when this process did not train
    # them (ddp_spawn trains in child processes; a resumed run continues earlier epochs).
    history = read_epoch_history(output_dir / "metrics.csv")
    metrics = dict(history[-1]) if history else {}
    metrics["val/ppl"] = min((row["val/ppl"] for row in history), default=math.inf)
    best_path = trainer.checkpoint_callback.best_model_path
    if mlf:
        _finish_mlflow_run(mlf, tracking_uri, best_path, vocab, metrics["val/ppl"], s.logger)
    _print_summary(output_dir, best_path, metrics, run_id, s.logger.experiment_name, tracking_uri,
                   mlf.experiment_id if mlf else None)
    return metrics


def instantiate(node, **kwargs):
    """`hydra.utils.instantiate`, raising the target's own error (which names the config key and
    the fix) rather than Hydra's InstantiationException around it."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        if err.__cause__ is None:
            raise
        raise err.__cause__ from None


def load_encoded(data_dir: Path, data: settings.DataSettings, eval_batch_size: int) -> tuple[Vocab, dict]:
    """The vocabulary and the train/val ids the `vocab` stage wrote, refused with the fix when
    missing, prepared with other `data.*` settings, or too short for one batch."""
    files = [data_dir / name for name in ("vocab.json", "train.npy", "val.npy")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"encoded data missing: {', '.join(missing)}. Prepare it first: "
            "`dvc pull data/raw/*.dvc && dvc repro vocab` (or `dvc exp run -S data=<corpus>` for "
            "another corpus)")
    vocab = Vocab.load(data_dir / "vocab.json")
    check_record(data_dir, data.model_dump())
    if vocab.tokenizer != data.tokenizer:
        raise ValueError(
            f"{data_dir / 'vocab.json'} is a {vocab.tokenizer}-level vocabulary but data.tokenizer="
            f"{data.tokenizer}. Prepare the data for this config through DVC (`dvc exp run -S "
            f"data.tokenizer={data.tokenizer}`) or set data.tokenizer={vocab.tokenizer}")
    splits = {name: load_ids(data_dir / f"{name}.npy") for name in ("train", "val")}
    check_enough_tokens(len(splits["train"]), data.batch_size, data.num_steps, "train split", sampling=data.sampling)
    check_enough_tokens(len(splits["val"]), eval_batch_size, data.num_steps, "val split", sampling="consecutive")
    return vocab, splits


def _callbacks(s: settings.Settings, output_dir: Path, tracking_uri: str | None,
               run_id: str | None, train_text: str = "") -> list[pl.Callback]:
    """The run's callbacks: the best and the last checkpoint, early stopping (when its patience is
    set; 0 is a patience: stop at the first epoch without a better val/ppl), the progress bar,
    and the per-epoch samples in MLflow (their copy rate looks up `train_text`)."""
    checkpoints = str(output_dir / "checkpoints")
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(checkpoints, "best", monitor="val/ppl", mode="min", enable_version_counter=False),
        # last.ckpt after every epoch, what train.resume continues from (ModelCheckpoint's
        # save_last writes it only at epochs that improve).
        ModelCheckpoint(checkpoints, "last", monitor=None, save_top_k=1, enable_version_counter=False)]
    if s.train.early_stopping_patience is not None:
        callbacks.append(EarlyStopping("val/ppl", patience=s.train.early_stopping_patience))
    if s.trainer.enable_progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    if run_id is not None:
        callbacks.append(SamplesCallback(s.data.prefixes, s.train.samples_every_n_epochs, s.generate,
                                         tracking_uri, run_id, train_text))
    return callbacks


def _mlflow_logger(s: settings.Settings, tracking_uri: str, root: Path,
                   resume_run_id: str | None, parent_run_id: str | None) -> MLFlowLogger:
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


def _finish_mlflow_run(mlf: MLFlowLogger, tracking_uri: str, best_path: str, vocab: Vocab,
                       best_val_ppl: float, logger: settings.LoggerSettings) -> None:
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


def check_resumable(path: str, module: LitLanguageModel) -> None:
    """Refuse a checkpoint of another model size or optimizer before training, naming what
    differs (Lightning would fail with a raw `size mismatch` or `KeyError: 'momentum'`)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # The weight average (train.weight_averaging) exists only once averaging has started.
    found = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith("averaged.")}
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith("averaged.")}
    differ = [f"{k}: checkpoint {found.get(k, 'absent')}, config {wanted.get(k, 'absent')}"
              for k in sorted(found.keys() | wanted.keys()) if found.get(k) != wanted.get(k)]
    if differ:
        raise ValueError(f"train.resume={path!r} holds another model than the config builds ("
                         f"{'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}). Resume with the "
                         "run's own model settings (its .hydra/overrides.yaml), or start afresh in another "
                         "directory")
    saved = [set(group) - {"params"} for state in checkpoint.get("optimizer_states", [])
             for group in state.get("param_groups", [])[:1]]
    probe, _ = module.optim.build([torch.zeros(1, requires_grad=True)])  # (1,): only its settings
    made = set(probe.param_groups[0]) - {"params"}
    if saved and (saved[0] ^ made) - {"initial_lr"}:  # initial_lr: added by an lr scheduler
        raise ValueError(f"train.resume={path!r} was trained with another optimizer (its settings "
                         f"{sorted(saved[0])}; optim={type(probe).__name__} has {sorted(made)}). Resume "
                         "with the run's own optim= setting, or start afresh in another directory")


def check_epochs_left(path: str, epoch: int | None, max_epochs: int) -> None:
    """Refuse to resume a checkpoint that has finished more epochs than trainer.max_epochs (Lightning
    would fail inside fit with a MisconfigurationException and a traceback)."""
    finished = None if epoch is None else epoch + 1  # the checkpoint's epoch is 0-based, saved at its end
    if finished is not None and max_epochs != -1 and max_epochs < finished:
        raise ValueError(f"train.resume={path!r} has finished {finished} epochs, more than trainer.max_epochs="
                         f"{max_epochs}: to train on, raise it above {finished}, e.g. trainer.max_epochs="
                         f"{finished + max(max_epochs, 1)}, or start afresh with train.overwrite=true")


def resolve_resume(resume: str | None, output_dir: Path) -> str | None:
    """`null`: start afresh; `auto`: continue from output_dir's last.ckpt if there is one;
    a path: continue from that checkpoint (it must exist)."""
    if not resume:
        return None
    if resume == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"train.resume={resume!r}: no such checkpoint; use 'auto' or "
                                "the path of a last.ckpt")
    return str(resume)


def _print_summary(output_dir: Path, best_path: str, metrics: dict, run_id: str | None,
                   experiment_name: str, tracking_uri: str | None, experiment_id: str | None = None) -> None:
    lines = ["", "lyricist: training finished",
             f"  best val perplexity   {metrics['val/ppl']:.2f}",
             f"  best checkpoint       {best_path}",
             f"  per-epoch metrics     {output_dir / 'metrics.csv'}"]
    if run_id:
        lines.append(f"  MLflow run            {run_id} (experiment {experiment_name!r})")
        lines.append(f"  browse                mlflow ui --backend-store-uri {tracking_uri}, then "
                     f"{store.experiment_url(store.UI_URL, experiment_id)}")
    print("\n".join(lines))


class RunDirGuard(Callback):
    """`hydra.callbacks.run_dir_guard` (conf/config.yaml): refuses bad settings and a run
    directory that holds another run or is in use, before Hydra writes `.hydra/` into it.

    Hydra swallows an exception raised in a callback (a warning, then the run goes on), so a
    refusal here exits the process (SystemExit), with one line as errors.report prints it.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if rundir.is_ddp_child():
            return
        run_dir = _pin(config, "run")
        _refuse_or_continue(lambda: (settings.load(config), _check_dir(config, Path(run_dir)),
                                     rundir.lock_run_dir(run_dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Each job checks its settings and locks its own directory; here only the sweep's
        # directory, whose job folders would be reused (hydra.sweep.dir given twice).
        sweep_dir = Path(_pin(config, "sweep"))
        jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.is_dir() else []
        _refuse_or_continue(lambda: [_check_dir(config, job) for job in jobs])


def _pin(config: DictConfig, mode: str) -> str:
    """hydra.<mode>.dir resolved once and written back, so `${now:...}` cannot name another
    second's folder when Hydra resolves it again to create it."""
    HydraConfig.instance().set_config(config)  # as run_job does first: `${hydra:...}` resolves
    resolved = str(config.hydra[mode].dir)
    with read_write(config.hydra[mode]):
        config.hydra[mode].dir = resolved
    return resolved


def _check_dir(config: DictConfig, run_dir: Path) -> None:
    rundir.check_run_dir(run_dir, bool(OmegaConf.select(config, "train.resume")),
                         OmegaConf.select(config, "train.overwrite", default=False) is True)


def _refuse_or_continue(check) -> None:
    try:
        check()
    except USER_ERRORS as err:
        raise SystemExit(errors.report(err)) from None
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None


def _hydra_job(cfg: DictConfig) -> float:
    try:
        metrics = train(cfg, output_dir=HydraConfig.get().runtime.output_dir,
                        parent_run_id=sweep.parent_run_id_for_current_job())
    except USER_ERRORS as err:
        # A single run: one line and status 2 (SystemExit passes Hydra's traceback printer).
        # A sweep's job fails as a job, so the others run and the sweep callback records it.
        if HydraConfig.get().mode == RunMode.MULTIRUN or errors.full_error():
            raise
        raise SystemExit(errors.report(err)) from None
    return metrics.get("val/ppl", math.inf)  # what an optimising sweeper minimises ({} on DDP rank > 0)


def main() -> None:
    """`python -m lyricist.train [overrides]`: Hydra composes conf/ of the project found from
    the working directory (lyricist.project), never of the folder this package lies in."""
    try:
        conf_dir = project_root() / "conf"
        settings.check_override_keys(sys.argv[1:])
    except (FileNotFoundError, ValueError) as err:
        sys.exit(errors.report(err))
    hydra.main(version_base="1.3", config_path=str(conf_dir), config_name="config")(_hydra_job)()


if __name__ == "__main__":
    main()
