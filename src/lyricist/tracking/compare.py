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
from dataclasses import dataclass
from pathlib import Path

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
    run: Run
    curve: list[tuple[int, float]]  # (epoch, value) of the ranked metric, by epoch
    train_curve: list[tuple[int, float]]

    @property
    def best(self) -> tuple[int, float]:
        return min(self.curve, key=lambda point: point[1])

    @property
    def name(self) -> str:
        return self.run.info.run_name or self.run.info.run_id

    @property
    def duration(self) -> str:
        end, start = self.run.info.end_time, self.run.info.start_time
        if not (end and start):
            return self.run.info.status.lower()  # RUNNING, or a run killed without set_terminated
        minutes, secs = divmod(round((end - start) / 1000), 60)
        hours, minutes = divmod(minutes, 60)
        return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def metric_curve(client: MlflowClient, run_id: str, key: str | None) -> list[tuple[int, float]]:
    """One value per step; a resumed run may log a step twice, the later value wins."""
    history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp) if key else []
    return sorted({m.step: m.value for m in history}.items())  # sorted is stable: ties keep their order


def train_counterpart(metric: str) -> str | None:
    """val/ppl -> train/ppl: the curve drawn dashed beside it."""
    return "train/" + metric[len("val/"):] if metric.startswith("val/") else None


def collect_runs(client: MlflowClient, experiment_id: str, args: argparse.Namespace) -> list[RunSummary]:
    """The `--max-runs` runs of lowest `--metric`, best first; those without it (a sweep's parent) left out."""
    clauses = [args.filter_string.strip()] if args.filter_string.strip() else []
    if args.parent_run_id:  # MLflow's filter grammar has AND only (no parentheses): clauses just join
        clauses.append(f"tags.`mlflow.parentRunId` = '{args.parent_run_id}'")
    runs, token = [], None
    while True:  # search_runs pages at 1000
        page = client.search_runs([experiment_id], filter_string=" and ".join(clauses), max_results=1000,
                                  page_token=token)
        runs += page
        if not (token := page.token):
            break
    train = train_counterpart(args.metric) if args.train else None
    summaries = [RunSummary(run, curve, metric_curve(client, run.info.run_id, train))
                 for run in runs if (curve := metric_curve(client, run.info.run_id, args.metric))]
    return sorted(summaries, key=lambda s: s.best[1])[:args.max_runs]


def plot_curves(summaries: list[RunSummary], path: Path, metric: str, with_train: bool, title: str) -> None:
    """A line per run, its train curve dashed in its colour; log y: perplexities fall by orders of magnitude."""
    # A bare Figure draws with the Agg canvas: no display, no pyplot global state.
    fig = Figure(figsize=(11, 6), layout="constrained")
    ax = fig.add_subplot()
    for i, s in enumerate(summaries):
        epochs, values = zip(*s.curve)
        ax.plot(epochs, values, color=f"C{i % 10}", marker="o" if len(epochs) < 30 else None,
                markersize=3, label=f"{s.name} ({s.run.info.run_id[:8]}) {s.best[1]:.2f}")
        if with_train and s.train_curve:
            ax.plot(*zip(*s.train_curve), color=f"C{i % 10}", linestyle="--", linewidth=1, alpha=0.8)
    ax.set_yscale("log")
    # Plain numbers on the log axis (317, not 3.17x10^2) and whole epochs on x. "%g", not
    # ScalarFormatter, whose shared offset turns every label into 0.000 when a run spans 1e7.
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))  # thins itself on wide ranges
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    train = train_counterpart(metric)
    ax.set(xlabel="epoch (MLflow step)", ylabel=metric + (f"  (dashed: {train})" if with_train and train else ""),
           title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="run (best)")
    # Drawn in memory, then written atomically: a killed run leaves the old image, not half of one.
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip(".") or "png", dpi=120)
    atomic_write_bytes(path, image.getvalue())


def markdown_table(summaries: list[RunSummary], metric: str) -> str:
    header = ["run name", "run id", *TABLE_PARAMS, f"best {metric}", "epoch of best", "final train/ppl",
              "epochs", "duration"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        epoch, best = s.best
        final_train = s.run.data.metrics.get("train/ppl")  # the latest step's value
        row = [s.name, s.run.info.run_id[:8], *(s.run.data.params.get(p, "") for p in TABLE_PARAMS), f"{best:.2f}",
               str(epoch), "" if final_train is None else f"{final_train:.2f}", str(len(s.curve)), s.duration]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines) + "\n"


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
    """The runs asked for, from a store that exists (MLflow would create one at a mistyped path) and answers."""
    if uri.startswith("sqlite:///") and not (db := Path(uri[len("sqlite:///"):])).is_file():
        raise store.TrackingError(f"no MLflow tracking store at {db} (from {uri!r}); train something first or "
                                  "pass --tracking-uri")
    store.check_reachable(uri)  # a server: asked once, quickly
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            names = sorted(e.name for e in client.search_experiments())
            raise store.TrackingError(f"no experiment named {args.experiment!r}; existing experiments: "
                               + (", ".join(repr(n) for n in names) or "none"))
        summaries = collect_runs(client, experiment.experiment_id, args)
    except MlflowException as err:  # a bad filter string or URI
        raise store.TrackingError(f"MLflow failed on {uri!r}: {err.message}") from err
    except SQLAlchemyError as err:  # not a database, a database server that is down
        reason = getattr(err, "orig", None) or err  # the driver's message, without the SQL
        raise store.TrackingError(f"cannot read the tracking store {uri!r}: {reason}") from err
    if not summaries:
        asked = " and ".join(filter(None, [
            args.filter_string and f"--filter {args.filter_string!r}",
            args.parent_run_id and f"--parent-run-id {args.parent_run_id}"])) or "no filter"
        raise store.TrackingError(f"no runs with a {args.metric!r} history in experiment "
                           f"{args.experiment!r} ({asked}) at {uri}")
    return summaries


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    uri = store.resolve_tracking_uri(args.tracking_uri)
    try:
        summaries = gather(args, uri)
    except store.TrackingError as err:
        print(f"lyricist.tracking.compare: error: {err}", file=sys.stderr)
        return 2
    png, md = Path(args.out_png), Path(args.out_md)
    plot_curves(summaries, png, args.metric, args.train, title=f"{args.experiment}: {args.metric} per epoch")
    table = markdown_table(summaries, args.metric)
    image = Path(os.path.relpath(png, md.parent)).as_posix()  # relative: the report moves with it
    write_text(md, f"# Runs of experiment `{args.experiment}`, by best {args.metric}\n\n"
                   f"![curves]({image})\n\n{table}")
    print(f"{table}\nwrote {md} and {png} ({len(summaries)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
