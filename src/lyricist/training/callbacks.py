"""Lightning pieces that record a run: lyrics samples to MLflow, a CSV row per epoch, checkpoints written whole."""

from __future__ import annotations

import csv
import errno
import io
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_only

from lyricist.data.corpus import atomic_write_bytes
from lyricist.errors import NoSpace
from lyricist.evaluation.lyrics import NgramSet, lyric_metrics
from lyricist.decoding import generate
from lyricist.settings import Decoding
from lyricist.training.module import EPOCH_METRICS
from lyricist.tracking.store import with_retry


class SamplesCallback(pl.Callback):
    """Every N epochs (and at the last), lyrics for the prefixes (`generate.*`, a seed each) to MLflow as
    samples/epoch_XXX.txt, their metrics (copy rate: against `train_text`) at its step; plain values: DDP spawns it."""

    def __init__(self, prefixes: Sequence[str], every_n_epochs: int, decoding: Decoding,
                 tracking_uri: str, run_id: str, train_text: str = ""):
        self.prefixes, self.every_n_epochs, self.decoding = list(prefixes), every_n_epochs, decoding
        self.tracking_uri, self.run_id, self.train_text = tracking_uri, run_id, train_text
        self._reference: NgramSet | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1  # 1-based, as people count epochs
        last = epoch == trainer.max_epochs or trainer.should_stop
        if not trainer.is_global_zero or (epoch % self.every_n_epochs and not last):
            return
        # eval_model: the averaged weights once weight averaging has started, as the checkpoints hold
        texts = [generate(pl_module.eval_model, pl_module.vocab, prefix, self.decoding, index=i, allow_unknown=True)
                 for i, prefix in enumerate(self.prefixes)]
        if self._reference is None:
            self._reference = NgramSet(self.train_text)
        metrics = lyric_metrics(texts, self._reference).as_flat_dict("samples/")
        now, client = int(time.time() * 1000), MlflowClient(self.tracking_uri)
        rows = [Metric(name, value, now, trainer.current_epoch) for name, value in metrics.items()]
        with_retry(lambda: client.log_text(self.run_id, "\n\n".join(texts) + "\n", f"samples/epoch_{epoch:03d}.txt"))
        with_retry(lambda: client.log_batch(self.run_id, rows))


class EpochCSVLogger(Logger):
    """One CSV row per epoch, appended at once, for `dvc plots`: unlike Lightning's CSVLogger (it buffers, deletes
    the file), a killed run keeps its epochs, a resumed one continues (`keep_epochs_below=k`: epochs < k kept)."""

    name, version = "epoch_csv", ""  # Logger's abstract properties, constant here

    def __init__(self, path: str | Path, keep_epochs_below: int | None = None):
        super().__init__()
        self.path = Path(path)
        self._start_file(keep_epochs_below)

    @rank_zero_only  # under DDP the other processes run this constructor too
    def _start_file(self, keep_epochs_below: int | None) -> None:
        rows = []
        if keep_epochs_below is not None and self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < keep_epochs_below]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=EPOCH_METRICS)
            writer.writeheader()
            writer.writerows(rows)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # the config goes to MLflow; this file holds the curves only

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=EPOCH_METRICS, extrasaction="ignore").writerow(dict(metrics))


def read_epoch_history(path: str | Path) -> list[dict[str, float]]:
    """The rows EpochCSVLogger wrote, as numbers."""
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Each checkpoint written atomically (`atomic_write_bytes`): a full disk or a kill leaves the previous one
    whole (Lightning's own, written in /tmp and copied across filesystems, left best.ckpt truncated)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        data = io.BytesIO()
        torch.save(checkpoint, data)
        try:
            atomic_write_bytes(path, data.getbuffer())
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            need, free = data.getbuffer().nbytes, shutil.disk_usage(path.parent).free
            raise NoSpace(f"no space left in {path.parent} to write {path.name}: it needs {need / 2**20:.2f} MiB, "
                          f"{free / 2**20:.2f} MiB are free (the previous {path.name} is kept). Make room there, "
                          "then continue the run with train.resume=auto") from None
