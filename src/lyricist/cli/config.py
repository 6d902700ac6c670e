"""The composition of conf/, checked once: the overrides' keys and group choices before Hydra
composes, then every value by the schema (lyricist.settings) before anything is read or written.
A mistake is one line (errors.report), the same from every entry point."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from lyricist import errors, settings
from lyricist.project import project_root
from lyricist.settings import Settings

_NAMES = re.compile(r"^[\w.-]+(,[\w.-]+)*$")  # a group choice, or a sweep's list of them (model=rnn,gru)


def check_overrides(overrides: Sequence[str], conf_dir: Path) -> None:
    """Refuse an override naming no setting (did you mean ...) or no file of its conf group, in one
    line (Hydra's own messages span several lines and suggest appending the typo with +)."""
    for override in overrides:
        key, is_set, value = override.partition("=")
        group = key.lstrip("+")
        if not is_set or key.startswith(("~", "-")) or group.startswith("hydra"):
            continue  # a flag, a deletion, or Hydra's own (its plugins add group options)
        if "." in key and "/" not in key and not key.startswith("+"):  # +key=value adds a key
            settings.field_of(key)
        elif (conf_dir / group).is_dir() and _NAMES.match(value):  # not a sweep's expression
            options = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
            for choice in value.split(","):
                if choice not in options and choice != "null":
                    raise ValueError(f"{group}={choice} is not an option of conf/{group}/: use one of "
                                     f"{', '.join(options)}")


def compose(overrides: Sequence[str] = (), groups: Sequence[str] = ()) -> DictConfig:
    """conf/config.yaml of the project with `groups` (e.g. ["+tune=default"]) and `overrides`."""
    conf_dir = project_root() / "conf"
    check_overrides([*groups, *overrides], conf_dir)
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=[*groups, *overrides])
    except HydraException as err:  # a group file missing, an override that does not parse
        raise ValueError(" ".join(str(err).split())) from None  # Hydra's lines, as one


def settings_of(cfg: DictConfig | dict | str | Path) -> Settings:
    """The checked settings of a DictConfig, a dict, or params.yaml's path (ValueError: one line)."""
    if isinstance(cfg, (str, Path)):
        cfg = OmegaConf.load(cfg)
    if isinstance(cfg, DictConfig):  # resolved section by section: hydra's own node needs a running job
        cfg = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
               for k in cfg if k != "hydra"}
    return settings.section(Settings, cfg)


def load(overrides: Sequence[str] = (), groups: Sequence[str] = ()) -> Settings:
    """The checked settings of conf/ with `groups` and `overrides`."""
    return settings_of(compose(overrides, groups))


def read(params: str | Path, name: str) -> Any:
    """One section of a params file (params.yaml), checked: what a DVC stage script reads."""
    cfg = OmegaConf.load(params)
    if name not in cfg:
        raise ValueError(f"{params} has no `{name}:` section: write it with `make params` (the composition of conf/)")
    return settings.section(Settings.model_fields[name].annotation, OmegaConf.to_container(cfg[name], resolve=True),
                            prefix=name)


run = errors.run_cli  # an entry point's main(): 0 when it returns, 2 with one line on a user error
