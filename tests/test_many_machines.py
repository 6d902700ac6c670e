"""Many machines for real (docs/search.md): workers in their own copies of the project, each with
its own prepared data, run `python -m lyricist.tune` against one PostgreSQL study and one MLflow
server backed by PostgreSQL (tests/servers.py); one worker killed mid-trial and started again."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from conftest import LYRICS, ROOT, TINY, free_port, write_encoded
from lyricist.cli import config, tune
from lyricist.experiments import search
from lyricist.training.callbacks import read_epoch_history

SPACE = "tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}, model.dropout: {low: 0.0, high: 0.5}}"
STUDY = "jaychou"  # tune.study_name: ${data.name}


def clone(folder: Path) -> Path:
    """A worker machine's checkout: the project's code and conf/, and its own encoded corpus."""
    for part in ("src", "conf"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    write_encoded(folder / "data" / "encoded", LYRICS * 20, val_fraction=0.2, test_fraction=0.1)
    return folder


def command(storage: str, tracking_uri: str, *extra: str) -> list[str]:
    """The documented worker command (docs/search.md, Many machines), with a tiny recipe."""
    return [sys.executable, "-m", "lyricist.tune", "data=jaychou", f"tune.storage={storage}",
            f"logger.tracking_uri={tracking_uri}", *TINY, "paths.encoded=data/encoded", "tune=default",
            "tune.space=null", SPACE, "tune.timeout=null", "tune.pruner=null", "tune.preset=tuned_pg", *extra]


def start(checkout: Path, argv: list[str], log: str = "worker.log") -> subprocess.Popen:
    """A worker process in `checkout`, as on its own machine: its code, its folder, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("LYRICIST_ROOT", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(checkout / "src"), OMP_NUM_THREADS="1")
    with open(checkout / log, "a") as out:
        return subprocess.Popen(argv, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, checkout: Path, log: str = "worker.log") -> None:
    assert proc.wait(timeout=600) == 0, (checkout / log).read_text()[-3000:]


def preset(checkout: Path) -> dict:
    return yaml.safe_load((checkout / "conf" / "experiment" / "tuned_pg.yaml").read_text())


