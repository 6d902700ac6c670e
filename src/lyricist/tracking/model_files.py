"""The served model's files, plain data that loads without pickle (docs/mlflow.md): weights[_i].npz
(the state_dict, read with allow_pickle=False), model_arguments[_i].json, vocab.json and decoding.json
(the run's `generate.*`: the requests' defaults); `_i` numbers an ensemble's members."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from lyricist.checkpoint import LoadedModel, _read, load_checkpoint, model_from_config
from lyricist.data.vocab import Vocab
from lyricist.models.ensemble import Ensemble

WEIGHTS, ARGUMENTS, VOCAB, DECODING = "weights", "model_arguments", "vocab", "decoding"


def write_model_files(checkpoints: str | Path | Sequence[str | Path], out_dir: Path) -> dict[str, str]:
    """The files of the checkpoint(s) in `out_dir`, as {artifact name: path}."""
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    loaded = load_checkpoint(paths)  # refuses an ensemble over different vocabularies
    members = list(loaded.model.members) if isinstance(loaded.model, Ensemble) else [loaded.model]
    files = {VOCAB: out_dir / "vocab.json", DECODING: out_dir / "decoding.json"}
    files[VOCAB].write_text(json.dumps(loaded.vocab.to_dict(), ensure_ascii=False), encoding="utf-8")
    files[DECODING].write_text(json.dumps(loaded.meta.get("decoding", {})), encoding="utf-8")  # an ensemble's: default
    for i, (path, model) in enumerate(zip(paths, members)):
        suffix = "" if len(paths) == 1 else f"_{i}"
        files[WEIGHTS + suffix] = out_dir / f"{WEIGHTS}{suffix}.npz"
        # numpy has no bfloat16: such weights are stored as float32 (load_state_dict casts back).
        np.savez(files[WEIGHTS + suffix], **{k: (v.float() if v.dtype == torch.bfloat16 else v).cpu().numpy()
                                             for k, v in model.state_dict().items()})
        files[ARGUMENTS + suffix] = out_dir / f"{ARGUMENTS}{suffix}.json"
        files[ARGUMENTS + suffix].write_text(json.dumps(_read(Path(path), "cpu")["lyricist"]["model_config"]))
    return {name: str(path) for name, path in files.items()}


def read_model_files(files: Mapping[str, str]) -> LoadedModel:
    """The model (in eval mode; an Ensemble for several weights files) and vocabulary of `files`."""
    vocab = Vocab.from_dict(json.loads(Path(files[VOCAB]).read_text(encoding="utf-8")))
    models = []
    for name in sorted((k for k in files if k.startswith(WEIGHTS)), key=lambda k: int(k[len(WEIGHTS) + 1:] or 0)):
        model = model_from_config(json.loads(Path(files[ARGUMENTS + name[len(WEIGHTS):]]).read_text()))
        with np.load(files[name], allow_pickle=False) as arrays:
            model.load_state_dict({key: torch.from_numpy(arrays[key]) for key in arrays.files})
        models.append(model.eval())
    decoding = json.loads(Path(files[DECODING]).read_text()) if DECODING in files else {}  # older models: none
    return LoadedModel(model=models[0] if len(models) == 1 else Ensemble(models).eval(), vocab=vocab,
                       meta={"decoding": decoding} if decoding else {})
