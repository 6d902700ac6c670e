"""One way to load a trained model: `load_checkpoint(path) -> LoadedModel`.

A checkpoint is Lightning's file (state_dict, optimizer, loops) plus, under the key
"lyricist", what is needed to rebuild the model without the training code: the
model's constructor arguments and the vocabulary (see LitLanguageModel.on_save_checkpoint).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lyricist.models import RecurrentLM
from lyricist.data.vocab import Vocab

MODEL_PREFIX = "model."  # LitLanguageModel holds the RecurrentLM as `self.model`


@dataclass
class LoadedModel:
    model: RecurrentLM
    vocab: Vocab
    meta: dict = field(default_factory=dict)  # e.g. mlflow_run_id, epoch


def _read(path: Path, map_location) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train first (`dvc repro train` or "
                                "`python -m lyricist.train`), or point to an existing .ckpt")
    try:
        # Our own files: tensors, plain dicts and numbers, so weights_only loading works.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a torch file ({err}); "
                         "re-train or restore it") from err
    if not isinstance(checkpoint, dict) or "lyricist" not in checkpoint:
        raise ValueError(f"{path} is not a lyricist checkpoint (no 'lyricist' entry with "
                         "the model arguments and vocabulary)")
    return checkpoint


def read_checkpoint_meta(path: str | Path) -> dict:
    """What a checkpoint says about its run (mlflow_run_id, epoch), without building the model."""
    checkpoint = _read(Path(path), "cpu")
    meta = {k: v for k, v in checkpoint["lyricist"].items() if k not in ("model_config", "vocab")}
    return {**meta, "epoch": checkpoint.get("epoch")}


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    checkpoint = _read(Path(path), map_location)
    extra = dict(checkpoint["lyricist"])
    model = RecurrentLM(**extra.pop("model_config"))
    vocab = Vocab.from_dict(extra.pop("vocab"))
    model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items()
                           if k.startswith(MODEL_PREFIX)})
    model.eval()
    extra["epoch"] = checkpoint.get("epoch")
    return LoadedModel(model=model.to(map_location), vocab=vocab, meta=extra)
