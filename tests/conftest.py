"""Shared fixtures and helpers: a tiny config composed by Hydra from conf/, tiny encoded data, the
stage scripts and `python -m lyricist.train` run in this process, and the project copied for DVC
(fresh, or as one session's `dvc repro` left it)."""

import csv
import importlib.util
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lyricist.data.corpus import split_text
from lyricist.data.vocab import Vocab, encode_to_array, save_ids
# Servers the tests start; `postgres` and `mlflow_on_postgres` are session fixtures.
from servers import free_port, mlflow_on_postgres, postgres, serving  # noqa: F401


@pytest.fixture(autouse=True)
def _root_logging_restored():
    """A Hydra app run in this process (an entry point's main) configures the root logger; the
    next test would see every log line twice. Each test starts from the logging it found."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")

LYRICS = (
    "分开 不分开 我不能再想 我不 我不 我不能\n"
    "爱情来的太快就像龙卷风 离不开暴风圈来不及逃\n"
    "战争中部队 在战场上 我会学着放弃你 是因为我太爱你\n"
)

# Small enough to train in seconds on 2 CPU cores, same code paths as the default.
TINY = [
    "data.batch_size=4", "data.num_steps=8", "model.hidden_size=16", "model.embedding_size=16",
    "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "train.eval_batch_size=2",
    "train.samples_every_n_epochs=1", "generate.num_chars=10",
]


def project_env() -> dict:
    """The environment for a `python -m lyricist.train` run outside the project's folder (in a
    tmp_path): $LYRICIST_ROOT says where the project is (its conf/ and default MLflow store)."""
    return dict(os.environ, LYRICIST_ROOT=str(ROOT))


def train_cli_in_process(args, cwd, monkeypatch, capsys, env=None):
    """`python -m lyricist.train <args>` in `cwd`, run in this process (lyricist.cli.train.main, what
    the module runs): for a test of its message, not of an interpreter's start-up. As
    subprocess.run's result: returncode, stdout, stderr."""
    from types import SimpleNamespace

    from lyricist.cli import train as train_cli

    monkeypatch.setattr(sys, "argv", ["lyricist.train", *args])
    monkeypatch.chdir(cwd)
    for name, value in {"LYRICIST_ROOT": str(ROOT), **(env or {})}.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    try:
        train_cli.main()
        returncode = 0
    except SystemExit as exit:
        returncode = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=returncode, stdout=out, stderr=err)


def compose_config(overrides=()):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def train(cfg, output_dir, **kwargs) -> dict:
    """lyricist.training.run.train on a composed config, checked as the entry points check it."""
    from lyricist.cli.config import settings_of
    from lyricist.training.run import train as train_settings
    return train_settings(settings_of(cfg), output_dir, **kwargs)


def with_data(cfg, encoded_dir):
    """`cfg` reading its encoded data from `encoded_dir` (paths.encoded)."""
    cfg.paths.encoded = str(encoded_dir)
    return cfg


