"""Hyper-parameter search with Optuna (docs/search.md): `tune(settings)` trains sampled recipes in a study any
number of workers share (in MLflow a parent run, a child run a trial); the best becomes a conf/experiment preset."""

from __future__ import annotations

import json
import math
import secrets
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import optuna
import pytorch_lightning as pl
import sqlalchemy
import yaml
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from pytorch_lightning.loggers import MLFlowLogger

from lyricist.data.corpus import write_text
from lyricist.project import project_root
from lyricist.settings import Settings, SpaceRule, TuneSettings, nest, value_at, with_overrides
from lyricist.tracking import inputs, store
from lyricist.training.datamodule import load_encoded
from lyricist.training.module import TrainingDiverged
from lyricist.training.run import train

PARENT_ATTR = "mlflow_parent_run_id"  # the study's user attribute naming its MLflow parent run
FOLDER_ATTR = "output_folder"  # the study's own folder in outputs/tune/<study_name>/ (tune.output_dir null)
RUN_ATTR = "mlflow_run_id"  # a trial's user attribute naming its child run
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
NOT_IN_PRESET = ("logger", "paths", "tune", "hydra", "train.resume", "train.overwrite")


def suggest(trial: optuna.Trial, space: dict[str, SpaceRule], base: Settings) -> dict:
    """The trial's values, key by key in the order of `space` (a `tied` key takes its key's value)."""
    values: dict = {}
    for key, rule in space.items():
        if rule.tied and values.get("model.tie_weights", base.model.tie_weights):
            values[key] = values[rule.tied] if rule.tied in values else value_at(base, rule.tied)
        elif rule.choices is not None:
            values[key] = trial.suggest_categorical(key, rule.choices)
        elif isinstance(rule.low, int):
            values[key] = trial.suggest_int(key, rule.low, rule.high, step=rule.step or 1, log=rule.log)
        else:
            values[key] = trial.suggest_float(key, rule.low, rule.high, step=rule.step, log=rule.log)
    return values


def recipe_values(space: dict[str, SpaceRule], base: Settings) -> dict:
    """The trial a search starts from: the recipe's values that the space holds (the rest, tied keys too, drawn)."""
    values = {key: value_at(base, key) for key, rule in space.items() if not rule.tied}
    return {key: value for key, value in values.items()
            if (value in space[key].choices if space[key].choices is not None else
                isinstance(value, (int, float)) and space[key].low <= value <= space[key].high)}


def rules(t: TuneSettings) -> dict:
    """The space as written (its parent run's params, the study's identity)."""
    return {key: rule.model_dump(exclude_defaults=True) for key, rule in t.space.items()}


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


def make_pruner(t: TuneSettings, max_epochs: int | None = None) -> optuna.pruners.BasePruner:
    """`max_epochs`: every trial's epochs when they are not searched (Hyperband's full budget)."""
    if t.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=t.pruner_startup_trials,
                                           n_warmup_steps=t.pruner_warmup_epochs)
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=t.hyperband_min_epochs,
                                              max_resource=max_epochs or "auto")
    return optuna.pruners.NopPruner()


def storage_url(t: TuneSettings, root: Path) -> str:
    return t.storage or f"sqlite:///{root / 'optuna.db'}"


