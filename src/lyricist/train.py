"""Train one model: `train(cfg, output_dir)` is the work, `main` is the Hydra entry.

    python -m lyricist.train model=rnn data.sampling=random
    python -m lyricist.train -m model=rnn,lstm data.sampling=random,consecutive

Only this module (and the DVC stage scripts) see a DictConfig; everything it calls
takes plain arguments.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import MLFlowLogger

from lyricist.tracking import serving, store as tracking, sweep
from lyricist.data.batching import check_enough_tokens
from lyricist.training.callbacks import EpochCSVLogger, SamplesCallback, read_epoch_history
from lyricist.checkpoint import read_checkpoint_meta
from lyricist.training.module import LitLanguageModel, LyricsDataModule
from lyricist.data.vocab import OPTION_DEFAULTS, Vocab, check_options, load_ids

CONF_DIR = str(tracking.PROJECT_ROOT / "conf")


def encoded_dir(corpus_name: str, root: Path = tracking.PROJECT_ROOT) -> Path:
    """Where the `vocab` DVC stage writes vocab.json and the {train,val,test}.npy id arrays."""
    return root / "data" / "encoded" / corpus_name


def check_prepared_with(data_dir: Path, data_cfg: DictConfig) -> None:
    """Refuse encoded data made with other preprocessing settings than this run's config
    (e.g. a preset's `data.max_chars=20000` over data prepared from the full corpus)."""
    record = data_dir / "prepared_with.json"
    if not record.is_file():
        return
    # A vocabulary option missing from the record was its default (the vocab stage writes
    # only options that differ from it; older records predate the options).
    prepared = {**OPTION_DEFAULTS, **json.loads(record.read_text(encoding="utf-8"))}
    def asked(key: str):
        return data_cfg.get(key, OPTION_DEFAULTS.get(key))

    differ = {k: (v, asked(k)) for k, v in prepared.items() if asked(k) != v}
    if differ:
        listed = ", ".join(f"data.{k}: prepared {a!r}, asked {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"{data_dir} was prepared with other settings ({listed}). Prepare the data for "
            "this config through DVC: `dvc exp run -S <the same overrides>` (or `dvc repro` "
            "after changing conf/ and `make params`)")


def load_encoded(data_dir: Path) -> tuple[Vocab, dict]:
    files = [data_dir / name for name in ("vocab.json", "train.npy", "val.npy")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"encoded data missing: {', '.join(missing)}. Prepare it first: "
            "`dvc pull && dvc repro vocab` (or `dvc exp run -S data=<corpus>` for another corpus)"
        )
    splits = {name: load_ids(data_dir / f"{name}.npy") for name in ("train", "val")}
    return Vocab.load(data_dir / "vocab.json"), splits


def train(cfg: DictConfig, output_dir: str | Path, data_dir: str | Path | None = None,
          parent_run_id: str | None = None) -> dict:
    """Train the configured model; write checkpoints and metrics.csv under `output_dir`.

    Returns the final metrics, among them `val/ppl` (the best epoch's), so an optimising
    Hydra sweeper can use it.
    """
    output_dir = Path(output_dir)
    data_cfg, train_cfg = cfg.data, cfg.train
    pl.seed_everything(train_cfg.seed, workers=True, verbose=False)

    # Everything that can fail fast does so before the first batch.
    data_dir = Path(data_dir) if data_dir else encoded_dir(data_cfg.name)
    tokenizer = data_cfg.get("tokenizer", OPTION_DEFAULTS["tokenizer"])
    check_options(tokenizer, data_cfg.get("max_vocab_size"), data_cfg.min_freq)
    vocab, splits = load_encoded(data_dir)
    check_prepared_with(data_dir, data_cfg)
    if vocab.tokenizer != tokenizer:
        raise ValueError(
            f"{data_dir / 'vocab.json'} is a {vocab.tokenizer}-level vocabulary but data.tokenizer="
            f"{tokenizer}. Prepare the data for this config through DVC (`dvc exp run -S "
            f"data.tokenizer={tokenizer}`) or set data.tokenizer={vocab.tokenizer}")
    check_enough_tokens(len(splits["train"]), data_cfg.batch_size, data_cfg.num_steps,
                        "train split", sampling=data_cfg.sampling)
    check_enough_tokens(len(splits["val"]), train_cfg.eval_batch_size, data_cfg.num_steps,
                        "val split", sampling="consecutive")
    model = instantiate(cfg.model, vocab_size=len(vocab), _convert_="all")
    lit = LitLanguageModel(model, vocab, optimizer=instantiate(cfg.optim),
                           clip_theta=train_cfg.clip_theta, sampling=data_cfg.sampling,
                           divergence_factor=train_cfg.divergence_factor, seed=train_cfg.seed,
                           loss_reduction=train_cfg.loss_reduction,
                           lr_schedule=train_cfg.lr_schedule, lr_factor=train_cfg.lr_factor,
                           lr_patience=train_cfg.lr_patience)
    datamodule = LyricsDataModule(splits["train"], splits["val"], data_cfg.batch_size,
                                  data_cfg.num_steps, data_cfg.sampling,
                                  train_cfg.eval_batch_size, train_cfg.seed)

    resume_path = resolve_resume(train_cfg.resume, output_dir)
    resume_meta = read_checkpoint_meta(resume_path) if resume_path else {}
    # Tracking before any output: an unreachable server fails here, not after training.
    mlf = (_mlflow_logger(cfg, resume_meta.get("mlflow_run_id"), parent_run_id)
           if cfg.logger.enabled else None)

    loggers: list = [EpochCSVLogger(
        output_dir / "metrics.csv", keep_epochs_below=resume_meta["epoch"] + 1 if resume_path else None)]
    checkpoint_cb = ModelCheckpoint(dirpath=output_dir / "checkpoints", filename="best",
                                    monitor="val/ppl", mode="min", save_last=True,
                                    enable_version_counter=False)
    callbacks: list = [checkpoint_cb]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    if train_cfg.early_stopping_patience:
        callbacks.append(EarlyStopping("val/ppl", patience=train_cfg.early_stopping_patience))
    run_id = None
    if mlf is not None:
        run_id = mlf.run_id
        lit.extra_checkpoint["mlflow_run_id"] = run_id
        loggers.append(mlf)
        callbacks.append(SamplesCallback(
            data_cfg.prefixes, train_cfg.samples_every_n_epochs, cfg.generate.num_chars,
            tracking.resolve_tracking_uri(cfg.logger.tracking_uri), run_id))

    trainer = instantiate(cfg.trainer, logger=loggers, callbacks=callbacks,
                          default_root_dir=str(output_dir))
    trainer.fit(lit, datamodule=datamodule, ckpt_path=resume_path)

    if not trainer.is_global_zero:  # DDP: rank 0 reports
        return {}
    # From the per-epoch file, which holds every epoch even when this process did not train
    # them (ddp_spawn trains in child processes; a resumed run continues earlier epochs).
    history = read_epoch_history(output_dir / "metrics.csv")
    metrics = dict(history[-1]) if history else {}
    metrics["val/ppl"] = min((row["val/ppl"] for row in history), default=math.inf)
    if run_id is not None:
        client = mlf.experiment
        tracking.with_retry(lambda: client.log_metric(run_id, "best/val_ppl", metrics["val/ppl"]))
        tracking.with_retry(lambda: client.log_artifact(run_id, checkpoint_cb.best_model_path, "checkpoints"))
        tracking.with_retry(lambda: client.log_text(run_id, vocab_json(vocab), "vocab.json"))
        if cfg.logger.log_model:
            serving.log_pyfunc_model(tracking.resolve_tracking_uri(cfg.logger.tracking_uri),
                                     run_id, checkpoint_cb.best_model_path)
        mlf.finalize("success")
    _print_summary(output_dir, checkpoint_cb.best_model_path, metrics, run_id, cfg)
    return metrics


def _mlflow_logger(cfg: DictConfig, resume_run_id: str | None,
                   parent_run_id: str | None) -> MLFlowLogger:
    """The run's MLflow logger, its store and experiment created first (with retries);
    resuming continues the checkpoint's run instead of opening a new one."""
    uri = tracking.resolve_tracking_uri(cfg.logger.tracking_uri)
    tracking.ensure_experiment(uri, cfg.logger.experiment_name)
    mlf = MLFlowLogger(
        experiment_name=cfg.logger.experiment_name, tracking_uri=uri,
        # A name that says what ran (MLflow's random names repeat under a fixed seed).
        run_name=cfg.logger.run_name or (f"{cfg.model.cell} {cfg.data.sampling} "
                                         f"h{cfg.model.hidden_size} {cfg.data.name}"),
        run_id=resume_run_id,
        tags={"git_commit": tracking.git_commit(),
              "data_md5": tracking.raw_data_md5(cfg.data.raw_path),
              "corpus": cfg.data.name, "model": cfg.model.cell,
              **({"mlflow.parentRunId": parent_run_id} if parent_run_id else {})},
    )
    tracking.with_retry(lambda: mlf.run_id)  # creates the run
    if resume_run_id is None:  # a resumed run has its params already (MLflow refuses changes)
        mlf.log_hyperparams(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
    return mlf


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


def vocab_json(vocab: Vocab) -> str:
    return json.dumps(vocab.to_dict(), ensure_ascii=False, indent=1)


def _print_summary(output_dir: Path, best_path: str, metrics: dict, run_id, cfg) -> None:
    lines = [
        "", "lyricist: training finished",
        f"  best val perplexity   {metrics['val/ppl']:.2f}",
        f"  best checkpoint       {best_path}",
        f"  per-epoch metrics     {output_dir / 'metrics.csv'}",
    ]
    if run_id:
        lines.append(f"  MLflow run            {run_id} (experiment {cfg.logger.experiment_name!r})")
        lines.append(f"  browse                mlflow ui --backend-store-uri "
                     f"{tracking.resolve_tracking_uri(cfg.logger.tracking_uri)}")
    print("\n".join(lines))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float:
    metrics = train(cfg, output_dir=HydraConfig.get().runtime.output_dir,
                    data_dir=cfg.data.encoded_dir,
                    parent_run_id=sweep.parent_run_id_for_current_job())
    return metrics["val/ppl"]  # what an optimising sweeper minimises


if __name__ == "__main__":
    main()