def write_encoded(out: Path, text: str, val_fraction: float, test_fraction: float) -> Path:
    """vocab.json + {train,val,test}.npy, as the vocab stage writes them."""
    splits = split_text(text, val_fraction=val_fraction, test_fraction=test_fraction)
    vocab = Vocab.build(splits["train"])
    vocab.save(out / "vocab.json")
    for name, part in splits.items():
        save_ids(out / f"{name}.npy", encode_to_array(vocab, part))
    return out


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A small repeated lyric, encoded."""
    return write_encoded(tmp_path / "encoded", LYRICS * 20, val_fraction=0.2, test_fraction=0.1)


@pytest.fixture
def plateau_data(tmp_path) -> Path:
    """Train on the lyric, validate on its characters shuffled: val ppl soon stops improving."""
    chars = list(LYRICS * 4)
    random.Random(0).shuffle(chars)
    return write_encoded(tmp_path / "plateau", LYRICS * 20 + "".join(chars),
                         val_fraction=0.15, test_fraction=0.0)


def plateau_cfg(cfg, epochs: int):
    """`cfg` set to halve the lr at once when val ppl stops improving, `epochs` epochs."""
    cfg.trainer.max_epochs = epochs
    cfg.train.early_stopping_patience = None
    cfg.optim.scheduler.factor, cfg.optim.scheduler.patience = 0.5, 0  # the default schedule: plateau
    cfg.optim.lr = 0.005
    return cfg


def stage(name: str):
    """pipelines/ is not a package: load a stage script from its path."""
    spec = importlib.util.spec_from_file_location(f"{name}_stage", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params_file(tmp_path, overrides=()):
    """conf/ composed with `overrides` into tmp_path/params.yaml, as a stage script reads it."""
    path = tmp_path / "params.yaml"
    OmegaConf.save(compose_config(list(overrides)), path, resolve=True)
    return path


def evaluate_stage(tmp_path: Path, cfg, checkpoint: Path) -> dict:
    """pipelines/evaluate.py run for real on `checkpoint`, `cfg` as its params.yaml; its metrics.json."""
    import json

    params = tmp_path / "params.yaml"
    OmegaConf.save(cfg, params)
    reports = tmp_path / "reports"
    stage("evaluate").main(["--checkpoint", str(checkpoint), "--data-dir", cfg.paths.encoded, "--params", str(params),
                "--metrics", str(reports / "metrics.json"), "--samples", str(reports / "samples.md")])
    return json.loads((reports / "metrics.json").read_text())


def tiny_config(tmp_path):
    """TINY, its MLflow store tmp_path/mlflow.db (none there yet)."""
    return compose_config(TINY + [f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"])


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables and nothing else, made once: MLflow builds a new store's
    tables by running every schema migration (2-6 s on the 2-core machine), which no test here checks."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def empty_store(template: Path, path: Path) -> str:
    """A copy of the _empty_store at `path` (what MLflow would make there on first use); its URI."""
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def tiny_cfg(tmp_path, _empty_store):
    """tiny_config with its store made (tests of a store's absence use tiny_config)."""
    empty_store(_empty_store, tmp_path / "mlflow.db")
    return tiny_config(tmp_path)


def make_lm(vocab_size: int, cell: str = "lstm", hidden_size: int = 256, num_layers: int = 1,
            embedding_size: int | None = None, **settings):
    """RecurrentLM(ModelSettings(...), vocab_size), with the arguments in RecurrentLM's old order."""
    from lyricist.models import RecurrentLM
    from lyricist.settings import ModelSettings
    return RecurrentLM(ModelSettings(cell=cell, hidden_size=hidden_size, num_layers=num_layers,
                                     embedding_size=embedding_size, **settings), vocab_size)


NO_SCHEDULE = {"_target_": None, "_partial_": True, "interval": "epoch", "monitor": None}
# LitLanguageModel's plain settings: clipping at 1, the divergence guard, nothing else on.
PLAIN_TRAIN = dict(seed=0, clip_theta=1.0, loss_reduction="mean", eval_batch_size=8, early_stopping_patience=None,
                   samples_every_n_epochs=5, divergence_factor=3.0, resume=None, overwrite=False,
                   weight_averaging=None, averaging_patience=2)


def make_lit(model, vocab, lr: float = 0.1, optimizer: str = "torch.optim.SGD", scheduler: dict | None = None,
             **settings):
    """LitLanguageModel(model, vocab, optim, train, data) with plain settings; `settings` are keys of
    train (clip_theta=...) or data (sampling=..., variable_length=..., num_steps=...), checked."""
    from lyricist.settings import DataSettings, OptimSettings, TrainSettings
    from lyricist.training.module import LitLanguageModel
    data_keys = {k: settings.pop(k) for k in list(settings) if k in DataSettings.model_fields}
    base = compose_config(["logger=none"])
    data = DataSettings.model_validate({**OmegaConf.to_container(base.data, resolve=True), "sampling": "consecutive",
                                        "variable_length": False, **data_keys})
    optim = OptimSettings.model_validate({"_target_": optimizer, "_partial_": True, "lr": lr, "weight_decay": 0.0,
                                          "scheduler": scheduler or NO_SCHEDULE})
    return LitLanguageModel(model, vocab, optim, TrainSettings.model_validate({**PLAIN_TRAIN, **settings}), data)


def gen(model, vocab, prefix: str, num_chars: int = 200, allow_unknown: bool = False, deadline=None, **decoding):
    """lyricist.decoding.generate with the decoding given as keywords (greedy by default)."""
    from lyricist.decoding import generate
    from lyricist.settings import Decoding
    return generate(model, vocab, prefix, Decoding(num_chars=num_chars, **decoding),
                    allow_unknown=allow_unknown, deadline=deadline)


def metric_rows(path):
    """metrics.csv's rows without the throughput column (the one value that differs between equal runs)."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "tokens_per_sec"} for row in csv.DictReader(f)]


def untrained_checkpoint(path, text):
    """A lyricist checkpoint of an untrained model over `text`'s characters (what load_checkpoint reads)."""
    import torch

    vocab = Vocab.build(text)
    model = make_lm(len(vocab), hidden_size=8)
    model_config = {**model.config.model_dump(), "vocab_size": model.vocab_size}
    torch.save({"lyricist": {"model_config": model_config, "vocab": vocab.to_dict()}, "epoch": 0,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def encoded_of(folder, text):
    """`text`'s vocabulary and `text` itself as each of train, val and test."""
    folder.mkdir()
    vocab = Vocab.build(text)
    vocab.save(folder / "vocab.json")
    for split in ("train", "val", "test"):
        save_ids(folder / f"{split}.npy", encode_to_array(vocab, text), len(vocab))
    return folder


# -- the project as DVC runs it: a copy in a git repository, the raw corpora from the local remote --
STORE = ROOT.parent / "shared" / "dvc-store"

# 6,000 characters of Jay Chou leave 12 % of val and 28 % of test unseen in train: allowed on purpose.
PIPELINE_TINY = ["data.max_chars=6000", "data.max_unk_rate=null", "data.batch_size=8", "data.num_steps=10",
                 "model.hidden_size=16", "model.embedding_size=16", "trainer.max_epochs=2",
                 "trainer.enable_progress_bar=false", "train.eval_batch_size=2", "train.samples_every_n_epochs=1",
                 "generate.num_chars=20"]


def run(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def compose_params(project: Path, overrides: list[str]) -> None:
    from dvc.utils.hydra import compose_and_dump  # what DVC's Hydra mode runs on `dvc exp run`

    compose_and_dump(project / "params.yaml", str(project / "conf"), None, "config", ".", overrides)


def copy_project(folder: Path, store: Path) -> Path:
    """folder/project: a git repository holding the project's source files (not what a run
    produced), the DVC remote made absolute, params.yaml PIPELINE_TINY with its MLflow store
    folder/mlflow.db, a copy of `store` (the _empty_store)."""
    if not STORE.is_dir():
        pytest.skip(f"the DVC remote {STORE} is not there")
    dest = folder / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    produced = ("dvc.lock", "models/", "reports/", "data/interim", "data/processed", "data/encoded")
    for name in files:
        if (ROOT / name).is_file() and not name.startswith(produced):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    uri = empty_store(store, folder / "mlflow.db")
    compose_params(dest, PIPELINE_TINY + [f"logger.tracking_uri={uri}"])
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], dest)
    run(["dvc", "remote", "modify", "--local", "store", "url", str(STORE)], dest)
    return dest


@pytest.fixture
def project(tmp_path, _empty_store) -> Path:
    """A fresh copy of the project (copy_project), its MLflow store tmp_path/mlflow.db."""
    return copy_project(tmp_path, _empty_store)


@dataclass
class Reproduced:
    project: Path  # the copy after `dvc pull` of both raw corpora and one whole `dvc repro`
    store: str  # its MLflow store's URI, holding that repro's run
    output: str  # what that `dvc repro` printed


@pytest.fixture(scope="session")
def _reproduced_once(tmp_path_factory, _empty_store):
    """One `dvc pull` + `dvc repro` of a copy of the project for the whole session, and a
    snapshot of it (the project and its MLflow store) to restore before each test."""
    folder = tmp_path_factory.mktemp("reproduced")
    project = copy_project(folder, _empty_store)
    run(["dvc", "pull", "-q", "data/raw/jaychou_lyrics.txt.zip.dvc", "data/raw/timemachine.txt.dvc"], project)
    output = run(["dvc", "repro"], project)
    snapshot = tmp_path_factory.mktemp("reproduced-snapshot") / "copy"
    shutil.copytree(folder, snapshot, symlinks=True)
    return folder, snapshot, output


@pytest.fixture
def reproduced(_reproduced_once) -> Reproduced:
    """The project as one `dvc repro` left it, restored in place (its absolute paths, the MLflow
    store's and DVC's, stay true) for each test that changes it: several tests, one repro."""
    folder, snapshot, output = _reproduced_once
    shutil.rmtree(folder)
    shutil.copytree(snapshot, folder, symlinks=True)
    return Reproduced(folder / "project", f"sqlite:///{folder / 'mlflow.db'}", output)


class SlowEpochs(pl.Callback):
    """Each epoch held `seconds`: MLflow's system-metrics sampler (every second under
    MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=1) gets its samples however fast the machine runs a tiny run."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, module):
        time.sleep(self.seconds)
