"""Hyper-parameter search with Optuna: each trial trains conf's recipe with sampled values.

    python -m lyricist.tune data=timemachine                     # conf/tune/default.yaml
    python -m lyricist.tune data=jaychou tune.n_trials=40 tune.timeout=1800
    python -m lyricist.tune tune.storage=postgresql://u:p@db/optuna logger.tracking_uri=http://mlflow:5000

The config is composed as `python -m lyricist.train` composes it (same overrides) plus the
`tune` group. The study lives in Optuna storage (SQLite in the project root by default, any RDB
URL): N workers on N machines run the same command against the same storage and share one
study (docs/search.md). TPE with a fixed seed, per-epoch val/ppl pruning (median or Hyperband)
through a Lightning callback, a killed worker's trial failed after `grace_period` and run again
with its values. Only train and val are read. MLflow: the study is one parent run (space,
sampler, best trial, plots), each trial a child run (a pruned one KILLED, tag optuna.state).
The best trial is written as conf/experiment/<tune.preset>.yaml, a recipe for
`python -m lyricist.train experiment=<preset>` and `dvc exp run -S experiment=<preset>`.
"""

from __future__ import annotations

import json
import math
import secrets
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna
import pytorch_lightning as pl
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.trial import TrialState
from pytorch_lightning.loggers import MLFlowLogger

from lyricist.data.corpus import write_text
from lyricist.errors import run_cli
from lyricist.project import project_root
from lyricist.tracking import store
from lyricist import settings
from lyricist.train import USER_ERRORS, train
from lyricist.training.module import TrainingDiverged

PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute naming its MLflow parent run
RUN_ATTR = "mlflow_run_id"  # a trial's user attribute naming its child run
FOLDER_ATTR = "output_folder"  # the study's own folder in outputs/tune/<study_name>/ (tune.output_dir null)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
NOT_IN_PRESET = ("logger", "paths", "tune", "hydra", "train.resume", "train.overwrite")


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """conf/config.yaml with `overrides` and the `tune` group (`tune=<name>` picks another file)."""
    picked = [o for o in overrides if o.split("=")[0].lstrip("+") == "tune"]
    rest = [o for o in overrides if o not in picked]
    group = ["+tune=" + picked[-1].split("=", 1)[1]] if picked else ["+tune=default"]
    with initialize_config_dir(config_dir=str(project_root() / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=group + rest)


def space_of(t: DictConfig) -> dict:
    """tune.space as a dict; a key set to null is not searched (a file that builds on another
    drops the other's key so: `trainer.max_epochs: null`)."""
    return {k: v for k, v in OmegaConf.to_container(t.space).items() if v is not None}


def check_space(space: dict) -> None:
    """Refuse a malformed search space by its key before any trial (one line, the fix)."""
    if not space:
        raise ValueError("tune.space has no key left to search (every one null): give at least one, e.g. "
                         "'tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}}'")
    for key, rule in space.items():
        if "choices" in rule:
            if not rule["choices"]:
                raise ValueError(f"tune.space.{key}.choices is empty: give at least one value")
        elif not {"low", "high"} <= rule.keys() or not rule["low"] <= rule["high"]:
            raise ValueError(f"tune.space.{key}={rule} is not a range: give low <= high, e.g. "
                             "{low: 0.001, high: 0.03, log: true}, or choices: [...]")
        elif rule.get("log") and rule["low"] <= 0:
            raise ValueError(f"tune.space.{key}: a log range needs low > 0, got {rule['low']}")


def suggest(trial: optuna.Trial, space: dict, cfg: DictConfig) -> dict:
    """The trial's values, key by key in the order of `space` (a `tied` key follows its key)."""
    values: dict = {}
    for key, rule in space.items():
        tied = rule.get("tied")
        if tied and values.get("model.tie_weights", OmegaConf.select(cfg, "model.tie_weights")):
            values[key] = values.get(tied, OmegaConf.select(cfg, tied))  # not a parameter of its own
        elif "choices" in rule:
            values[key] = trial.suggest_categorical(key, list(rule["choices"]))
        elif all(isinstance(rule[k], int) for k in ("low", "high")) and isinstance(rule.get("step", 1), int):
            values[key] = trial.suggest_int(key, rule["low"], rule["high"], step=rule.get("step", 1),
                                            log=rule.get("log", False))
        else:
            values[key] = trial.suggest_float(key, rule["low"], rule["high"], step=rule.get("step"),
                                              log=rule.get("log", False))
    return values


def recipe_values(space: dict, cfg: DictConfig) -> dict:
    """The composed recipe's own value of every key of `space` that the space can hold (a value off
    its range or choices, and a tied key, is left to the sampler): the trial a search starts from."""
    values = {}
    for key, rule in space.items():
        value = OmegaConf.select(cfg, key)
        inside = value in rule["choices"] if "choices" in rule else (
            isinstance(value, (int, float)) and rule["low"] <= value <= rule["high"])
        if inside and not rule.get("tied"):
            values[key] = value
    return values


def with_values(cfg: DictConfig, values: dict) -> DictConfig:
    """A copy of `cfg` with `values` ({dotted key: value}) set; the `module:` wiring reads them."""
    out = cfg.copy()
    for key, value in values.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def with_fixed(cfg: DictConfig) -> DictConfig:
    """`cfg` with `tune.fixed` set: what every trial trains before its sampled values."""
    return with_values(cfg, OmegaConf.to_container(cfg.tune.fixed or {}))


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random draws for trial k come from `seed + k`: with one fixed seed, two workers
    started together would otherwise draw the same startup trials (each has its own sampler)."""

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(seed=seed, constant_liar=True, **kwargs)  # liar: running trials count as bad
        self.base_seed = seed

    def before_trial(self, study: optuna.Study, trial) -> None:
        # The generators TPESampler keeps (optuna 5.0.0, pinned): its own and its startup sampler's.
        self._rng.rng.seed(self.base_seed + trial.number)
        self._random_sampler._rng.rng.seed(self.base_seed + trial.number + 1_000_003)
        super().before_trial(study, trial)


def make_pruner(t: DictConfig, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """`max_epochs`: every trial's epochs when they are not searched (Hyperband's full budget)."""
    if t.pruner is None:
        return optuna.pruners.NopPruner()
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.pruner_startup_trials,
                                           n_warmup_steps=t.pruner_warmup_epochs)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=t.hyperband_min_epochs,
                                              max_resource=max_epochs or "auto")
    raise ValueError(f"tune.pruner={t.pruner!r} is not known: use median, hyperband or null (no pruning)")


def storage_url(t: DictConfig, root: Path) -> str:
    return t.storage or f"sqlite:///{root / 'optuna.db'}"


def make_storage(t: DictConfig, root: Path, on_stale=None) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose worker was killed (no heartbeat for
    grace_period) is marked FAIL by the next worker to start a trial and enqueued again."""
    url = storage_url(t, root)
    # SQLite: concurrent workers wait for the write lock instead of failing at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)

    def stale(study: optuna.Study, trial) -> None:
        if on_stale:
            on_stale(trial)
        retry(study, trial)

    return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=t.heartbeat_interval,
                                      grace_period=t.grace_period, heartbeat_stale_trial_callback=stale)


