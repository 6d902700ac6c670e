"""The trained language model as an MLflow pyfunc model.

    mlflow models predict -m runs:/<run id>/model -i prefixes.json -t json --env-manager local
    mlflow models serve   -m runs:/<run id>/model -p 5001 --env-manager local

turn a table of prefixes (with optional num_chars, strategy, temperature, top_k, seed)
into generated lyrics. A prefix is cut into tokens as the model's vocabulary records
(characters, or words for data.tokenizer=word), and num_chars counts those tokens. The model directory carries the checkpoint (weights + model
arguments + vocabulary) and lyricist's own code, so it loads without this checkout.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import lyricist

# What the served model needs, pinned as lyricist itself pins it (pyproject.toml, the one place).
SERVING_PACKAGES = ("torch", "numpy", "pandas", "pytorch-lightning")

SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec("string", "prefix"),
        ColSpec("long", "num_chars", required=False),
        ColSpec("string", "strategy", required=False),   # greedy | sample
        ColSpec("double", "temperature", required=False),
        ColSpec("long", "top_k", required=False),        # 0: no top-k cut
        ColSpec("long", "seed", required=False),
    ]),
    outputs=Schema([ColSpec("string", "lyrics")]),
)
INPUT_EXAMPLE = pd.DataFrame({"prefix": ["分开", "战争中部队"], "num_chars": [20, 20],
                              "strategy": ["greedy", "sample"], "temperature": [1.0, 0.8],
                              "top_k": [0, 10], "seed": [0, 1]})


class LyricsModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from lyricist.checkpoint import load_checkpoint

        self.loaded = load_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from lyricist.generate import DEFAULTS, generate

        lyrics = []
        for row in pd.DataFrame(model_input).to_dict("records"):
            options = {key: row.get(key) for key in DEFAULTS}
            options = {k: DEFAULTS[k] if v is None or pd.isna(v) else v for k, v in options.items()}
            lyrics.append(generate(
                self.loaded.model, self.loaded.vocab, str(row["prefix"]), int(options["num_chars"]),
                strategy=str(options["strategy"]), temperature=float(options["temperature"]),
                top_k=int(options["top_k"] or 0) or None,  # 0: no top-k cut, as the signature says
                seed=int(options["seed"]), allow_unknown=True))
        return pd.DataFrame({"lyrics": lyrics})


def pinned_requirements(packages: tuple[str, ...] = SERVING_PACKAGES) -> list[str]:
    """`packages` as lyricist's installed metadata requires them, each with its pin (name==version)."""
    pins = {}
    for requirement in importlib.metadata.requires("lyricist") or []:
        if "extra ==" not in requirement:
            name = re.split(r"[\s=<>!~;\[]", requirement, maxsplit=1)[0]
            pins[name.lower().replace("_", "-")] = requirement
    return [pins[name] for name in packages]


def log_pyfunc_model(tracking_uri: str, run_id: str, checkpoint_path: str | Path,
                     registered_model_name: str | None = None):
    """Log the checkpoint as the run's `model` (pyfunc); optionally register it."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name="model", python_model=LyricsModel(), artifacts={"checkpoint": str(checkpoint_path)},
            code_paths=[str(Path(lyricist.__file__).parent)], signature=SIGNATURE,
            input_example=INPUT_EXAMPLE, registered_model_name=registered_model_name,
            # Listed, not inferred: inference loads the model in a subprocess (slow).
            pip_requirements=pinned_requirements())
