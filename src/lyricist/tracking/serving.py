"""The trained language model as an MLflow pyfunc model (docs/mlflow.md): logged from code (pyfunc_model.py) with
plain files, so nothing is unpickled; each request row checked as lyricist-generate's (400).

    mlflow models serve -m runs:/<run id>/model -p 5001 --env-manager local
"""

from __future__ import annotations

import ast
import difflib
import importlib.metadata
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc.context import get_prediction_context
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, REQUEST_LIMIT_EXCEEDED
from mlflow.types import ColSpec, DataType, Schema

import lyricist
from lyricist import settings
from lyricist.checkpoint import LoadedModel, _read, load_checkpoint, model_from_config
from lyricist.data.vocab import Vocab
from lyricist.decoding import encode_prefix, generate
from lyricist.models.ensemble import Ensemble
from lyricist.settings import Decoding, LoggerSettings
from lyricist.tracking import store

# What the served model needs, pinned as lyricist itself pins it (pyproject.toml, the one place).
SERVING_PACKAGES = ("torch", "numpy", "pandas", "pytorch-lightning")

# Every decoding option is a request column (top_k 0, top_p 1 and no_repeat_ngram 0 mean "off").
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prefix"), *(ColSpec(
        "string" if name == "strategy" else "double" if "float" in str(info.annotation) else "long", name,
        required=False) for name, info in Decoding.model_fields.items()),
        ColSpec("boolean", "allow_unknown", required=False)]),
    outputs=Schema([ColSpec("string", "lyrics")]),
)
# The most tokens one row may ask for (logger.serve_max_num_chars; this for models logged before
# it existed): generation runs to the end even when the client has gone, so a request is bounded.
MAX_NUM_CHARS = 1000
CLI_MAX_NUM_CHARS = next(m.le for m in Decoding.model_fields["num_chars"].metadata if hasattr(m, "le"))
MAX_SECONDS = 30.0  # a request's time limit (logger.serve_max_seconds; this for models logged before it)


class RequestError(MlflowException):
    """A bad field in a request: the scoring server answers 400 with this message."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(f"row {row}: {message}", error_code=INVALID_PARAMETER_VALUE)


FIELDS = SIGNATURE.inputs.input_names()
_INTEGERS = {column.name for column in SIGNATURE.inputs.inputs if column.type == DataType.long}
UNKNOWN = "lyricist_unknown_fields"  # set on MLflow's prediction context by UnknownFields


class UnknownFields(logging.Filter):
    """MLflow drops the request columns its signature lacks, saying so only in a warning (mlflow.models.utils,
    3.17 pinned): this keeps their names on the request's prediction context, for predict() to refuse."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = re.search(r"not defined in the model signature: `(\[.*\])`", record.getMessage())
        if found is None or get_prediction_context() is None:
            return True
        setattr(get_prediction_context(), UNKNOWN, ast.literal_eval(found.group(1)))
        return False  # answered as a 400 instead


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(key: str, value: Any) -> Any:
    """A request field as Decoding takes it: the signature's "off" values null, a long column's floats (a gap) ints."""
    if key in ("top_k", "no_repeat_ngram") and value == 0 or key == "top_p" and value == 1:
        return None
    if isinstance(value, float) and value.is_integer() and key in _INTEGERS:
        return int(value)
    return value.item() if hasattr(value, "item") else value  # numpy scalars -> Python


def request_options(table: pd.DataFrame, max_num_chars: int, base: Decoding,
                    unknown: list[str] = ()) -> list[tuple[str, Decoding]]:
    """Each row's prefix and decoding, a field left out taking `base`'s (the run's `generate.*`); a bad one
    refused by row and field, an unknown one (`unknown`: those MLflow dropped) naming the known ones.
    NaN is a field some rows leave out; a column NaN in every row was sent as null and is refused."""
    if unknown := sorted({*unknown, *(c for c in table.columns if c not in FIELDS)}):
        near = [f"{name} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(name, FIELDS, n=1))
                else name for name in unknown]
        raise MlflowException(f"unknown request field{'s' * (len(unknown) > 1)} {', '.join(near)}: a row takes "
                              f"{', '.join(FIELDS)}", error_code=INVALID_PARAMETER_VALUE)
    sent_missing = {c for c in table.columns if c != "prefix" and table[c].map(_missing).all()}
    rows = []
    for number, row in enumerate(table.to_dict("records")):
        prefix = row.get("prefix")
        if not isinstance(prefix, str) or not prefix:
            shown = "null" if _missing(prefix) else repr(prefix)  # as the client sent it (JSON)
            raise RequestError(number, f"prefix: {shown} is not allowed: use a non-empty string, e.g. \"分开\"")
        for key in sent_missing & set(Decoding.model_fields):
            raise RequestError(number, f"{key}: null is not allowed: leave the field out for the model's default")
        given = {k: _plain(k, v) for k, v in row.items() if k in Decoding.model_fields and not _missing(v)}
        try:
            decoding = settings.section(Decoding, {**base.model_dump(), **given})
        except ValueError as err:
            raise RequestError(number, str(err)) from None
        if decoding.num_chars > max_num_chars:  # worded as the schema's own bound (lyricist-generate's)
            raise RequestError(number, f"num_chars={decoding.num_chars} is not allowed: use at most {max_num_chars} "
                                       f"({Decoding.model_fields['num_chars'].description}; this served model's "
                                       f"cap, logger.serve_max_num_chars; lyricist-generate's is {CLI_MAX_NUM_CHARS})")
        rows.append((prefix, decoding))
    return rows