def test_both_url_forms_open_one_study_and_a_store_that_cannot_be_used_is_one_line_before_any_study(
        postgres, tmp_path, monkeypatch, capsys):
    storage = postgres.createdb("optuna_urls")
    optuna.create_study(study_name="made", storage=storage)  # postgresql:// (SQLAlchemy 2.1: psycopg 3)
    assert optuna.get_all_study_names(postgres.url("optuna_urls", scheme="postgresql+psycopg")) == ["made"]
    checkout = clone(tmp_path)
    monkeypatch.chdir(checkout)
    monkeypatch.delenv("LYRICIST_ROOT", raising=False)
    closed = f"127.0.0.1:{free_port()}"
    cases = [  # (tune.storage, logger.tracking_uri, what the line says)
        (postgres.url("optuna_urls", password="wrong"), None, 'password authentication failed for user "lyricist"'),
        (postgres.url("no_such_db"), None, 'database "no_such_db" does not exist'),
        (postgres.url("optuna_urls").replace(f"127.0.0.1:{postgres.port}", closed), None, "Connection refused"),
        ("mysql://lyricist:s3cret@127.0.0.1/optuna", None, "cannot be opened (Failed to import DB access module"),
        (storage, postgres.url("mlflow_nowhere"), 'database "mlflow_nowhere" does not exist'),
        (storage, f"http://{closed}", "cannot reach the MLflow tracking server"),
    ]
    for url, tracking, said in cases:
        argv = command(url, tracking or f"sqlite:///{tmp_path / 'mlflow.db'}", "tune.n_trials=1")[3:]
        assert config.run(lambda: tune.main(argv)) == 2
        line = capsys.readouterr().err.splitlines()[0]  # and the hint for the traceback
        assert ("logger.tracking_uri" if tracking else "error: tune.storage=") in line and said in line, line
        assert "s3cret" not in line  # the password is not printed
    assert optuna.get_all_study_names(storage) == ["made"]  # the good storage was not touched
    assert not (checkout / "outputs").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_workers_starting_together_on_a_new_storage_all_open_it(kind, request, tmp_path):
    # Each makes the tables it does not find: without a second try, 7 of 8 met "already exists" or
    # a duplicate key here (both kinds, every time).
    url = (request.getfixturevalue("postgres").createdb("optuna_race") if kind == "postgresql"
           else f"sqlite:///{tmp_path / 'optuna.db'}")
    settings = OmegaConf.create({"storage": url, "heartbeat_interval": 1, "grace_period": 3})
    together, failed = threading.Barrier(8), []

    def worker() -> None:
        together.wait()
        try:
            search.make_storage(settings, tmp_path, tracking_uri=None)
        except Exception as err:  # noqa: BLE001 (counted, then shown)
            failed.append(err)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    optuna.create_study(study_name="after", storage=url)  # and the storage works


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_a_server_and_a_killed_one_loses_no_trial(
        postgres, mlflow_on_postgres, tmp_path):
    server, _ = mlflow_on_postgres
    postgres.createdb("optuna_workers")
    storage = postgres.url("optuna_workers", scheme="postgresql+psycopg")  # the server has postgresql://
    a, b = clone(tmp_path / "a"), clone(tmp_path / "b")
    grace = 4
    argv = command(storage, server, "tune.n_trials=8", "trainer.max_epochs=4", "tune.heartbeat_interval=1",
                   f"tune.grace_period={grace}")
    workers = {a: start(a, argv), b: start(b, argv)}
    rdb = optuna.storages.RDBStorage(storage)
    deadline = time.time() + 600
    while True:  # kill worker a while it runs a trial (its folder is in a's checkout), after one has finished
        time.sleep(0.5)
        assert workers[a].poll() is None and time.time() < deadline, (a / "worker.log").read_text()[-3000:]
        try:
            trials = optuna.load_study(study_name=STUDY, storage=rdb).trials
        except KeyError:  # not created yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs
                   and any((a / "outputs" / "tune" / STUDY).glob(f"*/trial_{t.number:04d}"))]  # <study>/<its folder>/
        if running and any(t.state == TrialState.COMPLETE for t in trials):
            break
    [killed] = running
    os.kill(workers[a].pid, signal.SIGKILL)
    workers[a].wait()
    # Silent past the grace period, its trial is failed by the next trial to start (b's) or, when b
    # spent the budget first (a fast machine), by a opening the study again; run again either way.
    time.sleep(grace + 1)
    workers[a] = start(a, argv)  # the same command again on the same machine
    for checkout, proc in workers.items():
        finish(proc, checkout)

    trials = optuna.load_study(study_name=STUDY, storage=rdb).trials
    finished = [t for t in trials if t.state in search.FINISHED]
    # The budget, plus at most the one trial the other worker had running; nothing left running.
    assert 8 <= len(finished) <= 9 and len(finished) + 1 == len(trials)
    assert trials[killed.number].state == TrialState.FAIL  # the killed trial, failed by its silent heartbeat
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]  # ... run again
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert len({tuple(sorted(t.params.items())) for t in finished}) == len(finished)  # none run twice

    client = MlflowClient(server)
    runs = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("tune") == "parent"]
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(runs) == len(trials) + 1  # the study's parent and one child run per trial, nothing else
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children.values()) == [t.number for t in trials]
    assert set(children) == {t.user_attrs["mlflow_run_id"] for t in trials}
    gone = children[killed.user_attrs["mlflow_run_id"]]
    assert gone.info.status == "KILLED" and gone.data.tags["optuna.state"].startswith("FAIL")
    for t in finished:
        run = children[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.metrics["best/val_ppl"] == pytest.approx(t.value)
    assert parent.info.status == "FINISHED"  # closed by the last worker to finish
    assert {"search_space.yaml", "trials.md", "summary.json"} <= {a.path for a in client.list_artifacts(
        parent.info.run_id)}  # served by the server from its artifact folder

    # Once the budget is reached the same command runs no trial and writes the preset from the
    # storage: the same recipe on every worker.
    again = {checkout: start(checkout, argv, "again.log") for checkout in (a, b)}
    for checkout, proc in again.items():
        finish(proc, checkout, "again.log")
    assert len(optuna.load_study(study_name=STUDY, storage=rdb).trials) == len(trials)
    best = min(finished, key=lambda t: t.value)
    assert client.get_run(parent.info.run_id).data.tags["best_trial"] == str(best.number)
    assert preset(a) == preset(b)
    assert preset(a)["optim"]["lr"] == pytest.approx(best.params["optim.lr"])
    assert preset(a)["model"]["dropout"] == pytest.approx(best.params["model.dropout"])


@pytest.mark.slow
def test_ddp_on_two_nodes_trains_one_run_on_the_server_written_by_rank_0_only(mlflow_on_postgres, tmp_path):
    server, _ = mlflow_on_postgres
    nodes = [clone(tmp_path / f"node{rank}") for rank in (0, 1)]
    port = free_port()
    argv = [sys.executable, "-m", "lyricist.train", *TINY, "paths.encoded=data/encoded", "trainer=ddp",
            "trainer.num_nodes=2", "trainer.devices=1", f"logger.tracking_uri={server}",
            "logger.experiment_name=two_nodes", "logger.log_model=false", "hydra.run.dir=run"]
    procs = []
    for rank, node in enumerate(nodes):  # Lightning's variables, as on each of two machines
        env = {k: v for k, v in os.environ.items() if k not in ("LYRICIST_ROOT", "MLFLOW_TRACKING_URI")}
        env.update(PYTHONPATH=str(node / "src"), OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), NODE_RANK=str(rank))
        with open(node / "node.log", "w") as out:
            procs.append(subprocess.Popen(argv, cwd=node, env=env, stdout=out, stderr=subprocess.STDOUT))
    for node, proc in zip(nodes, procs):
        assert proc.wait(timeout=600) == 0, (node / "node.log").read_text()[-3000:]
    client = MlflowClient(server)
    [run] = client.search_runs([client.get_experiment_by_name("two_nodes").experiment_id])  # rank 0's
    history = read_epoch_history(nodes[0] / "run" / "metrics.csv")
    assert run.info.status == "FINISHED" and len(history) == 2
    assert run.data.metrics["val/ppl"] == pytest.approx(min(row["val/ppl"] for row in history))
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"samples", "vocab.json"}
    assert (nodes[0] / "run" / "checkpoints" / "best.ckpt").is_file()
    # The second machine's folder: Hydra's own files, nothing of the run (checkpoints, metrics, lock).
    assert {p.name for p in (nodes[1] / "run").iterdir()} == {".hydra", "train.log"}
