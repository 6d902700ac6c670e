"""Train one model: `train(cfg, output_dir)` builds, fits and reports; `main` is the Hydra entry.

    python -m lyricist.train model=rnn data.sampling=random
    python -m lyricist.train -m model=rnn,lstm data.sampling=random,consecutive

The LightningModule (the model nested in it), the DataModule, the callbacks and the Trainer
come from conf/ through `hydra.utils.instantiate` (conf/config.yaml: `module`, `datamodule`,
`callbacks`, `trainer`). Only this module and the DVC stage scripts see a DictConfig;
everything they call takes plain arguments.
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
from pytorch_lightning.loggers import MLFlowLogger

from lyricist.checkpoint import read_checkpoint_meta
from lyricist.data.batching import check_enough_tokens
from lyricist.data.prepared import check_record
from lyricist.data.vocab import OPTION_DEFAULTS, Vocab, check_options, load_ids
from lyricist.generate import DECODING_RULES
from lyricist import errors, rundir
from lyricist.project import project_root
from lyricist.tracking import serving, store, sweep
from lyricist.training.callbacks import EpochCSVLogger, read_epoch_history
from lyricist.training.module import TrainingDiverged

WIRING = ("module", "datamodule", "callbacks")  # built from the other sections: not logged twice


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _rate(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def _non_negative(value) -> bool:
    return value == 0 and type(value) is int or _count(value)


def _maybe(accepted):
    """`accepted`, or null."""
    return lambda value: value is None or accepted(value)


def _penalty(value) -> bool:
    return _rate(value) or (value == 0 and not isinstance(value, bool))


# Values that would otherwise fail late (after an epoch, or with another key's name in the
# message) or train silently wrong: (key, accepted, what is allowed, an example).
SETTINGS = [(key, _count, "an integer >= 1", example) for key, example in [
    ("data.batch_size", 32), ("data.num_steps", 35), ("model.hidden_size", 256), ("model.num_layers", 1),
    ("train.eval_batch_size", 8), ("train.samples_every_n_epochs", 5)]] + [
    ("trainer.max_epochs", lambda v: _count(v) or v == -1, "an integer >= 1, or -1 (no limit)", 20),
    ("optim.lr", _rate, "a finite number > 0", 0.015),
    ("model.init_scale", _rate, "a finite number > 0", 0.01),
    ("train.divergence_factor", lambda v: v is None or (_rate(v) and v > 1), "null (off) or a number > 1", 3.0),
    ("model.weight_drop", _fraction, "a number in [0, 1) (0: off)", 0.5),
    ("model.embedding_row_dropout", _fraction, "a number in [0, 1) (0: off)", 0.1),
    ("train.ar_alpha", _penalty, "a finite number >= 0 (0: off)", 2.0),
    ("train.tar_beta", _penalty, "a finite number >= 0 (0: off)", 1.0),
    ("train.weight_averaging", lambda v: v in (None, "nt"), "null (off) or nt", "nt"),
    ("train.averaging_patience", lambda v: v == 0 and type(v) is int or _count(v),
     "an integer >= 0 (0: from the first step)", 2),
    ("data.variable_length", lambda v: isinstance(v, bool), "true or false", "true"),
    ("model.dropout", _fraction, "a number in [0, 1)", 0.6),
    ("model.embedding_dropout", _maybe(_fraction), "null (= model.dropout) or a number in [0, 1)", 0.1),
    ("model.output_dropout", _maybe(_fraction), "null (= model.dropout) or a number in [0, 1)", 0.4),
    ("model.embedding_size", _maybe(_count), "null (one-hot input) or an integer >= 1", 128),
    ("train.clip_theta", _maybe(_rate), "null (no clipping) or a finite number > 0", 1.0),
    ("optim.weight_decay", _penalty, "a finite number >= 0", 0.0002),
    ("train.lr_factor", lambda v: _fraction(v) and v > 0, "a number in (0, 1)", 0.5),
    ("train.lr_patience", _non_negative, "an integer >= 0", 0),
    ("train.early_stopping_patience", _maybe(_non_negative), "null (never) or an integer >= 0", 3),
    ("train.overwrite", lambda v: isinstance(v, bool), "true or false", "true"),
    ("logger.serve_max_num_chars", _count, "an integer >= 1", 1000),
    ("logger.serve_max_seconds", _rate, "a finite number of seconds > 0", 30),
] + [(f"generate.{name}", *rule) for name, *rule in DECODING_RULES]  # the samples logged per epoch


def _averaging_starts(cfg: DictConfig) -> bool:
    """Weight averaging waits for averaging_patience epochs without a better val/ppl; early
    stopping after as many (or fewer) would end the run before the average is ever used."""
    patience, waits = cfg.train.early_stopping_patience, cfg.train.averaging_patience
    return cfg.train.weight_averaging is None or patience is None or waits == 0 or waits < patience


# Values that are each fine but not together: (keys, accepted(cfg), what to do).
COMBINATIONS = [
    (("data.variable_length", "data.sampling"),
     lambda cfg: not cfg.data.variable_length or cfg.data.sampling == "consecutive",
     "variable-length batches are consecutive ones: set data.sampling=consecutive or data.variable_length=false"),
    (("train.averaging_patience", "train.early_stopping_patience"), _averaging_starts,
     "weight averaging would start only when early stopping ends the run: use a smaller "
     "train.averaging_patience (e.g. 2) than train.early_stopping_patience, or early_stopping_patience=null"),
]
# What the entry point prints as one line (errors.run_cli): bad input, and a run stopped by
# the divergence guard or an unusable tracking store, whose messages say the fix.
USER_ERRORS = (*errors.USER_ERRORS, TrainingDiverged, store.TrackingError)


def check_settings(cfg: DictConfig) -> None:
    """Refuse a bad value by its key, before any data is read or any output written."""
    for key, accepted, allowed, example in SETTINGS:
        value = OmegaConf.select(cfg, key)
        if not accepted(value):
            raise ValueError(f"{key}={value!r} is not allowed: use {allowed}, e.g. {key}={example}")
    for keys, accepted, fix in COMBINATIONS:
        if not accepted(cfg):
            values = ", ".join(f"{key}={OmegaConf.select(cfg, key)!r}" for key in keys)
            raise ValueError(f"{values} do not go together: {fix}")


def train(cfg: DictConfig, output_dir: str | Path, parent_run_id: str | None = None,
          callbacks: list[pl.Callback] | None = None) -> dict:
    """Train the configured model; write checkpoints/ and metrics.csv under `output_dir`.
    `callbacks`: Lightning callbacks added to conf's (lyricist.tune's pruning callback).

    Returns the final metrics, among them `val/ppl` (the best epoch's), so an optimising
    Hydra sweeper can use it.
    """
    check_settings(cfg)
    output_dir = Path(output_dir)
    overwrite = bool(OmegaConf.select(cfg, "train.overwrite", default=False))
    rundir.check_run_dir(output_dir, bool(cfg.train.resume), overwrite)  # reads only
    root = project_root(cfg.paths.root)
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)

    # Everything that can fail fast does so before the first batch and before any output.
    vocab, splits = load_encoded(root / cfg.paths.encoded, OmegaConf.to_container(cfg.data),
                                 cfg.train.eval_batch_size)
    module = instantiate(cfg.module, model={"vocab_size": len(vocab)}, vocab=vocab, _convert_="all")
    datamodule = instantiate(cfg.datamodule, train_ids=splits["train"], val_ids=splits["val"])
    resume_path = resolve_resume(cfg.train.resume, output_dir)
    resume_meta = read_checkpoint_meta(resume_path) if resume_path else {}
    if resume_path:
        check_resumable(resume_path, module, cfg.optim)
    # Tracking before any output: an unreachable server fails here, not after training.
    tracking_uri = store.resolve_tracking_uri(cfg.logger.tracking_uri, root) if cfg.logger.enabled else None
    mlf = (_mlflow_logger(cfg, tracking_uri, root, resume_meta.get("mlflow_run_id"), parent_run_id)
           if tracking_uri else None)
    run_id = mlf.run_id if mlf else None
    if run_id:
        module.extra_checkpoint["mlflow_run_id"] = run_id
    # Trainer settings that cannot work here (trainer.accelerator=gpu without one, ...) fail
    # now, before train.overwrite removes anything: a probe that writes nothing.
    try:
        instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    except MisconfigurationException as err:
        raise ValueError(f"trainer settings refused ({err}): trainer.accelerator={cfg.trainer.accelerator}, "
                         f"devices={cfg.trainer.devices}; on a machine without a GPU use trainer.accelerator=cpu "
                         "(the default, trainer=default)") from err
    # The first write into output_dir: the lock (a second process is refused here), then, with
    # train.overwrite, the earlier run's files removed.
    locked = rundir.claim_run_dir(output_dir, bool(cfg.train.resume), overwrite)
    try:
        return _fit_and_report(cfg, output_dir, module, datamodule, resume_path, resume_meta, mlf,
                               tracking_uri, vocab, train_text=vocab.decode(splits["train"], unk="\ufffd"),
                               extra_callbacks=callbacks or [])
    except BaseException as err:
        if mlf:  # not left RUNNING: FAILED, with the reason as a tag
            store.mark_failed(tracking_uri, mlf.run_id, err)
        raise
    finally:
        if locked:
            rundir.release_run_dir(output_dir)


def _fit_and_report(cfg: DictConfig, output_dir: Path, module, datamodule, resume_path: str | None,
                    resume_meta: dict, mlf: MLFlowLogger | None, tracking_uri: str | None,
                    vocab: Vocab, train_text: str, extra_callbacks: list[pl.Callback] = ()) -> dict:
    run_id = mlf.run_id if mlf else None
    csv_logger = EpochCSVLogger(output_dir / "metrics.csv",
                                keep_epochs_below=resume_meta["epoch"] + 1 if resume_path else None)
    trainer = instantiate(cfg.trainer, logger=[csv_logger] + ([mlf] if mlf else []),
                          callbacks=_callbacks(cfg, output_dir, tracking_uri, run_id, train_text=train_text)
                          + list(extra_callbacks),
                          default_root_dir=str(output_dir))
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
        _finish_mlflow_run(mlf, tracking_uri, best_path, vocab, metrics["val/ppl"], cfg.logger.log_model,
                           cfg.logger.serve_max_num_chars, cfg.logger.serve_max_seconds)
    _print_summary(output_dir, best_path, metrics, run_id, cfg.logger.experiment_name, tracking_uri)
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


def load_encoded(data_dir: Path, data: dict, eval_batch_size: int) -> tuple[Vocab, dict]:
    """The vocabulary and the train/val ids the `vocab` stage wrote, refused with the fix when
    missing, prepared with other `data.*` settings, or too short for one batch."""
    tokenizer = data.get("tokenizer", OPTION_DEFAULTS["tokenizer"])
    check_options(tokenizer, data.get("max_vocab_size"), data["min_freq"])
    files = [data_dir / name for name in ("vocab.json", "train.npy", "val.npy")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"encoded data missing: {', '.join(missing)}. Prepare it first: "
            "`dvc pull data/raw/*.dvc && dvc repro vocab` (or `dvc exp run -S data=<corpus>` for "
            "another corpus)")
    vocab = Vocab.load(data_dir / "vocab.json")
    check_record(data_dir, data)
    if vocab.tokenizer != tokenizer:
        raise ValueError(
            f"{data_dir / 'vocab.json'} is a {vocab.tokenizer}-level vocabulary but data.tokenizer="
            f"{tokenizer}. Prepare the data for this config through DVC (`dvc exp run -S "
            f"data.tokenizer={tokenizer}`) or set data.tokenizer={vocab.tokenizer}")
    splits = {name: load_ids(data_dir / f"{name}.npy") for name in ("train", "val")}
    check_enough_tokens(len(splits["train"]), data["batch_size"], data["num_steps"],
                        "train split", sampling=data["sampling"])
    check_enough_tokens(len(splits["val"]), eval_batch_size, data["num_steps"],
                        "val split", sampling="consecutive")
    return vocab, splits


def _callbacks(cfg: DictConfig, output_dir: Path, tracking_uri: str | None,
               run_id: str | None, train_text: str = "") -> list[pl.Callback]:
    """conf's `callbacks:` with what exists only at run time (the samples' copy rate looks
    up `train_text`, one character per <unk>); early stopping is off when its patience is null
    (0 is a patience: stop at the first epoch without a better val/ppl)."""
    checkpoints = {"dirpath": str(output_dir / "checkpoints")}
    at_run_time = {"checkpoint": checkpoints, "last_checkpoint": checkpoints,
                   "samples": {"tracking_uri": tracking_uri, "run_id": run_id, "train_text": train_text}}
    left_out = {"early_stopping": cfg.train.early_stopping_patience is None,
                "progress_bar": not cfg.trainer.get("enable_progress_bar", True),
                "samples": run_id is None}
    return [instantiate(node, **at_run_time.get(name, {}))
            for name, node in cfg.callbacks.items() if node is not None and not left_out.get(name)]


def _mlflow_logger(cfg: DictConfig, tracking_uri: str, root: Path, resume_run_id: str | None,
                   parent_run_id: str | None) -> MLFlowLogger:
    """The run's MLflow logger, its store and experiment created first (with retries);
    resuming continues the checkpoint's run instead of opening a new one."""
    store.ensure_experiment(tracking_uri, cfg.logger.experiment_name)
    mlf = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name, tracking_uri=tracking_uri,
        # A name that says what ran (MLflow's random names repeat under a fixed seed).
        run_name=cfg.logger.run_name or (f"{cfg.model.cell} {cfg.data.sampling} "
                                         f"h{cfg.model.hidden_size} {cfg.data.name}"),
        run_id=resume_run_id,
        tags={"git_commit": store.git_commit(root),
              "data_md5": store.raw_data_md5(cfg.data.raw_path, root),
              "corpus": cfg.data.name, "model": cfg.model.cell,
              **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})},
    )
    store.with_retry(lambda: mlf.run_id)  # creates the run
    if resume_run_id is None:  # a resumed run has its params already (MLflow refuses changes)
        settings = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in WIRING}
        mlf.log_hyperparams(store.flatten(settings))
    return mlf


