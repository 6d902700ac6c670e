"""`<encoded dir>/prepared_with.json`, how encoded data was prepared: the `vocab` stage writes it (its
params in dvc.yaml are these keys: tests/test_dvc_stages.py), training refuses data made with other
settings than its config asks for (e.g. a preset's `data.max_chars=20000` over the whole corpus)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lyricist.data.corpus import write_text

RECORD = "prepared_with.json"
PREPARATION_KEYS = ("newline", "lowercase", "max_chars", "val_fraction", "test_fraction", "min_freq")
# The vocabulary options, recorded only when not their defaults: data prepared before they existed
# (or with the defaults) reads as made with them, and a default run's record stays as it was.
OPTION_DEFAULTS = {"tokenizer": "char", "max_vocab_size": None}


def write_record(encoded_dir: str | Path, data: Mapping[str, Any]) -> None:
    record = {key: data[key] for key in PREPARATION_KEYS}
    record.update({key: data[key] for key, default in OPTION_DEFAULTS.items() if data[key] != default})
    write_text(Path(encoded_dir) / RECORD, json.dumps(record, indent=1) + "\n")


def check_record(encoded_dir: str | Path, data: Mapping[str, Any]) -> None:
    """Refuse encoded data made with other `data.*` settings than `data` (without a record: taken as it is)."""
    path = Path(encoded_dir) / RECORD
    if not path.is_file():
        return
    prepared = {**OPTION_DEFAULTS, **json.loads(path.read_text(encoding="utf-8"))}
    if differ := [f"data.{key}: prepared {value!r}, asked {data.get(key)!r}"
                  for key, value in prepared.items() if data.get(key) != value]:
        raise ValueError(
            f"{encoded_dir} was prepared with other settings ({', '.join(differ)}). Prepare the "
            "data for this config through DVC: `dvc exp run -S <the same overrides>` (or "
            "`dvc repro` after changing conf/ and `make params`)")
