"""Train one configuration over several seeds, score each as the evaluate stage does, and report
mean ± standard deviation: a single run's perplexity is uncertain by its seed noise.

    python -m lyricist.seeds --seeds 3                          # the default config, seeds 42, 43, 44
    python -m lyricist.seeds --seeds 3 --ensemble model=gru     # Hydra overrides after the options
    python -m lyricist.seeds --seeds 3 --static                 # skip dynamic evaluation (faster)
    python -m lyricist.seeds --seeds 3 --log-ensemble           # the ensemble as a servable MLflow model

Seed k trains with `train(cfg)` into <out>/seed<k>/ (with MLflow, its run nested under one
parent run), then is scored with the `evaluate` settings of the config and a Kneser-Ney model
fit on the same train split. `--ensemble` scores the seeds' best checkpoints once more as one
model averaging their probabilities. <out>/summary.json holds every number, <out>/summary.md
the table (sample standard deviation over seeds, and each mean over the KN model's), both
written again after every seed: a stopped run keeps the seeds it finished.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from lyricist.checkpoint import load_checkpoint
from lyricist.data.corpus import write_text
from lyricist.evaluation.evaluate import ROWS as EVALUATION_ROWS, evaluate_checkpoint, evaluation_settings
from lyricist.project import project_root
from lyricist.tracking import serving, store
from lyricist.errors import run_cli
from lyricist import settings
from lyricist.train import USER_ERRORS, train

MAX_SEEDS = 100  # each seed is a whole training run; the standard error shrinks as 1/sqrt(seeds)
# The rows of the table: (name, key prefix in reports/metrics.json's flat names), the evaluator's.
ROWS = [(title, prefix) for row in EVALUATION_ROWS for _, title, prefix in row.lines]


def evaluate_run(checkpoint: str | Path | list, cfg: DictConfig, data_dir: Path, static: bool) -> dict:
    """reports/metrics.json's numbers for `checkpoint` (or an ensemble), as the evaluate stage
    (with a Kneser-Ney model fit here on the same train split); `static`: no dynamic evaluation."""
    options = evaluation_settings(settings.load(cfg))
    if static:
        options["evaluate"] = options["evaluate"].model_copy(update={"dynamic_lrs": [], "krause_lrs": []})
    # The cache reads val and test once (no updates): cheap, so kept with --static too.
    return evaluate_checkpoint(checkpoint, data_dir, **options)[0].as_flat_dict()


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict], ensemble: dict | None = None) -> str:
    """The markdown table of `runs` (one dict of metrics per seed, plus "seconds" and "parameters")."""
    def cell(key: str) -> str:
        values = [r[key] for r in runs if key in r]
        if not values:
            return "–"
        mean, std = mean_std(values)
        return f"{mean:.1f} ± {std:.1f}"

    def ratio(key: str, split: str) -> str:
        values = [r[key] / r[f"ngram_{split}_ppl"] for r in runs if key in r and f"ngram_{split}_ppl" in r]
        return f"{statistics.fmean(values):.2f}x" if values else "–"

    seconds, _ = mean_std([r["seconds"] for r in runs])
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


def _parent_run(cfg: DictConfig, root: Path, overrides: list[str], seeds: list[int]) -> tuple[MlflowClient, str, str] | None:
    if not cfg.logger.enabled:
        return None
    uri = store.resolve_tracking_uri(cfg.logger.tracking_uri, root)
    experiment_id = store.ensure_experiment(uri, cfg.logger.experiment_name)
    client = MlflowClient(uri)
    run = store.with_retry(lambda: client.create_run(
        experiment_id, run_name=f"seeds {seeds[0]}..{seeds[-1]} {' '.join(overrides)}"[:250],
        tags={"seeds": "parent", "git_commit": store.git_commit(root)}))
    return client, run.info.run_id, uri


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds: train.seed, +1, ... (default 3)")
    parser.add_argument("--out", help="output folder (default outputs/seeds/<date-time>)")
    parser.add_argument("--ensemble", action="store_true", help="also score the seeds' ensemble")
    parser.add_argument("--static", action="store_true", help="skip dynamic evaluation")
    parser.add_argument("--log-ensemble", action="store_true",
                        help="log the seeds' ensemble as the MLflow parent run's `model` (pyfunc, servable)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=gru train.seed=1")
    args = parser.parse_args(argv)
    if not 1 <= args.seeds <= MAX_SEEDS:
        parser.error(f"--seeds must be in 1..{MAX_SEEDS} (each seed is a whole training run), got {args.seeds}")
    root = project_root()
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)
    root = project_root(cfg.paths.root)
    out = Path(args.out or root / "outputs" / "seeds" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty: give another --out (runs there are never overwritten)")
    seeds = [cfg.train.seed + k for k in range(args.seeds)]
    settings.load(cfg)  # a bad value is refused before the parent run or any folder exists
    parent = _parent_run(cfg, root, args.overrides, seeds)
    try:
        return _run_seeds(args, cfg, root, out, seeds, parent)
    except BaseException as err:
        if parent:  # not left RUNNING: FAILED, with the reason as a tag
            store.mark_failed(parent[2], parent[1], err)
        raise


def write_summary(out: Path, args: argparse.Namespace, runs: list[dict], ensemble: dict | None) -> str:
    """summary.json and summary.md of the seeds finished so far (atomically); the table."""
    table = summarize(runs, ensemble)
    done = "" if len(runs) == args.seeds else f" ({len(runs)} of {args.seeds} seeds so far)"
    write_text(out / "summary.json", json.dumps({"overrides": args.overrides, "seeds": args.seeds, "runs": runs,
                                                 "ensemble": ensemble}, indent=1) + "\n")
    write_text(out / "summary.md", f"`python -m lyricist.seeds --seeds {args.seeds} "
               f"{' '.join(args.overrides)}`{done}\n\n{table}")
    return table


def _run_seeds(args: argparse.Namespace, cfg: DictConfig, root: Path, out: Path, seeds: list[int],
               parent: tuple[MlflowClient, str, str] | None) -> int:
    runs = []
    for seed in seeds:
        cfg.train.seed = seed
        start = time.perf_counter()
        train(cfg, out / f"seed{seed}", parent_run_id=parent[1] if parent else None)
        seconds = time.perf_counter() - start
        best = out / f"seed{seed}" / "checkpoints" / "best.ckpt"
        loaded = load_checkpoint(best)
        metrics = evaluate_run(best, cfg, root / cfg.paths.encoded, args.static)
        runs.append({"seed": seed, "seconds": seconds, "checkpoint": str(best),
                     "parameters": sum(p.numel() for p in loaded.model.parameters()), **metrics})
        print(f"seeds: seed {seed}: val {metrics['val_ppl']:.2f}, test {metrics.get('test_ppl', float('nan')):.2f} "
              f"({seconds:.0f} s)", flush=True)
        write_summary(out, args, runs, None)  # after every seed: a stopped run keeps the seeds it finished
    ensemble = (evaluate_run([r["checkpoint"] for r in runs], cfg, root / cfg.paths.encoded, args.static)
                if args.ensemble and len(runs) > 1 else None)
    table = write_summary(out, args, runs, ensemble)
    if parent:
        client, parent_id, uri = parent
        for key in ("val_ppl", "test_ppl"):
            values = [r[key] for r in runs if key in r]
            if values:
                mean, std = mean_std(values)
                store.with_retry(lambda: client.log_metric(parent_id, f"seeds/{key}_mean", mean))
                store.with_retry(lambda: client.log_metric(parent_id, f"seeds/{key}_std", std))
        store.with_retry(lambda: client.log_text(parent_id, table, "seeds.md"))
        if args.log_ensemble:
            serving.log_pyfunc_model(uri, parent_id, [r["checkpoint"] for r in runs],
                                     max_num_chars=cfg.logger.serve_max_num_chars,
                                     max_seconds=cfg.logger.serve_max_seconds)
        store.with_retry(lambda: client.set_terminated(parent_id, "FINISHED"))
    print(f"\n{table}\nseeds: {out / 'summary.md'}, {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, (*USER_ERRORS, ConfigCompositionException)))
