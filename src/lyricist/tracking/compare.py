"""Compare MLflow runs: a PNG of the per-epoch curves and a markdown table, best first.

    python -m lyricist.tracking.compare                                  # the 20 best runs of "lyricist"
    python -m lyricist.tracking.compare --filter "params.model.cell = 'lstm'" --train
    python -m lyricist.tracking.compare --parent-run-id <sweep parent id>  # one sweep's jobs

Runs are ranked by the lowest value of `--metric` (default val/ppl) over their epochs,
computed from the metric's history, so unfinished runs (no `best/val_ppl` yet) rank too.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogFormatter, MaxNLocator
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from lyricist.data.corpus import atomic_write_bytes, write_text
from lyricist.tracking import store

TABLE_PARAMS = ("model.cell", "data.sampling", "model.hidden_size")


@dataclass
class RunSummary:
    run_id: str
    run_name: str
    params: dict[str, str]
    curve: list[tuple[int, float]]  # (epoch, value) of the ranked metric, by epoch
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    final_train_ppl: float | None = None
    duration_s: float | None = None  # None while the run is still going
    status: str = "FINISHED"

    @property
    def best(self) -> tuple[int, float]:
        """(epoch, value) of the lowest point of the curve."""
        return min(self.curve, key=lambda point: point[1])


def metric_curve(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """One value per step; a resumed run may log a step twice, the later value wins."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)  # stable: ties keep order
    return sorted({m.step: m.value for m in history}.items())


def train_counterpart(metric: str) -> str | None:
    """val/ppl -> train/ppl: the curve drawn dashed beside it."""
    return "train/" + metric[len("val/"):] if metric.startswith("val/") else None


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every matching active run (search_runs pages at 1000)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        if not (token := page.token):
            return runs


def collect_runs(client: MlflowClient, experiment_id: str, filter_string: str = "",
                 parent_run_id: str | None = None, max_runs: int = 20,
                 metric: str = "val/ppl") -> list[RunSummary]:
    """The `max_runs` runs with the lowest `metric`, best first. Runs that never logged
    it (a sweep's parent run, a run that failed before its first epoch) are left out."""
    clauses = [filter_string.strip()] if filter_string and filter_string.strip() else []
    if parent_run_id:
        # MLflow's filter grammar has AND only (no parentheses), so clauses just join.
        clauses.append(f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    train_metric = train_counterpart(metric)
    summaries = []
    for run in search_all(client, experiment_id, " and ".join(clauses)):
        curve = metric_curve(client, run.info.run_id, metric)
        if not curve:
            continue
        end, start = run.info.end_time, run.info.start_time
        summaries.append(RunSummary(
            run_id=run.info.run_id, run_name=run.info.run_name or run.info.run_id,
            params=dict(run.data.params), curve=curve,
            train_curve=metric_curve(client, run.info.run_id, train_metric) if train_metric else [],
            final_train_ppl=run.data.metrics.get("train/ppl"),  # the latest step's value
            duration_s=(end - start) / 1000 if end and start else None,
            status=run.info.status))
    summaries.sort(key=lambda s: s.best[1])
    return summaries[:max_runs]


def plot_curves(summaries: list[RunSummary], path: str | Path, metric: str = "val/ppl",
                with_train: bool = False, title: str | None = None) -> Path:
    """One solid line per run (the ranked metric), its train counterpart dashed in the
    same colour when `with_train`. Log y: perplexities fall by orders of magnitude."""
    # A bare Figure draws with the Agg canvas: no display, no pyplot global state.
    fig = Figure(figsize=(11, 6), layout="constrained")
    ax = fig.add_subplot()
    for i, s in enumerate(summaries):
        color = f"C{i % 10}"
        epochs, values = zip(*s.curve)
        ax.plot(epochs, values, color=color, marker="o" if len(epochs) < 30 else None,
                markersize=3, label=f"{s.run_name} ({s.run_id[:8]}) {s.best[1]:.2f}")
        if with_train and s.train_curve:
            ax.plot(*zip(*s.train_curve), color=color, linestyle="--", linewidth=1, alpha=0.8)
    ax.set_yscale("log")
    # Plain numbers on the log axis (317, not 3.17x10^2) and whole epochs on x. "%g", not
    # ScalarFormatter, whose shared offset turns every label into 0.000 when a run spans 1e7.
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # thins itself on wide ranges
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (MLflow step)")
    ax.set_ylabel(metric + ("  (dashed: " + train_counterpart(metric) + ")"
                            if with_train and train_counterpart(metric) else ""))
    ax.set_title(title or f"{metric} per epoch, best first")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="run (best)")
    path = Path(path)
    # Drawn in memory, then written atomically: a killed run leaves the old image, not half of one.
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip(".") or "png", dpi=120)
    atomic_write_bytes(path, image.getvalue())
    return path


