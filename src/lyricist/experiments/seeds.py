"""One recipe over several seeds, each trained into <out>/seed<k>/ (its MLflow run under one parent run) and
scored as the evaluate stage scores it: mean ± sample standard deviation (a run's perplexity is uncertain by its
seed noise), over the Kneser-Ney model's; `ensemble` scores the seeds' best checkpoints as one averaging model."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from lyricist.checkpoint import load_checkpoint
from lyricist.data.corpus import write_text
from lyricist.evaluation.evaluate import ROWS as EVALUATION_ROWS, evaluate_checkpoint, evaluation_settings
from lyricist.project import project_root
from lyricist.settings import Settings, with_overrides
from lyricist.tracking import serving, store
from lyricist.training.run import train

# The rows of the table: (name, key prefix in reports/metrics.json's flat names), the evaluator's.
ROWS = [(title, prefix) for row in EVALUATION_ROWS for _, title, prefix in row.lines]


def evaluate_run(checkpoint: str | Path | list, s: Settings, static: bool) -> dict:
    """reports/metrics.json's numbers for `checkpoint` (or an ensemble), as the evaluate stage's."""
    options = evaluation_settings(s)
    if static:
        options["evaluate"] = options["evaluate"].model_copy(update={"dynamic_lrs": [], "krause_lrs": []})
    # The cache reads val and test once (no updates): cheap, so kept with --static too.
    return evaluate_checkpoint(checkpoint, project_root(s.paths.root) / s.paths.encoded, **options)[0].as_flat_dict()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict], ensemble: dict | None = None) -> str:
    """The markdown table of `runs` (one dict of metrics per seed, plus "seconds" and "parameters")."""
    def cell(key: str) -> str:
        values = [r[key] for r in runs if key in r]
        return "{:.1f} ± {:.1f}".format(*mean_std(values)) if values else "–"

    def ratio(key: str, split: str) -> str:
        values = [r[key] / r[f"ngram_{split}_ppl"] for r in runs if key in r and f"ngram_{split}_ppl" in r]
        return f"{statistics.fmean(values):.2f}x" if values else "–"

    seconds = statistics.fmean(r["seconds"] for r in runs)
    lines = [f"{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}); train {seconds:.0f} s per seed; "
             f"{runs[0]['parameters']:,} parameters; best epoch {cell('epoch')}", "",
             "| perplexity | val | test | val / KN | test / KN |" + (" ensemble val | ensemble test |" if ensemble else ""),
             "|---|---|---|---|---|" + ("---|---|" if ensemble else "")]
    for name, prefix in ROWS:
        val, test = f"{prefix}val_ppl", f"{prefix}test_ppl"
        if not any(val in r for r in runs):
            continue
        row = f"| {name} | {cell(val)} | {cell(test)} | {ratio(val, 'val')} | {ratio(test, 'test')} |"
        if ensemble:
            row += "".join(f" {ensemble[k]:.1f} |" if k in ensemble else " – |" for k in (val, test))
        lines.append(row)
    return "\n".join(lines) + "\n"


def write_summary(out: Path, command: Sequence[str], n: int, runs: list[dict], ensemble: dict | None) -> str:
    """summary.json and summary.md of the seeds finished so far (atomically); the table."""
    table = summarize(runs, ensemble)
    done = "" if len(runs) == n else f" ({len(runs)} of {n} seeds so far)"
    write_text(out / "summary.json", json.dumps({"overrides": list(command), "seeds": n, "runs": runs,
                                                 "ensemble": ensemble}, indent=1) + "\n")
    write_text(out / "summary.md", f"`python -m lyricist.seeds --seeds {n} {' '.join(command)}`{done}\n\n{table}")
    return table


def run_seeds(s: Settings, out: Path, n: int, ensemble: bool = False, static: bool = False,
              log_ensemble: bool = False, command: Sequence[str] = ()) -> str:
    """Train and score seeds train.seed ... +n-1 into `out`: the table (`command`: the overrides, as recorded)."""
    seeds, root, parent = [s.train.seed + k for k in range(n)], project_root(s.paths.root), None
    uri = store.resolve_tracking_uri(s.logger.tracking_uri, root) if s.logger.enabled else None
    if uri:
        client, parent = store.open_parent_run(uri, s.logger.experiment_name, f"seeds {seeds[0]}..{seeds[-1]} "
                                               f"{' '.join(command)}", {"seeds": "parent"}, root)
    try:
        runs = []
        for seed in seeds:
            seeded = with_overrides(s, {"train.seed": seed})
            start = time.perf_counter()
            train(seeded, out / f"seed{seed}", parent_run_id=parent)
            seconds = time.perf_counter() - start
            best = out / f"seed{seed}" / "checkpoints" / "best.ckpt"
            metrics = evaluate_run(best, seeded, static)
            runs.append({"seed": seed, "seconds": seconds, "checkpoint": str(best),
                         "parameters": sum(p.numel() for p in load_checkpoint(best).model.parameters()), **metrics})
            print(f"seeds: seed {seed}: val {metrics['val_ppl']:.2f}, test {metrics.get('test_ppl', float('nan')):.2f} "
                  f"({seconds:.0f} s)", flush=True)
            write_summary(out, command, n, runs, None)  # after every seed: a stopped run keeps the seeds it finished
        scored = evaluate_run([r["checkpoint"] for r in runs], seeded, static) if ensemble and len(runs) > 1 else None
        table = write_summary(out, command, n, runs, scored)
        if parent:
            for key in ("val_ppl", "test_ppl"):
                if values := [r[key] for r in runs if key in r]:
                    mean, std = mean_std(values)
                    store.with_retry(lambda: client.log_metric(parent, f"seeds/{key}_mean", mean))
                    store.with_retry(lambda: client.log_metric(parent, f"seeds/{key}_std", std))
            store.with_retry(lambda: client.log_text(parent, table, "seeds.md"))
            if log_ensemble:
                serving.log_pyfunc_model(uri, parent, [r["checkpoint"] for r in runs], s.logger)
            store.with_retry(lambda: client.set_terminated(parent, "FINISHED"))
        return table
    except BaseException as err:
        if parent:  # not left RUNNING: FAILED, with the reason as a tag
            store.mark_failed(uri, parent, err)
        raise
