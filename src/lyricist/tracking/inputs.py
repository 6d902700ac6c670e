"""What a training run records besides its curves: the corpus it read, and the machine it ran on.

- The corpus as the run's dataset input (context "training"): its name (data.name), digest (the
  hash DVC recorded for the raw corpus, the run's `data_md5` tag), source (the raw corpus's path)
  and, as its profile, the split sizes in tokens and the vocabulary: the UI's Datasets column
  tells runs on different data apart. The tag `encoded_md5` is the hash of what the run read
  (vocab.json, train.npy, val.npy): the registry's identity of the data (data.raw_path may not be
  what paths.encoded was made from).
- MLflow's system metrics sampler (system/cpu_utilization_percentage, system/system_memory_usage_megabytes,
  disk, network; GPU utilisation and memory where an NVIDIA GPU and nvidia-ml-py are there) every
  10 s while the model trains ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it); off with
  logger.system_metrics=false.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from lyricist import rundir
from lyricist.tracking import store

SPLITS = ("train", "val", "test")
READ = ("vocab.json", "train.npy", "val.npy")  # what a training run reads of paths.encoded
ENCODED_TAG = "encoded_md5"


class Corpus(MetaDataset):
    """A dataset known by its name, digest and source (MLflow does not read it), with a profile."""

    def __init__(self, source: str, name: str, digest: str, profile: Mapping[str, int | str]) -> None:
        super().__init__(LocalArtifactDatasetSource(source), name=name, digest=digest)
        self._profile = dict(profile)

    @property
    def profile(self) -> dict[str, int | str]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def corpus_profile(encoded_dir: Path) -> dict[str, int | str]:
    """Tokens per split (0 for a split that is not there) and the vocabulary, from the vocab stage's files."""
    vocab = json.loads((encoded_dir / "vocab.json").read_text(encoding="utf-8"))
    sizes = {f"{split}_tokens": int(np.load(encoded_dir / f"{split}.npy", mmap_mode="r").shape[0])
             if (encoded_dir / f"{split}.npy").is_file() else 0 for split in SPLITS}
    return {**sizes, "vocab_size": len(vocab["itos"]), "tokenizer": vocab.get("tokenizer", "char")}


def encoded_md5(encoded_dir: Path) -> str:
    """One md5 over the files a run reads (READ), in order."""
    digest = hashlib.md5()
    for name in READ:
        with open(encoded_dir / name, "rb") as f:
            digest.update(hashlib.file_digest(f, "md5").digest())
    return digest.hexdigest()


def log_corpus(tracking_uri: str, run_id: str, name: str, raw_path: Path, encoded_dir: Path) -> None:
    """The corpus as the run's training dataset (its digest the run's data_md5 tag); the hash of
    the files read as the run's encoded_md5 tag."""
    client = MlflowClient(tracking_uri)
    store.with_retry(lambda: client.set_tag(run_id, ENCODED_TAG, encoded_md5(encoded_dir)))
    digest = store.with_retry(lambda: client.get_run(run_id)).data.tags.get("data_md5", "unknown")
    corpus = Corpus(str(raw_path.resolve()), name, digest, corpus_profile(encoded_dir))
    entry = DatasetInput(corpus._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
    # Logged once (MLflow dedups a resumed run's). Parallel sweep jobs insert the same dataset row at
    # once: the loser's retry finds the row made.
    store.with_retry(lambda: client.log_inputs(run_id, datasets=[entry]), retry_on=("locked", "unique constraint failed"))


@contextlib.contextmanager
def system_metrics(tracking_uri: str, run_id: str | None, enabled: bool) -> Iterator[None]:
    """MLflow's system metrics sampler on the run while the block runs."""
    if not (enabled and run_id) or rundir.is_ddp_child():  # one sampler a run: DDP's rank 0
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Its INFO lines say only that it started, skipped the GPU (none here) and stopped.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    monitor = SystemMetricsMonitor(run_id, tracking_uri=tracking_uri, resume_logging=True)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