class PruningCallback(pl.Callback):
    """Reports each epoch's val/ppl to the trial and stops a hopeless one: the epoch ends as usual
    (its metrics.csv row, checkpoints, MLflow run) and `pruned` says why the objective prunes it.
    At the start, ties the trial and its MLflow child run to each other."""

    def __init__(self, trial: optuna.Trial, deadline: float = math.inf) -> None:
        self.trial, self.deadline, self.pruned, self.cut = trial, deadline, None, None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                self.trial.set_user_attr(RUN_ATTR, logger.run_id)
                store.with_retry(lambda: logger.experiment.set_tag(logger.run_id, "optuna.trial", self.trial.number))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or "val/ppl" not in trainer.callback_metrics:
            return
        epoch, ppl = trainer.current_epoch, float(trainer.callback_metrics["val/ppl"])
        self.trial.report(ppl if math.isfinite(ppl) else 1e12, step=epoch)
        if self.trial.should_prune():
            self.pruned = f"epoch {epoch}: val/ppl {ppl:.3f}"
        elif time.monotonic() > self.deadline:  # Optuna's timeout only stops new trials from starting
            # Not pruned: its best epoch so far is a fair (pessimistic) value for its recipe, and a
            # search whose last trial is its best must not lose it.
            self.cut = f"epoch {epoch}: the worker's tune.timeout has passed"
        trainer.should_stop = trainer.should_stop or self.pruned is not None or self.cut is not None


def mark_child(tracking_uri: str | None, run_id: str | None, state: str, status: str | None = None) -> None:
    """Tag a trial's child run with its Optuna state; a pruned or killed one is KILLED (not FAILED)."""
    if not (tracking_uri and run_id):
        return
    client = MlflowClient(tracking_uri)
    store.with_retry(lambda: client.set_tag(run_id, "optuna.state", state))
    if status:
        if store.ERROR_TAG in client.get_run(run_id).data.tags:
            store.with_retry(lambda: client.delete_tag(run_id, store.ERROR_TAG))
        store.with_retry(lambda: client.set_terminated(run_id, status))


def objective_for(cfg: DictConfig, out_dir: Path, parent_run_id: str | None, tracking_uri: str | None,
                  deadline: float = math.inf):
    space, study_name = space_of(cfg.tune), cfg.tune.study_name
    base = with_fixed(cfg)
    with open_dict(base):
        base.pop("tune")  # the study's settings are the parent run's params, not each trial's

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space, base)
        trial_cfg = with_values(base, values)
        trial_cfg.logger.run_name = f"trial {trial.number} {study_name}"
        settings.load(trial_cfg)
        pruning = PruningCallback(trial, deadline)
        try:
            metrics = train(trial_cfg, out_dir / f"trial_{trial.number:04d}", parent_run_id=parent_run_id,
                            callbacks=[pruning])
        except TrainingDiverged as err:  # as hopeless as a pruned trial: it stops the search from nothing
            pruning.pruned = str(err)
        if pruning.pruned:
            trial.set_user_attr("pruned", pruning.pruned[:200])
            mark_child(tracking_uri, trial.user_attrs.get(RUN_ATTR), "PRUNED", "KILLED")
            raise optuna.TrialPruned(pruning.pruned)
        mark_child(tracking_uri, trial.user_attrs.get(RUN_ATTR), "COMPLETE")
        trial.set_user_attr("epochs", int(metrics.get("epoch", -1)) + 1)
        if pruning.cut:
            trial.set_user_attr("cut", pruning.cut)
        return float(metrics["val/ppl"])

    return objective


