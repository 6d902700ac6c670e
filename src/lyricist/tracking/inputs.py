"""What a training run records besides its curves (docs/mlflow.md): the corpus as its dataset input,
the md5 of the files it read (`encoded_md5`: the registry's identity of the data, as data.raw_path
may not be what paths.encoded was made from), and MLflow's system metrics while it trains."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from lyricist.data.corpus import SPLITS
from lyricist.tracking import store

READ = ("vocab.json", "train.npy", "val.npy")  # what a training run reads of paths.encoded
ENCODED_TAG = "encoded_md5"


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
    """The corpus as the run's training dataset (digest: its data_md5 tag), and its encoded_md5 tag."""
    client = MlflowClient(tracking_uri)
    store.with_retry(lambda: client.set_tag(run_id, ENCODED_TAG, encoded_md5(encoded_dir)))
    digest = store.with_retry(lambda: client.get_run(run_id)).data.tags.get("data_md5", "unknown")
    # Known by its name, digest and source (MLflow does not read it), with a profile.
    source = LocalArtifactDatasetSource(str(raw_path.resolve()))
    corpus = Dataset(name, digest, source._get_source_type(), source.to_json(),
                     profile=json.dumps(corpus_profile(encoded_dir)))
    entry = DatasetInput(corpus, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "training")])
    # Logged once (MLflow dedups a resumed run's); parallel jobs clash on the dataset row: the loser's retry finds it.
    store.with_retry(lambda: client.log_inputs(run_id, datasets=[entry]), retry_on=("locked", "unique constraint failed"))


@contextlib.contextmanager
def system_metrics(tracking_uri: str, run_id: str | None, enabled: bool) -> Iterator[None]:
    """MLflow's system metrics sampler on the run (rank 0's: a DDP child has no run_id) while the block runs."""
    if not (enabled and run_id):
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