def _duration(seconds: float | None, status: str) -> str:
    if seconds is None:
        return status.lower()  # RUNNING, or a run killed without set_terminated
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def markdown_table(summaries: list[RunSummary], metric: str = "val/ppl") -> str:
    header = ["run name", "run id", *TABLE_PARAMS, f"best {metric}", "epoch of best",
              "final train/ppl", "epochs", "duration"]
    rows = []
    for s in summaries:
        epoch, best = s.best
        final_train = "" if s.final_train_ppl is None else f"{s.final_train_ppl:.2f}"
        rows.append([s.run_name, s.run_id[:8], *(s.params.get(p, "") for p in TABLE_PARAMS),
                     f"{best:.2f}", str(epoch), final_train, str(len(s.curve)),
                     _duration(s.duration_s, s.status)])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


class CompareError(Exception):
    """A user-facing problem: printed on stderr, exit status 2."""


def open_store(tracking_uri: str) -> MlflowClient:
    """A client for an existing store; fails fast instead of creating or waiting on one."""
    if tracking_uri.startswith("sqlite:///"):
        # MLflow would silently create an empty database at a mistyped path.
        db = Path(tracking_uri[len("sqlite:///"):])
        if not db.is_file():
            raise CompareError(f"no MLflow tracking store at {db} (from {tracking_uri!r}); "
                               "train something first or pass --tracking-uri")
    elif tracking_uri.startswith(("http://", "https://")):
        # MLflow's HTTP client retries for minutes; one quick look first.
        try:
            requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.RequestException as err:
            raise CompareError(f"cannot reach the MLflow tracking server {tracking_uri}: {err}") from err
    return MlflowClient(tracking_uri=tracking_uri)


def find_experiment(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        names = sorted(e.name for e in client.search_experiments())
        raise CompareError(f"no experiment named {name!r}; existing experiments: "
                           + (", ".join(repr(n) for n in names) or "none"))
    return experiment.experiment_id


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lyricist.tracking.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the project's mlflow.db")
    p.add_argument("--experiment", default="lyricist", help="experiment name (default: %(default)s)")
    p.add_argument("--filter", default="", dest="filter_string", metavar="FILTER",
                   help="MLflow search filter, e.g. \"params.model.cell = 'lstm'\"")
    p.add_argument("--parent-run-id", help="only the child runs of this sweep parent run")
    p.add_argument("--max-runs", type=int, default=20, help="keep the N best (default: %(default)s)")
    p.add_argument("--metric", default="val/ppl", help="per-epoch metric to rank and plot, lower is "
                   "better (default: %(default)s)")
    p.add_argument("--train", action="store_true", help="also plot the train/ counterpart, dashed")
    p.add_argument("--out-png", default="reports/compare.png", help="default: %(default)s")
    p.add_argument("--out-md", default="reports/compare.md", help="default: %(default)s")
    args = p.parse_args(argv)
    if args.max_runs < 1:
        p.error("--max-runs must be at least 1")
    # Interpolated into a filter string: only a plain id, no quotes to break out of.
    if args.parent_run_id and not re.fullmatch(r"[0-9A-Za-z_-]+", args.parent_run_id):
        p.error(f"--parent-run-id {args.parent_run_id!r} is not a run id")
    return args


def gather(args: argparse.Namespace, uri: str) -> list[RunSummary]:
    """The runs the command line asks for; every problem becomes a CompareError."""
    try:
        client = open_store(uri)
        experiment_id = find_experiment(client, args.experiment)
        summaries = collect_runs(client, experiment_id, args.filter_string,
                                 args.parent_run_id, args.max_runs, args.metric)
    except MlflowException as err:  # a bad filter string or URI
        raise CompareError(f"MLflow failed on {uri!r}: {err.message}") from err
    except SQLAlchemyError as err:  # not a database, a database server that is down
        reason = getattr(err, "orig", None) or err  # the driver's message, without the SQL
        raise CompareError(f"cannot read the tracking store {uri!r}: {reason}") from err
    if not summaries:
        asked = " and ".join(filter(None, [
            args.filter_string and f"--filter {args.filter_string!r}",
            args.parent_run_id and f"--parent-run-id {args.parent_run_id}"])) or "no filter"
        raise CompareError(f"no runs with a {args.metric!r} history in experiment "
                           f"{args.experiment!r} ({asked}) at {uri}")
    return summaries


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uri = store.resolve_tracking_uri(args.tracking_uri)
    try:
        summaries = gather(args, uri)
    except CompareError as err:
        print(f"lyricist.tracking.compare: error: {err}", file=sys.stderr)
        return 2
    png = plot_curves(summaries, args.out_png, args.metric, args.train,
                      title=f"{args.experiment}: {args.metric} per epoch")
    table = markdown_table(summaries, args.metric)
    md = Path(args.out_md)
    image = Path(os.path.relpath(png, md.parent)).as_posix()  # relative: the report moves with it
    write_text(md, f"# Runs of experiment `{args.experiment}`, by best {args.metric}\n\n"
                   f"![curves]({image})\n\n{table}")
    print(table, end="")
    print(f"\nwrote {md} and {png} ({len(summaries)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
