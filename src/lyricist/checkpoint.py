"""One way to load a trained model: `load_checkpoint(path) -> LoadedModel`; several paths load their
ensemble. A checkpoint is Lightning's file plus, under "lyricist", what rebuilds the model without
the training code: its constructor arguments and vocabulary (LitLanguageModel.on_save_checkpoint)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lyricist.models import RecurrentLM
from lyricist.models.ensemble import Ensemble
from lyricist.data.vocab import Vocab
from lyricist.settings import Decoding, ModelSettings

MODEL_PREFIX = "model."  # LitLanguageModel holds the RecurrentLM as `self.model`


@dataclass
class LoadedModel:
    model: RecurrentLM | Ensemble
    vocab: Vocab
    meta: dict = field(default_factory=dict)  # e.g. mlflow_run_id, epoch, decoding

    @property
    def decoding(self) -> Decoding:
        """The decoding its run used (`generate.*`); the plain one (greedy) for older checkpoints and ensembles."""
        return Decoding(**self.meta["decoding"]) if "decoding" in self.meta else Decoding()


def _read(path: Path, map_location) -> dict:
    if path.is_dir():
        found = ", ".join(sorted(p.name for p in path.glob("*.ckpt"))) or "no .ckpt file"
        raise IsADirectoryError(f"checkpoint {path} is a folder ({found} in it): give the .ckpt file itself, "
                                f"e.g. {path / 'best.ckpt'}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: train first (`dvc repro train` or "
                                "`python -m lyricist.train`), or point to an existing .ckpt")
    try:
        # Our own files: tensors, plain dicts and numbers, so weights_only loading works.
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    # A truncated file (a copy cut short, a full disk) fails inside torch's zip reader as OSError.
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a torch file ({err}); "
                         "re-train or restore it") from err
    if not isinstance(checkpoint, dict) or "lyricist" not in checkpoint:
        raise ValueError(f"{path} is not a lyricist checkpoint (no 'lyricist' entry with "
                         "the model arguments and vocabulary)")
    return checkpoint


def read_checkpoint_meta(path: str | Path) -> dict:
    """What a checkpoint says about its run (mlflow_run_id, epoch), without building the model."""
    checkpoint = _read(Path(path), "cpu")
    return {**{k: v for k, v in checkpoint["lyricist"].items() if k not in ("model_config", "vocab")},
            "epoch": checkpoint.get("epoch")}


def model_from_config(model_config: dict) -> RecurrentLM:
    """The (untrained) RecurrentLM a checkpoint's `model_config` describes: its ModelSettings and vocab_size."""
    config = dict(model_config)
    vocab_size = config.pop("vocab_size")
    return RecurrentLM(ModelSettings(**config), vocab_size)


def load_checkpoint(path: str | Path | Sequence[str | Path],
                    map_location: str | torch.device = "cpu") -> LoadedModel:
    """The model (in eval mode), its vocabulary and its run's facts; for a list of two or more
    paths, their Ensemble, refused unless all share one vocabulary (meta: "members", each's)."""
    if not isinstance(path, (str, Path)):
        paths = list(path)
        if len(paths) == 1:
            return load_checkpoint(paths[0], map_location)
        loaded = [load_checkpoint(p, map_location) for p in paths]
        for p, other in zip(paths[1:], loaded[1:]):
            refuse_other_vocab(other.vocab, loaded[0].vocab, f"{p} was trained with another vocabulary than {paths[0]}",
                               "an ensemble averages predictions over one vocabulary; train its models on the same data")
        return LoadedModel(model=Ensemble([m.model for m in loaded]).eval(), vocab=loaded[0].vocab,
                           meta={"epoch": None, "members": [m.meta for m in loaded]})
    checkpoint = _read(Path(path), map_location)
    extra = dict(checkpoint["lyricist"])
    model = model_from_config(extra.pop("model_config"))
    vocab = Vocab.from_dict(extra.pop("vocab"))
    model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in checkpoint["state_dict"].items()
                           if k.startswith(MODEL_PREFIX)})
    return LoadedModel(model=model.eval().to(map_location), vocab=vocab, meta={**extra, "epoch": checkpoint.get("epoch")})


def refuse_other_vocab(mine: Vocab, other: Vocab, what: str, why: str) -> None:
    """Unless `mine` is `other`: ValueError "<what> (their kinds, sizes and first differing id): <why>"."""
    if mine == other:
        return
    first = next((i for i, (a, b) in enumerate(zip(mine.itos, other.itos)) if a != b), None)
    where = (f"; id {first} is {mine.itos[first]!r} in the first, {other.itos[first]!r} in the second"
             if first is not None else "")
    raise ValueError(f"{what} ({len(mine):,} {mine.tokenizer} tokens against {len(other):,} {other.tokenizer} "
                     f"tokens{where}): {why}")


def check_same_vocab(loaded: LoadedModel, checkpoint, data_dir: str | Path) -> None:
    """Refuse a model whose vocabulary is not `data_dir`'s vocab.json (when there is one): its ids
    would mean other tokens there, and every perplexity and sample would be meaningless."""
    path = Path(data_dir) / "vocab.json"
    if path.is_file():
        names = checkpoint if isinstance(checkpoint, (str, Path)) else ", ".join(map(str, checkpoint))
        refuse_other_vocab(loaded.vocab, Vocab.load(path), f"checkpoint {names} was trained with another vocabulary "
                           f"than {path}", "its ids mean other tokens in this data. Use the data it was trained on "
                           "(its data/encoded/<corpus>/), or train on this data first")
