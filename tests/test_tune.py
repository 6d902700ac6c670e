"""`python -m lyricist.tune`: one study in Optuna storage shared by workers, pruning, a killed
worker's trial run again, MLflow parent and child runs, and the best trial written as a preset."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import CONF_DIR, LYRICS, ROOT, TINY, empty_store, project_env, train, write_encoded
from test_entry_errors import MISTAKES, _override
from lyricist.cli import config, tune
from lyricist.experiments import search
from lyricist.training.callbacks import read_epoch_history

SPACE = "tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}, model.dropout: {low: 0.0, high: 0.5}}"


def tune_args(tmp_path, data, *extra):
    """A tiny search: two parameters, 2 epochs, every file under tmp_path."""
    return [*TINY, f"paths.encoded={data}", f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"tune.storage=sqlite:///{tmp_path / 'optuna.db'}", f"tune.output_dir={tmp_path / 'out'}",
            f"tune.preset_dir={tmp_path / 'conf' / 'experiment'}", "tune.preset=tuned_tiny",
            "tune=default", "tune.space=null", SPACE, "tune.timeout=null", *extra]


def load(tmp_path, name="jaychou"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def runs_of(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("tune") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


def worker(tmp_path, data, *extra):
    return subprocess.Popen([sys.executable, "-m", "lyricist.tune", *tune_args(tmp_path, data, *extra)],
                            cwd=tmp_path, env=dict(project_env(), OMP_NUM_THREADS="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_workers_share_one_study_and_write_a_preset_that_trains(tiny_data, tmp_path, monkeypatch):
    procs = [worker(tmp_path, tiny_data, "tune.n_trials=6", "data=jaychou") for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=900)
        assert p.returncode == 0, out[-3000:]
    study = load(tmp_path)
    trials = study.trials
    # The budget is the study's: 6 finished, plus at most one the other worker had running.
    assert 6 <= len(trials) <= 7 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert [t.number for t in trials] == list(range(len(trials)))
    # Two workers with one seed still draw different values (trial k from seed + k).
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    client, parent, children = runs_of(tmp_path)
    # Every trial exactly once in MLflow, as a child of the study's one parent run.
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == [t.number for t in trials]
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in trials}
    for t, r in ((t, next(r for r in children if r.info.run_id == t.user_attrs["mlflow_run_id"])) for t in trials):
        assert r.data.tags["optuna.state"] == t.state.name
        assert float(r.data.params["optim.lr"]) == pytest.approx(t.params["optim.lr"])
        if t.state == TrialState.COMPLETE:
            assert r.data.metrics["best/val_ppl"] == pytest.approx(t.value) and r.info.status == "FINISHED"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best/val_ppl"] == pytest.approx(study.best_value)
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"search_space.yaml", "trials.md", "summary.json", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/optimization_history.html", "plots/param_importances.html"}

    # The preset: the best trial's values on top of the command line's, composed as
    # `experiment=tuned_tiny`, and it trains.
    preset = tmp_path / "conf" / "experiment" / "tuned_tiny.yaml"
    assert preset.read_text().startswith("# @package _global_")
    assert "- override /data: jaychou\n" in preset.read_text()  # the command line's group choice
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                                                        "experiment=tuned_tiny", f"paths.encoded={tiny_data}",
                                                        "logger=none"])
    assert cfg.optim.lr == pytest.approx(study.best_params["optim.lr"])
    assert cfg.model.dropout == pytest.approx(study.best_params["model.dropout"])
    assert cfg.model.hidden_size == 16 and cfg.data.batch_size == 4  # from the search's command line
    metrics = train(cfg, tmp_path / "retrain")
    assert metrics["val/ppl"] < 1e3 and (tmp_path / "retrain" / "checkpoints" / "best.ckpt").is_file()


@pytest.mark.slow
def test_a_killed_study_resumes_from_its_storage_with_no_trial_lost(tiny_data, tmp_path):
    # Trials of 30 tiny epochs (seconds each, even on an idle machine), so that the second is caught running;
    # a budget of 3: the one finished before the kill, the killed one's retry and one more.
    budget = 3
    beat = ["tune.heartbeat_interval=1", "tune.grace_period=3", f"tune.n_trials={budget}", "tune.pruner=null",
            "trainer.max_epochs=30"]
    first = worker(tmp_path, tiny_data, *beat)
    deadline = time.time() + 600
    while True:  # kill it while its second trial is running
        time.sleep(0.2)
        assert first.poll() is None and time.time() < deadline
        try:
            trials = load(tmp_path).trials
        except KeyError:  # the worker has not created the study yet
            trials = []
        if len(trials) >= 2 and trials[1].state == TrialState.RUNNING and "mlflow_run_id" in trials[1].user_attrs:
            break
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = load(tmp_path).trials
    assert before[0].state == TrialState.COMPLETE and before[1].state == TrialState.RUNNING
    time.sleep(4)  # past the grace period: the killed trial's heartbeat has stopped
    again = worker(tmp_path, tiny_data, *beat)
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, out[-3000:]
    after = load(tmp_path).trials
    assert after[0].value == before[0].value  # the finished trial is kept, not run again
    assert after[1].state == TrialState.FAIL  # the killed one, failed by its silent heartbeat ...
    [retry] = [t for t in after if t.system_attrs.get("failed_trial") == 1]  # ... and run again
    assert retry.params == before[1].params and retry.state == TrialState.COMPLETE
    assert len([t for t in after if t.state == TrialState.COMPLETE]) == budget
    client, parent, children = runs_of(tmp_path)
    killed = client.get_run(before[1].user_attrs["mlflow_run_id"])
    assert killed.info.status == "KILLED" and killed.data.tags["optuna.state"].startswith("FAIL")
    assert len(children) == len(after) and parent.info.status == "FINISHED"


def test_a_trial_worse_than_the_median_is_pruned(tiny_data, tmp_path, monkeypatch, _empty_store):
    empty_store(_empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    args = tune_args(tmp_path, tiny_data, "tune.n_trials=3", "tune.pruner=median", "tune.pruner_startup_trials=2",
                     "tune.pruner_warmup_epochs=0", "trainer.max_epochs=4")
    study = optuna.create_study(study_name="jaychou", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study.set_user_attr(search.PARENT_ATTR, None)  # no parent run: the trials below are not in MLflow
    for lr in (0.01, 0.02):  # two finished trials far better than a tiny model can be
        study.add_trial(create_trial(
            params={"optim.lr": lr, "model.dropout": 0.1}, value=1.01,
            distributions={"optim.lr": FloatDistribution(0.001, 0.03, log=True),
                           "model.dropout": FloatDistribution(0.0, 0.5)},
            intermediate_values={e: 1.01 for e in range(4)}))
    assert tune.main(args) == 0
    study = load(tmp_path)
    [trial] = study.trials[2:]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    history = read_epoch_history(tmp_path / "out" / "trial_0002" / "metrics.csv")
    assert len(history) == 1  # stopped after its first epoch, not 4
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["optuna.state"] == "PRUNED"
    assert "optim.lr" in run.data.params and not any(k.startswith("tune.") for k in run.data.params)
    assert "error" not in run.data.tags


def test_a_bad_search_space_is_refused_before_any_trial(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    args = tune_args(tmp_path, tiny_data, "tune.space={optim.lr: {low: 0.0, high: 0.1, log: true}}")
    assert config.run(lambda: tune.main(args)) == 2
    assert "tune.space.optim.lr: a log range needs low > 0" in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["tune.space={model.hiden_size: {choices: [128]}}"], "tune.space.model.hiden_size is not a setting: did you mean "
                                                           "model.hidden_size? (docs/configuration.md lists them all)"),
    (["tune.space={model.hidden_size: {choices: [abc, 32]}}"], "tune.space.model.hidden_size.choices='abc' is not "
                                                                "allowed: use a valid integer (hidden units per layer)"),
    (["tune.space={trainer.max_epochs: {low: 0, high: 5}}"], "tune.space.trainer.max_epochs.low: trainer.max_epochs=0 "
                                                              "is not allowed: use an integer >= 1"),
    (["model.hiden_size=8"], "model.hiden_size is not a setting: did you mean model.hidden_size?"),
    (["tune=hourr"], "tune=hourr is not an option of conf/tune/: use one of cpu, default, hour"),
    (["tune.n_trials=0"], "tune.n_trials=0 is not allowed: use a value >= 1"),
    (["tune.timeout=0"], "tune.timeout=0 is not allowed: use a value > 0"),
    (["tune.pruner=bogus"], "tune.pruner='bogus' is not allowed: use 'median' or 'hyperband'"),
    (["tune.fixed={logger.log_modle: false}"], "logger.log_modle is not a setting: did you mean logger.log_model?"),
    (["tune.storage=bogus://x"], "tune.storage='bogus://x' cannot be opened (Can't load plugin: sqlalchemy.dialects:bogus): "
                                 "give a SQLAlchemy URL of a database this machine reaches"),
    (["tune.storage=sqlite:///{tmp}/missing/optuna.db"], "tune.storage='sqlite:///{tmp}/missing/optuna.db' cannot be opened "
                                                         "((sqlite3.OperationalError) unable to open database file)"),
    (["tune.storage=postgresql://u:secret@localhost:1/optuna"], "tune.storage='postgresql://***@localhost:1/optuna' "
                                                                "cannot be opened"),
])
def test_a_mistake_is_one_line_before_any_study_or_run(tiny_data, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    args = tune_args(tmp_path, tiny_data, *(e.replace("{tmp}", str(tmp_path)) for e in extra))
    assert config.run(lambda: tune.main(args)) == 2
    assert capsys.readouterr().err.splitlines()[0].startswith("error: " + message.replace("{tmp}", str(tmp_path)))
    assert [p.name for p in tmp_path.iterdir()] == ["encoded"]  # no optuna.db, mlflow.db, trial folder or preset


@pytest.mark.parametrize("mistake", MISTAKES, ids=str)
def test_every_mistake_lyricist_train_refuses_is_the_same_line_here(mistake, tiny_data, tmp_path, monkeypatch, capsys):
    groups, key, value, line = MISTAKES[mistake]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    args = tune_args(tmp_path, tiny_data, *groups, _override(key, value))
    assert config.run(lambda: tune.main(args)) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {line}"
    assert [p.name for p in tmp_path.iterdir()] == ["encoded"]


def test_a_study_name_reused_with_another_space_or_other_data_is_refused(tiny_data, tmp_path, monkeypatch, capsys,
                                                                        _empty_store):
    empty_store(_empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    assert tune.main(tune_args(tmp_path, tiny_data, "tune.n_trials=1", "tune.pruner=null")) == 0
    [trial] = load(tmp_path).trials
    _, _, children = runs_of(tmp_path)
    capsys.readouterr()
    narrower = tune_args(tmp_path, tiny_data, "tune.n_trials=2", "tune.space=null",
                         "tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}, model.dropout: {low: 0.0, high: 0.3}}")
    assert config.run(lambda: tune.main(narrower)) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: tune.study_name='jaychou' in sqlite:///{tmp_path / 'optuna.db'} is a study of another search space "
        "(model.dropout differ): give this search a new name, e.g. tune.study_name=jaychou_2")
    other = write_encoded(tmp_path / "other", LYRICS * 25, val_fraction=0.2, test_fraction=0.1)
    assert config.run(lambda: tune.main(tune_args(tmp_path, other, "tune.n_trials=2"))) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"error: tune.study_name='jaychou' in sqlite:///{tmp_path / 'optuna.db'} is a study of other encoded data: "
        "give this search a new name, e.g. tune.study_name=jaychou_2")
    assert [(t.number, t.state, t.value) for t in load(tmp_path).trials] == [(0, trial.state, trial.value)]
    assert len(runs_of(tmp_path)[2]) == len(children) == 1  # no run made by the refused searches


def test_a_search_starts_from_the_recipe_and_a_trial_cut_by_its_timeout_counts(tiny_data, tmp_path, monkeypatch,
                                                                              _empty_store):
    empty_store(_empty_store, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    # One worker, 1 s: its first trial (30 tiny epochs) is still running when the time is up.
    args = tune_args(tmp_path, tiny_data, "tune.timeout=1", "tune.pruner=null", "trainer.max_epochs=30",
                     "optim.lr=0.02", "model.dropout=0.3")
    assert tune.main(args) == 0
    [trial] = load(tmp_path).trials
    assert trial.params == {"optim.lr": 0.02, "model.dropout": 0.3}  # the composed recipe, not a draw
    assert trial.state == TrialState.COMPLETE and "timeout" in trial.user_attrs["cut"]
    history = read_epoch_history(tmp_path / "out" / "trial_0000" / "metrics.csv")
    assert 1 <= len(history) < 30 and trial.value == min(row["val/ppl"] for row in history)
    assert "| 0 | COMPLETE (the recipe) (timeout) |" in (tmp_path / "out" / "trials.md").read_text()
    preset = (tmp_path / "conf" / "experiment" / "tuned_tiny.yaml").read_text()
    assert "lr: 0.02" in preset and "dropout: 0.3" in preset


def test_the_hour_search_holds_the_default_recipe_and_drops_the_keys_it_does_not_search():
    s = config.load(groups=["+tune=hour"])
    space = s.tune.space
    assert "trainer.max_epochs" not in space and "model.tie_weights" not in space
    searched = {k for k, rule in space.items() if not rule.tied}
    assert search.recipe_values(space, s).keys() == searched  # trial 0 is exactly the default recipe
    assert search.make_pruner(s.tune, s.trainer.max_epochs)._max_resource == s.trainer.max_epochs


def test_a_space_with_every_key_dropped_is_refused():
    with pytest.raises(ValueError, match="tune.space has no key left to search"):
        config.load(["tune.space=null", "tune.space={optim.lr: null}"], groups=["+tune=default"])


@pytest.mark.slow
def test_a_new_study_never_writes_into_an_earlier_studys_trial_folders(tiny_data, tmp_path, monkeypatch):
    """Two fresh storages, one study name, the default output folder: each study its own folder
    (main: the second study's trial 0 met the first's trial_0000 and failed, hinting train.* keys)."""
    from lyricist.cli import tune

    root = tmp_path / "project"  # paths.root: the default folder is <root>/outputs/tune/<study>/
    root.mkdir()
    (root / "conf").symlink_to(ROOT / "conf")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))

    def search(storage: str) -> int:
        return tune.main([*TINY, f"paths.encoded={tiny_data}", f"paths.root={root}", "logger=none",
                          f"tune.storage=sqlite:///{tmp_path / storage}", "tune.preset=null", "tune.space=null",
                          "tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}}", "tune.timeout=null",
                          "tune.n_trials=1"])

    assert search("first.db") == 0
    [first] = (root / "outputs/tune/jaychou").rglob("trial_0000")
    kept = (first / "checkpoints/best.ckpt").read_bytes()
    assert search("second.db") == 0
    trials = sorted((root / "outputs/tune/jaychou").rglob("trial_0000"))
    assert len(trials) == 2 and first in trials and (first / "checkpoints/best.ckpt").read_bytes() == kept
    for folder in (t.parent for t in trials):  # each study's report beside its trials
        assert json.loads((folder / "summary.json").read_text())["trials"] == 1