def _finish_mlflow_run(mlf: MLFlowLogger, tracking_uri: str, best_path: str, vocab: Vocab,
                       best_val_ppl: float, log_model: bool, serve_max_num_chars: int,
                       serve_max_seconds: float) -> None:
    client, run_id = mlf.experiment, mlf.run_id
    store.with_retry(lambda: client.log_metric(run_id, "best/val_ppl", best_val_ppl))
    store.with_retry(lambda: client.log_artifact(run_id, best_path, "checkpoints"))
    vocab_json = json.dumps(vocab.to_dict(), ensure_ascii=False, indent=1)
    store.with_retry(lambda: client.log_text(run_id, vocab_json, "vocab.json"))
    if log_model:
        serving.log_pyfunc_model(tracking_uri, run_id, best_path, max_num_chars=serve_max_num_chars,
                                 max_seconds=serve_max_seconds)
    mlf.finalize("success")


def check_resumable(path: str, module: pl.LightningModule, optim: DictConfig) -> None:
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
    probe = hydra_instantiate(optim)([torch.zeros(1, requires_grad=True)])  # (1,): only its settings
    made = set(probe.param_groups[0]) - {"params"}
    if saved and (saved[0] ^ made) - {"initial_lr"}:  # initial_lr: added by an lr scheduler
        raise ValueError(f"train.resume={path!r} was trained with another optimizer (its settings "
                         f"{sorted(saved[0])}; optim={type(probe).__name__} has {sorted(made)}). Resume "
                         "with the run's own optim= setting, or start afresh in another directory")


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
                   experiment_name: str, tracking_uri: str | None) -> None:
    lines = ["", "lyricist: training finished",
             f"  best val perplexity   {metrics['val/ppl']:.2f}",
             f"  best checkpoint       {best_path}",
             f"  per-epoch metrics     {output_dir / 'metrics.csv'}"]
    if run_id:
        lines.append(f"  MLflow run            {run_id} (experiment {experiment_name!r})")
        lines.append(f"  browse                mlflow ui --backend-store-uri {tracking_uri}")
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
        _refuse_or_continue(lambda: (check_settings(config), _check_dir(config, Path(run_dir)),
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
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    hydra.main(version_base="1.3", config_path=str(conf_dir), config_name="config")(_hydra_job)()


if __name__ == "__main__":
    main()
