"""Train one configuration over several seeds, score each as the evaluate stage does, and report
mean ± standard deviation: a single run's perplexity is uncertain by its seed noise.

    python -m lyricist.seeds --seeds 3                          # the default config, seeds 42, 43, 44
    python -m lyricist.seeds --seeds 3 --ensemble model=gru     # Hydra overrides after the options
    python -m lyricist.seeds --seeds 3 --static                 # skip dynamic evaluation (faster)
    python -m lyricist.seeds --seeds 3 --log-ensemble           # the ensemble as a servable MLflow model
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

from lyricist.cli import config
from lyricist.experiments.seeds import run_seeds
from lyricist.project import project_root

MAX_SEEDS = 100  # each seed is a whole training run; the standard error shrinks as 1/sqrt(seeds)


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
    s = config.load(args.overrides)  # a bad value is refused before the parent run or any folder exists
    out = Path(args.out or project_root(s.paths.root) / "outputs" / "seeds" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty: give another --out (runs there are never overwritten)")
    table = run_seeds(s, out, args.seeds, args.ensemble, args.static, args.log_ensemble, args.overrides)
    print(f"\n{table}\nseeds: {out / 'summary.md'}, {out / 'summary.json'}")
    return 0