def open_study(cfg: DictConfig, root: Path, tracking_uri: str | None) -> tuple[optuna.Study, str | None]:
    """Create the study, or load it when another worker (or an earlier run) created it. Creating is
    the lock: exactly one worker succeeds and makes the MLflow parent run; the others wait for it."""
    t = cfg.tune

    def on_stale(trial) -> None:  # a killed worker's trial: its child run was left RUNNING
        mark_child(tracking_uri, trial.user_attrs.get(RUN_ATTR), "FAIL (worker killed; retried)", "KILLED")

    space, base = space_of(t), with_fixed(cfg)
    epochs = None if "trainer.max_epochs" in space else base.trainer.max_epochs
    kwargs = dict(storage=make_storage(t, root, on_stale), study_name=t.study_name, direction="minimize",
                  sampler=TrialSeededTPE(t.seed, n_startup_trials=t.n_startup_trials, multivariate=True),
                  pruner=make_pruner(t, epochs))
    try:
        study = optuna.create_study(**kwargs)
        # First, for the other workers wait for it: a new study (a fresh storage) never writes into
        # the folders of an earlier one of the same name.
        study.set_user_attr(FOLDER_ATTR, time.strftime("%Y-%m-%d_%H-%M-%S_") + secrets.token_hex(2))
        created = True
        if t.enqueue_recipe:  # only the creator: the recipe is run once, by whichever worker is free first
            study.enqueue_trial(recipe_values(space, base), user_attrs={"recipe": "conf's own values"})
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**{k: v for k, v in kwargs.items() if k != "direction"}), False
        if not study.trials:  # made a moment ago (one made before FOLDER_ATTR has trials: its folder is "")
            _wait_for(study, FOLDER_ATTR)
    if not tracking_uri:
        return study, None
    if created:
        parent = _create_parent_run(cfg, root, tracking_uri)
        study.set_user_attr(PARENT_ATTR, parent)
        return study, parent
    if PARENT_ATTR in (attrs := _wait_for(study, PARENT_ATTR)):
        return study, attrs[PARENT_ATTR]
    parent = _create_parent_run(cfg, root, tracking_uri)  # its creator died before making one
    study.set_user_attr(PARENT_ATTR, parent)
    return study, parent


def _wait_for(study: optuna.Study, key: str) -> dict:
    """The study's user attributes once they hold `key`, which the worker that created the study
    sets; without it after a minute (that worker died in between)."""
    for _ in range(120):
        if key in (attrs := study.user_attrs):
            break
        time.sleep(0.5)
    return attrs


def ensure_experiment(tracking_uri: str, name: str) -> None:
    """store.ensure_experiment, again after a clash: workers starting together on a new SQLite
    store race to create MLflow's tables ("table ... already exists" for all but one)."""
    for attempt in range(5):
        try:
            store.ensure_experiment(tracking_uri, name)
            return
        except store.TrackingError:
            if attempt == 4:
                raise
            time.sleep(1 + attempt)


def _create_parent_run(cfg: DictConfig, root: Path, tracking_uri: str) -> str:
    """The study's parent run, made by the worker that created the study: the only one to touch a
    new SQLite store before it exists (workers racing to create MLflow's tables break them)."""
    t = cfg.tune
    ensure_experiment(tracking_uri, cfg.logger.experiment_name)
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(cfg.logger.experiment_name).experiment_id
    run = store.with_retry(lambda: client.create_run(
        experiment_id, run_name=f"tune {t.study_name}",
        tags={"tune": "parent", "optuna.study": t.study_name, "git_commit": store.git_commit(root)}))
    run_id = run.info.run_id
    sampler = {"sampler": "TPE", "seed": t.seed, "n_startup_trials": t.n_startup_trials, "multivariate": True,
               "constant_liar": True, "pruner": t.pruner, "n_trials": t.n_trials, "timeout": t.timeout,
               "enqueue_recipe": t.enqueue_recipe}
    params = {f"tune.{k}": v for k, v in sampler.items()}
    space = space_of(t)
    params.update({f"space.{k}": json.dumps(v) for k, v in space.items()})
    store.with_retry(lambda: client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]))
    space_yaml = OmegaConf.to_yaml(OmegaConf.create(space))
    store.with_retry(lambda: client.log_text(run_id, space_yaml, "search_space.yaml"))
    return run_id


