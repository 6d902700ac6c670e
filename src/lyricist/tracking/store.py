"""MLflow: where runs go, how the store is set up and retried, and what a run is tagged with. No
torch or Lightning here, so commands that only read the store (compare) start fast."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests
import sqlalchemy
import yaml
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from lyricist import errors
from lyricist.project import project_root

T = TypeVar("T")
ERROR_TAG = "error"  # a FAILED run's reason: the exception's type and message
# Model training, not a GenAI app; MLflow 3.17's UI follows its own switch over this tag, hence
# the link with ?workflowType= (experiment_url; docs/mlflow.md).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
UI_URL = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def experiment_url(ui: str, experiment_id: str) -> str:
    """The UI's page of the experiment's training runs, whichever way its GenAI switch stands."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


class TrackingError(errors.UserError, RuntimeError):
    """The tracking store or server cannot be used; the message names the URI and the fix."""


def resolve_tracking_uri(configured: str | None = None, root: Path | None = None) -> str:
    """The config's URI if set, else $MLFLOW_TRACKING_URI, else the project's SQLite store: an
    absolute path, so it works from any working directory (MLflow >= 3.13 refuses ./mlruns)."""
    return (configured or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(root or project_root()).resolve() / 'mlflow.db'}")


def with_retry(fn: Callable[[], T], attempts: int = 8, delay: float = 0.5,
               retry_on: tuple[str, ...] = ("locked",)) -> T:
    """`fn`, retried with backoff while its error holds a word of `retry_on` (SQLite's "locked": parallel jobs)."""
    for attempt in range(attempts - 1):
        try:
            return fn()
        except Exception as err:  # MlflowException or sqlalchemy OperationalError
            if not any(words in str(err).lower() for words in retry_on):
                raise
            time.sleep(delay * (2 ** attempt))
    return fn()  # the last attempt: its error, locked or not, goes to the caller


def shown(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)  # no password in a message


def connect_args(url: str) -> dict:
    """A PostgreSQL host that drops packets fails in seconds (libpq alone waits for the OS, minutes)."""
    return {"connect_timeout": 10} if url.startswith("postgresql") else {}


def check_reachable(tracking_uri: str) -> None:
    """A tracking server or database answers, asked once, quickly (MLflow's client retries for minutes)."""
    if tracking_uri.split(":")[0].split("+")[0] in ("postgresql", "mysql", "mssql"):  # MLflow's databases
        try:
            engine = sqlalchemy.create_engine(tracking_uri, connect_args=connect_args(tracking_uri),
                                              poolclass=sqlalchemy.pool.NullPool)
            engine.connect().close()
        except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:  # no server, database, user, or driver
            reason = " ".join(str(getattr(err, "orig", None) or err).split())[:300]
            raise TrackingError(f"logger.tracking_uri={shown(tracking_uri)!r} cannot be opened ({reason}): check "
                                "that its server runs and this machine reaches its host and port, that the "
                                "database exists (createdb), the user and the password") from None
    elif tracking_uri.startswith(("http://", "https://")):
        try:
            requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise TrackingError(f"cannot reach the MLflow tracking server {tracking_uri} ({err}). Start it "
                               "(`mlflow server ...`), fix logger.tracking_uri / $MLFLOW_TRACKING_URI, or "
                               "train without it (logger=none)") from err


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the store and experiment if needed (before training starts) and return its id."""
    check_reachable(tracking_uri)  # before training, not after it

    def get_or_create() -> str:
        client = MlflowClient(tracking_uri=tracking_uri)  # an unknown scheme or a file store fails here
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            # A SQLite store's artifacts beside it in mlartifacts/ (absolute: the UI finds them); a server's: its own.
            db = Path(tracking_uri.removeprefix("sqlite:///"))
            artifacts = (db.parent / "mlartifacts").resolve().as_uri() if tracking_uri.startswith("sqlite:///") else None
            try:
                return client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_TAGS)
            except MlflowException:  # created meanwhile by a parallel job
                experiment = client.get_experiment_by_name(name)
        for key, value in EXPERIMENT_TAGS.items():  # an experiment made before the tag, or by hand
            if experiment.tags.get(key) is None:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    try:  # workers starting together on a new SQLite store race to create its tables ("already exists")
        return with_retry(get_or_create, retry_on=("locked", "already exists", "unique constraint failed"))
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrackingError(f"cannot use the MLflow tracking store {tracking_uri!r} ({first[:300]}). Use "
                            "sqlite:///<absolute path>/mlflow.db (a SQLite file, created if absent) or an "
                            "http(s):// server in logger.tracking_uri or $MLFLOW_TRACKING_URI, or train without "
                            "tracking (logger=none)") from err


def open_parent_run(tracking_uri: str, experiment: str, name: str, tags: dict[str, str], root: Path,
                    params: Mapping[str, Any] | None = None) -> tuple[MlflowClient, str]:
    """A new parent run (a sweep's, a study's, the seeds'), store and experiment made if need be."""
    experiment_id = ensure_experiment(tracking_uri, experiment)
    client = MlflowClient(tracking_uri)
    run_id = with_retry(lambda: client.create_run(experiment_id, run_name=name[:250],
                                                  tags={**tags, "git_commit": git_commit(root)})).info.run_id
    with_retry(lambda: client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()]))
    return client, run_id


def failure_reason(err: BaseException) -> str:
    """What a FAILED run's `error` tag says: the exception's type and message, cut to fit."""
    return f"{type(err).__name__}: {err}"[:5000]  # MLflow's limit on a tag value is 8000


def mark_failed(tracking_uri: str, run_id: str, err: BaseException) -> None:
    """`run_id` FAILED (not left RUNNING) with the reason as a tag; best effort: the original error matters more."""
    client = MlflowClient(tracking_uri)
    try:
        with_retry(lambda: client.set_tag(run_id, ERROR_TAG, failure_reason(err)))
        with_retry(lambda: client.set_terminated(run_id, "FAILED"))
    except Exception:  # the store itself is the problem: leave the run as the store has it
        pass


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'hidden_size': 256}} -> {'model.hidden_size': 256}, for MLflow params."""
    return {name: leaf for key, value in config.items() for name, leaf in
            (flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value}).items()}


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def raw_data_md5(raw_path: str, root: Path) -> str:
    """The md5 DVC recorded for the raw corpus (from dvc.lock, else the .dvc pointer); a pre-split
    corpus' folder has DVC's "<md5>.dir" over every file in it, so the tag covers them all."""
    raw_path = str(raw_path).rstrip("/")  # data/raw/ptb/ is data/raw/ptb, its pointer data/raw/ptb.dvc
    for file in (root / "dvc.lock", root / f"{raw_path}.dvc"):
        if not file.is_file():
            continue
        text = yaml.safe_load(file.read_text()) or {}
        for entry in [text, *(text.get("stages") or {}).values()]:
            for dep in (entry.get("deps") or []) + (entry.get("outs") or []):
                if Path(dep.get("path", "")).name == Path(raw_path).name and "md5" in dep:
                    return dep["md5"]
    return "unknown"