def make_storage(t: TuneSettings, root: Path, tracking_uri: str | None) -> optuna.storages.RDBStorage:
    """RDB storage with heartbeats: a trial whose worker was killed (no heartbeat for grace_period) is
    marked FAIL (its child run, left RUNNING, KILLED) by the next worker to start a trial, and enqueued again."""
    url = storage_url(t, root)
    # SQLite: concurrent workers wait for the write lock instead of failing at once.
    engine = {"connect_args": {"timeout": 60} if url.startswith("sqlite") else store.connect_args(url)}

    def stale(study: optuna.Study, trial) -> None:
        mark_child(tracking_uri, trial.user_attrs.get(RUN_ATTR), "FAIL (worker killed; retried)", "KILLED")
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(study, trial)

    try:  # workers starting together on a new database race to create its tables: again, after a clash
        return store.with_retry(lambda: optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=t.heartbeat_interval, grace_period=t.grace_period,
            heartbeat_stale_trial_callback=stale), retry_on=("locked", "already exists", "unique constraint"))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as err:  # a bad URL, a missing folder or driver, no server
        reason = " ".join(str(err).split("\n")[0].split())[:300]
        raise ValueError(f"tune.storage={store.shown(url)!r} cannot be opened ({reason}): give a SQLAlchemy URL of a "
                         "database this machine reaches, e.g. sqlite:////abs/path/optuna.db in an existing folder "
                         "or postgresql://user:pw@host/db, or null for <project root>/optuna.db") from None


class PruningCallback(pl.Callback):
    """Ties the trial and its MLflow child run; reports each epoch's val/ppl and stops a hopeless trial
    (`pruned`) or one past the worker's timeout (`cut`) after its epoch (metrics.csv row, checkpoints)."""

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
            # Not pruned: its best epoch is a fair (pessimistic) value, which a search ending on its best keeps.
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


def objective_for(t: TuneSettings, base: Settings, out_dir: Path, parent_run_id: str | None,
                  tracking_uri: str | None, deadline: float = math.inf):
    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, t.space, base)
        trial_settings = with_overrides(base, {**values, "logger.run_name": f"trial {trial.number} {t.study_name}"})
        pruning = PruningCallback(trial, deadline)
        try:
            metrics = train(trial_settings, out_dir / f"trial_{trial.number:04d}", parent_run_id=parent_run_id,
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


def open_study(t: TuneSettings, base: Settings, root: Path, tracking_uri: str | None) -> tuple[optuna.Study, str | None]:
    """Create the study, or load another worker's (refused when of another space or data). Creating is the
    lock: exactly one worker succeeds and makes the MLflow parent run; the others wait for it."""
    # What the study is of: its space and the data its trials read (refused here, as trial 0 would, if unfit).
    encoded = root / base.paths.encoded
    load_encoded(encoded, base.data, base.train.eval_batch_size)
    ours = {"search_space": rules(t), "data_md5": inputs.encoded_md5(encoded)}
    epochs = None if "trainer.max_epochs" in t.space else base.trainer.max_epochs
    kwargs = dict(storage=make_storage(t, root, tracking_uri), study_name=t.study_name,
                  sampler=TrialSeededTPE(t.seed, n_startup_trials=t.n_startup_trials, multivariate=True),
                  pruner=make_pruner(t, epochs))
    try:
        study = optuna.create_study(direction="minimize", **kwargs)
        for key, value in ours.items():
            study.set_user_attr(key, value)
        # Last, as the other workers wait for it: a new study never writes into an earlier namesake's folders.
        study.set_user_attr(FOLDER_ATTR, time.strftime("%Y-%m-%d_%H-%M-%S_") + secrets.token_hex(2))
        if t.enqueue_recipe:  # only the creator: the recipe is run once, by whichever worker is free first
            study.enqueue_trial(recipe_values(t.space, base), user_attrs={"recipe": "conf's own values"})
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
        if not study.trials:  # made a moment ago (one made before FOLDER_ATTR has trials: its folder is "")
            _wait_for(study, FOLDER_ATTR)
        theirs = {key: study.user_attrs.get(key, value) for key, value in ours.items()}  # none: a study from before
        if theirs != ours:
            a, b = theirs["search_space"], ours["search_space"]
            differ = sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))
            what = f"another search space ({', '.join(differ)} differ)" if differ else "other encoded data"
            raise ValueError(f"tune.study_name={t.study_name!r} in {store.shown(storage_url(t, root))} is a study of "
                             f"{what}: give this search a new name, e.g. tune.study_name={t.study_name}_2")
        if tracking_uri:
            _wait_for(study, PARENT_ATTR)
    if tracking_uri and PARENT_ATTR not in study.user_attrs:  # created here, or its creator died first
        study.set_user_attr(PARENT_ATTR, _create_parent_run(t, base, root, tracking_uri))
    return study, study.user_attrs.get(PARENT_ATTR)


