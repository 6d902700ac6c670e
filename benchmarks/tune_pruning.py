"""What pruning saves: the same search (same space, seed and trial budget) run with the median
pruner and without one, one after the other, each in its own fresh storage; prints wall time,
epochs trained and the best val perplexity side by side, and the ratio.

    .venv/bin/python benchmarks/tune_pruning.py data=jaychou tune=cpu tune.n_trials=8
    (needs the corpus prepared: dvc repro vocab, or dvc exp run -S data=<corpus>)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna


def search(pruner: str, overrides: list[str], folder: Path) -> dict:
    storage = f"sqlite:///{folder / 'optuna.db'}"
    args = [sys.executable, "-m", "lyricist.tune", *overrides, f"tune.pruner={pruner}", "logger=none",
            f"tune.storage={storage}", f"tune.output_dir={folder / 'out'}", "tune.preset=null",
            "tune.timeout=null", "trainer.enable_progress_bar=false"]
    folder.mkdir(parents=True)
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        done = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"the search with pruner={pruner} failed:\n" + "".join((folder / "log.txt").open().readlines()[-30:]))
    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    return {"seconds": seconds, "trials": len(study.trials),
            "pruned": len([t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]),
            "epochs": sum(len(t.intermediate_values) for t in study.trials), "best": study.best_value}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="lyricist.tune's overrides, e.g. data=jaychou tune=cpu tune.n_trials=8")
    overrides = parser.parse_args(argv).overrides
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: search(name, overrides, Path(tmp) / name) for name in ("median", "null")}
    print(f"{'pruner':8} {'wall s':>8} {'trials':>7} {'pruned':>7} {'epochs':>7} {'best val ppl':>13}")
    for name, r in results.items():
        print(f"{name:8} {r['seconds']:8.0f} {r['trials']:7d} {r['pruned']:7d} {r['epochs']:7d} {r['best']:13.3f}")
    ratio = results["median"]["seconds"] / results["null"]["seconds"]
    print(f"with pruning / without: {ratio:.2f}x wall time ({1 - ratio:.0%} saved), "
          f"{results['median']['epochs'] / results['null']['epochs']:.2f}x epochs")


if __name__ == "__main__":
    main()