def trials_table(study: optuna.Study) -> str:
    """Every trial: number, state, val/ppl, epochs, values (markdown)."""
    keys = sorted({k for tr in study.trials for k in tr.params})
    lines = ["| trial | state | val ppl | epochs | " + " | ".join(keys) + " |",
             "|---" * (4 + len(keys)) + "|"]
    for tr in study.trials:
        value = (f"{tr.value:.3f}" if tr.value is not None else
                 f"({tr.intermediate_values[max(tr.intermediate_values)]:.3f})" if tr.intermediate_values else "–")
        epochs = tr.user_attrs.get("epochs", len(tr.intermediate_values) or "–")
        cells = [_short(tr.params[k]) if k in tr.params else "–" for k in keys]
        state = tr.state.name + "".join(f" ({note})" for note, attr in (("the recipe", "recipe"), ("timeout", "cut"))
                                        if attr in tr.user_attrs)
        lines.append(f"| {tr.number} | {state} | {value} | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def importances(study: optuna.Study) -> dict:
    """fANOVA importance of each parameter over the complete trials ({} with fewer than 3)."""
    if len(study.get_trials(states=(TrialState.COMPLETE,))) < 3:
        return {}
    return {k: float(v) for k, v in optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)).items()}


def best_values(cfg: DictConfig, study: optuna.Study) -> dict:
    """The best trial's values for every key of the space (tied keys re-derived)."""
    best = study.best_trial
    fixed_trial = optuna.trial.FixedTrial(best.params, number=best.number)
    return suggest(fixed_trial, space_of(cfg.tune), cfg)


def write_preset(cfg: DictConfig, overrides: Sequence[str], study: optuna.Study, root: Path) -> Path | None:
    """conf/experiment/<preset>.yaml: the corpus and the other command-line choices, then the best
    trial's values: `python -m lyricist.train experiment=<preset>` trains the recipe."""
    t = cfg.tune
    if not t.preset or not study.get_trials(states=(TrialState.COMPLETE,)):
        return None
    groups = [o.split("=", 1) for o in overrides if "=" in o and "." not in o.split("=")[0]
              and o.split("=")[0].lstrip("+").split("/")[0] not in ("tune", "experiment", "logger", "hydra")]
    values = {k: v for k, v in (o.split("=", 1) for o in overrides if "=" in o and "." in o.split("=")[0])
              if not k.lstrip("+").startswith(NOT_IN_PRESET)}
    node = OmegaConf.create({})
    for key, value in values.items():  # command-line values, parsed as Hydra would (yaml)
        OmegaConf.update(node, key.lstrip("+"), _yaml(value))
    for key, value in best_values(cfg, study).items():
        OmegaConf.update(node, key, value)
    best = study.best_trial
    header = [f"# @package _global_",
              f"# Written by `python -m lyricist.tune` ({' '.join(overrides)}): study {t.study_name!r},",
              f"# trial {best.number} of {len(study.trials)}, val ppl {best.value:.4f} (train.seed "
              f"{cfg.train.seed}; the best of a search on val: retrain on fresh seeds before quoting it,",
              "# `python -m lyricist.seeds --seeds 3 experiment=<this> train.seed=1000`)."]
    defaults = [{f"override /{k.lstrip('+')}": v} for k, v in groups]
    body = OmegaConf.to_yaml(OmegaConf.create({"defaults": defaults + ["_self_"], **OmegaConf.to_container(node)}))
    path = Path(t.preset_dir or root / "conf" / "experiment") / f"{t.preset}.yaml"
    write_text(path, "\n".join(header) + "\n" + body)
    return path


def _yaml(value: str):
    """A command-line value as Hydra reads it (`0.5` a float, `[1,2]` a list, `null` None)."""
    return OmegaConf.create(f"v: {value}").v