def _wait_for(study: optuna.Study, key: str) -> None:
    """Until the study holds the user attribute `key` that its creator sets, a minute at most (it died)."""
    for _ in range(120):
        if key in study.user_attrs:
            return
        time.sleep(0.5)


def _create_parent_run(t: TuneSettings, base: Settings, root: Path, tracking_uri: str) -> str:
    """The study's parent run, made by the worker that created the study: the only one to touch a
    new SQLite store before it exists (workers racing to create MLflow's tables break them)."""
    sampler = {"sampler": "TPE", "multivariate": True, "constant_liar": True,
               **t.model_dump(include={"seed", "n_startup_trials", "pruner", "n_trials", "timeout", "enqueue_recipe"})}
    params = {**{f"tune.{k}": v for k, v in sampler.items()}, **{f"space.{k}": json.dumps(v) for k, v in rules(t).items()}}
    client, run_id = store.open_parent_run(tracking_uri, base.logger.experiment_name, f"tune {t.study_name}",
                                           {"tune": "parent", "optuna.study": t.study_name}, root, params)
    store.with_retry(lambda: client.log_text(run_id, yaml.safe_dump(rules(t), sort_keys=False), "search_space.yaml"))
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
        cells = [f"{v:.3g}" if isinstance(v := tr.params.get(k, "–"), float) else str(v) for k in keys]
        state = tr.state.name + "".join(f" ({note})" for note, attr in (("the recipe", "recipe"), ("timeout", "cut"))
                                        if attr in tr.user_attrs)
        lines.append(f"| {tr.number} | {state} | {value} | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def importances(study: optuna.Study) -> dict:
    """fANOVA importance of each parameter over the complete trials ({} with fewer than 3)."""
    if len(study.get_trials(states=(TrialState.COMPLETE,))) < 3:
        return {}
    return {k: float(v) for k, v in optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)).items()}


def write_preset(s: Settings, overrides: Sequence[str], study: optuna.Study, best_values: dict, root: Path) -> Path:
    """conf/experiment/<preset>.yaml, the command line's groups and values, then the best trial's: a recipe to train."""
    t, best = s.tune, study.best_trial
    pairs = [(k.lstrip("+"), v) for k, eq, v in (o.partition("=") for o in overrides) if eq]
    groups = [{f"override /{k}": v} for k, v in pairs
              if "." not in k and k.split("/")[0] not in ("tune", "experiment", "logger", "hydra")]
    values = {k: value_at(s, k) for k, _ in pairs if "." in k and not k.startswith(NOT_IN_PRESET)}
    node = nest({**values, **best_values})
    header = [f"# @package _global_",
              f"# Written by `python -m lyricist.tune` ({' '.join(overrides)}): study {t.study_name!r},",
              f"# trial {best.number} of {len(study.trials)}, val ppl {best.value:.4f} (train.seed "
              f"{s.train.seed}; the best of a search on val: retrain on fresh seeds before quoting it,",
              "# `python -m lyricist.seeds --seeds 3 experiment=<this> train.seed=1000`)."]
    body = yaml.safe_dump({"defaults": groups + ["_self_"], **node}, sort_keys=False, allow_unicode=True)
    path = Path(t.preset_dir or root / "conf" / "experiment") / f"{t.preset}.yaml"
    write_text(path, "\n".join(header) + "\n" + body)
    return path