INPUT_EXAMPLE = pd.DataFrame({"prefix": ["分开", "战争中部队"], "num_chars": [20, 20],
                              "strategy": ["greedy", "sample"], "temperature": [1.0, 0.8],
                              "top_k": [0, 10], "seed": [0, 1]})


# The logged model's files, plain data, no pickle (docs/mlflow.md): weights[_i].npz, model_arguments[_i].json (`_i`:
# an ensemble's member), vocab.json and decoding.json (the run's `generate.*`: the requests' defaults).
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


class LyricsModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.loaded = read_model_files(context.artifacts)
        config = getattr(context, "model_config", None) or {}
        self.max_num_chars = int(config.get("max_num_chars", MAX_NUM_CHARS))
        self.max_seconds = float(config.get("max_seconds", MAX_SECONDS))
        log = logging.getLogger("mlflow.models.utils")  # its warning is how unknown fields are seen: never muted
        log.setLevel(min(log.getEffectiveLevel(), logging.WARNING))
        if not any(type(f).__name__ == "UnknownFields" for f in log.filters):
            log.addFilter(UnknownFields())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        # Every row checked before the first is generated: a bad row costs no work.
        table = pd.DataFrame(model_input)
        rows = request_options(table, self.max_num_chars, self.loaded.decoding,
                               getattr(get_prediction_context(), UNKNOWN, []))
        allowed = [not _missing(v) and bool(v) for v in table.get("allow_unknown", [None] * len(table))]
        for number, (prefix, _) in enumerate(rows):
            try:
                encode_prefix(self.loaded.vocab, prefix, allowed[number])
            except ValueError as err:
                raise RequestError(number, str(err)) from None
        deadline = time.monotonic() + self.max_seconds
        try:
            return pd.DataFrame({"lyrics": [generate(self.loaded.model, self.loaded.vocab, prefix, decoding,
                                                     allow_unknown=allow, deadline=deadline)
                                            for (prefix, decoding), allow in zip(rows, allowed)]})
        except TimeoutError as err:
            raise MlflowException(f"the request ran past its time limit of {self.max_seconds:g} s ({err}; "
                                  "logger.serve_max_seconds): ask for fewer rows or fewer num_chars",
                                  error_code=REQUEST_LIMIT_EXCEEDED) from err


def pinned_requirements(packages: tuple[str, ...] = SERVING_PACKAGES) -> list[str]:
    """`packages` as lyricist's installed metadata requires them, each with its pin (name==version)."""
    pins = {}
    for requirement in importlib.metadata.requires("lyricist") or []:
        if "extra ==" not in requirement:
            name = re.split(r"[\s=<>!~;\[]", requirement, maxsplit=1)[0]
            pins[name.lower().replace("_", "-")] = requirement
    return [pins[name] for name in packages]


def log_pyfunc_model(tracking_uri: str, run_id: str, checkpoint_path: str | Path | list[str | Path],
                     logger: LoggerSettings):
    """Log the checkpoint(s: their ensemble) as the run's `model` (registry.register registers it); its ModelInfo."""
    mlflow.set_tracking_uri(tracking_uri)
    # Its INFO "Validating input example against model signature" is about our fixed INPUT_EXAMPLE.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as files, mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts=write_model_files(checkpoint_path, Path(files)),
            code_paths=[str(Path(lyricist.__file__).parent)], signature=SIGNATURE, input_example=INPUT_EXAMPLE,
            model_config={"max_num_chars": logger.serve_max_num_chars, "max_seconds": logger.serve_max_seconds},
            # Listed, not inferred: inference loads the model in a subprocess (slow).
            pip_requirements=pinned_requirements())


def load_logged_model(model_uri: str):
    """The LoadedModel of `models:/lyricist@champion`, `runs:/<id>/model`, ... from resolve_tracking_uri()'s store."""
    uri = store.resolve_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():  # MLflow would create it
        raise FileNotFoundError(f"no MLflow store at {uri[len('sqlite:///'):]} to load {model_uri} from: train one "
                                "first (`dvc repro`), or point $MLFLOW_TRACKING_URI at the store that holds it")
    mlflow.set_tracking_uri(uri)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise ValueError(f"cannot load the MLflow model {model_uri} from {uri}: {err.message}. Train one first "
                         "(`dvc repro`), or point $MLFLOW_TRACKING_URI at the store that holds it") from err
    python_model = model.unwrap_python_model()
    if not hasattr(python_model, "loaded"):  # by attribute: the class may come from the model's code/ copy
        raise ValueError(f"{model_uri} is not a lyricist model (its class is {type(python_model).__name__})")
    return python_model.loaded