def report(cfg: DictConfig, overrides: Sequence[str], study: optuna.Study, root: Path, out_dir: Path,
           parent: str | None, tracking_uri: str | None) -> str:
    """The study's table, importances, best trial and preset: files in out_dir, the parent run."""
    table = trials_table(study)
    imp = importances(study)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    best = study.best_trial if complete else None
    preset = write_preset(cfg, overrides, study, root)
    summary = {"study": cfg.tune.study_name, "trials": len(study.trials),
               "states": {s.name: len(study.get_trials(states=(s,))) for s in TrialState},
               "best_trial": best.number if best else None, "best_val_ppl": best.value if best else None,
               "best_values": best_values(cfg, study) if best else None, "importances": imp,
               "preset": str(preset) if preset else None}
    write_text(out_dir / "trials.md", table)
    write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    if parent:
        client = MlflowClient(tracking_uri)
        store.with_retry(lambda: client.log_text(parent, table, "trials.md"))
        store.with_retry(lambda: client.log_text(parent, json.dumps(summary, indent=1), "summary.json"))
        for name, value in summary["states"].items():
            store.with_retry(lambda: client.log_metric(parent, f"trials/{name.lower()}", value))
        if best:
            store.with_retry(lambda: client.log_metric(parent, "best/val_ppl", best.value))
            tags = {"best_trial": str(best.number), **{f"best.{k}": str(v) for k, v in summary["best_values"].items()}}
            best_run = best.user_attrs.get(RUN_ATTR)
            if best_run:
                tags["best_child_run_id"] = best_run
            for k, v in tags.items():
                store.with_retry(lambda: client.set_tag(parent, k, v))
            _log_plots(client, parent, study, bool(imp))
        running = study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
        if not running:  # the last worker to finish closes the parent run
            store.with_retry(lambda: client.set_terminated(parent, "FINISHED"))
    return table


def _log_plots(client: MlflowClient, parent: str, study: optuna.Study, with_importance: bool) -> None:
    """Optuna's optimisation-history (and parameter-importance) plots, as HTML (plotly)."""
    from optuna import visualization

    plots = {"optimization_history": visualization.plot_optimization_history(study)}
    if with_importance:
        plots["param_importances"] = visualization.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    for name, fig in plots.items():
        html = fig.to_html(include_plotlyjs="cdn")
        store.with_retry(lambda: client.log_text(parent, html, f"plots/{name}.html"))


def main(argv: Sequence[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(o in ("-h", "--help") for o in overrides):
        print(__doc__)
        return 0
    cfg = compose_config(overrides)
    t = cfg.tune
    root = project_root(cfg.paths.root)
    check_space(space_of(t))
    settings.load(with_fixed(cfg))  # all of it, the fixed part too, before any trial
    if t.n_trials is not None and t.n_trials < 1 or t.timeout is not None and t.timeout <= 0:
        raise ValueError(f"tune.n_trials={t.n_trials}, tune.timeout={t.timeout}: give n_trials >= 1 and "
                         "timeout > 0 seconds (or null for no limit)")
    make_pruner(t)  # a bad name fails here
    tracking_uri = store.resolve_tracking_uri(cfg.logger.tracking_uri, root) if cfg.logger.enabled else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and their retry callback are "experimental" in optuna 5.0 (pinned): said once here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study, parent = open_study(cfg, root, tracking_uri)
    out_dir = Path(t.output_dir or root / "outputs" / "tune" / t.study_name / study.user_attrs.get(FOLDER_ATTR, ""))
    callbacks = []
    if t.n_trials is not None:  # the study's budget over all workers, not each worker's
        callbacks.append(optuna.study.MaxTrialsCallback(t.n_trials, states=FINISHED))
    done = len(study.get_trials(states=FINISHED))
    if t.n_trials is None or done < t.n_trials:
        print(f"tune: study {t.study_name!r} in {storage_url(t, root).split('@')[-1]}: {done} trials finished, "
              f"budget {t.n_trials} trials / {t.timeout} s", flush=True)
        deadline = time.monotonic() + (t.timeout or math.inf)
        study.optimize(objective_for(cfg, out_dir, parent, tracking_uri, deadline), timeout=t.timeout,
                       callbacks=callbacks, catch=())
    table = report(cfg, overrides, study, root, out_dir, parent, tracking_uri)
    print(f"\n{table}\ntune: {out_dir / 'trials.md'}, {out_dir / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, (*USER_ERRORS, ConfigCompositionException)))