def report(s: Settings, base: Settings, overrides: Sequence[str], study: optuna.Study, root: Path, out_dir: Path,
           parent: str | None, tracking_uri: str | None) -> str:
    """The study's table, importances, best trial and preset: files in out_dir, the parent run."""
    table, imp = trials_table(study), importances(study)
    best = study.best_trial if study.get_trials(states=(TrialState.COMPLETE,)) else None
    # The best trial's values for every key of the space (tied keys re-derived).
    values = suggest(optuna.trial.FixedTrial(best.params, number=best.number), s.tune.space, base) if best else None
    preset = write_preset(s, overrides, study, values, root) if best and s.tune.preset else None
    summary = {"study": s.tune.study_name, "trials": len(study.trials),
               "states": {st.name: len(study.get_trials(states=(st,))) for st in TrialState},
               "best_trial": best.number if best else None, "best_val_ppl": best.value if best else None,
               "best_values": values, "importances": imp, "preset": str(preset) if preset else None}
    write_text(out_dir / "trials.md", table)
    write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    if parent:
        client, now = MlflowClient(tracking_uri), int(time.time() * 1000)
        for name, text in (("trials.md", table), ("summary.json", json.dumps(summary, indent=1))):
            store.with_retry(lambda: client.log_text(parent, text, name))
        metrics = {f"trials/{name.lower()}": value for name, value in summary["states"].items()}
        tags = {}
        if best:
            metrics["best/val_ppl"] = best.value
            tags = {"best_trial": str(best.number), **{f"best.{k}": str(v) for k, v in values.items()},
                    **({"best_child_run_id": best.user_attrs[RUN_ATTR]} if RUN_ATTR in best.user_attrs else {})}
            _log_plots(client, parent, study, bool(imp))
        store.with_retry(lambda: client.log_batch(parent, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()]))
        # Two workers finishing at once insert the same new tag: the loser's retry updates it.
        store.with_retry(lambda: client.log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()]),
                         retry_on=("locked", "unique constraint"))
        if not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING)):  # the last worker closes it
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


def tune(s: Settings, overrides: Sequence[str] = ()) -> tuple[str, Path]:
    """Run `s.tune`'s search until its budget is spent: its table and folder (`overrides`: for the preset)."""
    t, root = s.tune, project_root(s.paths.root)
    base = with_overrides(s, t.fixed).model_copy(update={"tune": None})  # what every trial trains before its values
    tracking_uri = store.resolve_tracking_uri(s.logger.tracking_uri, root) if s.logger.enabled else None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and their retry callback are "experimental" in optuna 5.0 (pinned): said once here.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if tracking_uri:  # before the study exists: a study without its parent run would wait for it
        store.check_reachable(tracking_uri)
    study, parent = open_study(t, base, root, tracking_uri)
    # Optuna fails a dead worker's trial only as a trial starts: a worker joining a spent budget starts none.
    optuna.storages.fail_stale_trials(study)
    out_dir = Path(t.output_dir or root / "outputs" / "tune" / t.study_name / study.user_attrs.get(FOLDER_ATTR, ""))
    done = len(study.get_trials(states=FINISHED))
    retries = len(study.get_trials(states=(TrialState.WAITING,)))  # killed workers' trials, enqueued again
    if t.n_trials is None or done < t.n_trials or retries:
        print(f"tune: study {t.study_name!r} in {store.shown(storage_url(t, root))}: {done} trials finished, "
              f"budget {t.n_trials} trials / {t.timeout} s", flush=True)
        # The budget is the study's over all workers, not each worker's; a killed trial enqueued again runs even
        # when the other workers spent the budget before it was found dead (it is taken before any new trial).
        callbacks = ([optuna.study.MaxTrialsCallback(max(t.n_trials, done + retries), states=FINISHED)]
                     if t.n_trials else [])
        deadline = time.monotonic() + (t.timeout or math.inf)
        study.optimize(objective_for(t, base, out_dir, parent, tracking_uri, deadline), timeout=t.timeout,
                       callbacks=callbacks, catch=())
    return report(s, base, overrides, study, root, out_dir, parent, tracking_uri), out_dir
