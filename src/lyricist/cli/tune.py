"""Hyper-parameter search with Optuna: each trial trains conf's recipe with sampled values.

    python -m lyricist.tune data=timemachine                     # conf/tune/default.yaml
    python -m lyricist.tune data=jaychou tune.n_trials=40 tune.timeout=1800
    python -m lyricist.tune tune.storage=postgresql://u:p@db/optuna logger.tracking_uri=http://mlflow:5000

The config is composed as `python -m lyricist.train` composes it (same overrides) plus the
`tune` group (`tune=<name>` picks conf/tune/<name>.yaml), and checked whole, the search space
too, before the study or any run exists. The study lives in Optuna storage (SQLite in the
project root by default, any RDB URL): N workers on N machines run the same command against the
same storage and share one study (docs/search.md). The best trial is written as
conf/experiment/<tune.preset>.yaml, a recipe for `python -m lyricist.train experiment=<preset>`
and `dvc exp run -S experiment=<preset>`. The search itself: lyricist.experiments.search.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lyricist.cli import config
from lyricist.experiments.search import tune


def main(argv: Sequence[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(o in ("-h", "--help") for o in overrides):
        print(__doc__)
        return 0
    picked = [o.split("=", 1)[1] for o in overrides if o.split("=")[0].lstrip("+") == "tune"]
    # `tune.space={...}` and `tune.fixed={...}` merge into the file's, new keys too (the schema checks them).
    rest = [("++" if o.split("=")[0] in ("tune.space", "tune.fixed") else "") + o for o in overrides
            if o.split("=")[0].lstrip("+") != "tune"]
    table, out_dir = tune(config.load(rest, groups=[f"+tune={(picked or ['default'])[-1]}"]), overrides)
    print(f"\n{table}\ntune: {out_dir / 'trials.md'}, {out_dir / 'summary.json'}")
    return 0
