"""Trials per hour of `python -m lyricist.tune` workers, one thread each, 1 and 2 on this machine
sharing one study: the study and the runs in local SQLite files, or in a throwaway PostgreSQL and
an MLflow server on it (tests/servers.py, as tests/test_many_machines.py runs them); from the two,
what the servers' round trips add to each trial. The tests' tiny recipe and corpus: a trial is
mostly its fixed costs, the part the servers could change.

    .venv/bin/python benchmarks/many_workers.py                       # 12 trials a setting (docs/search.md)
    .venv/bin/python benchmarks/many_workers.py --trials 24 --epochs 8 --workers 1 2

Trials per hour count from the first trial's start to the last one's end (the workers' start-up,
20-30 s of imports, is not in it); the load average is printed with each setting.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

SPACE = "tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}, model.dropout: {low: 0.0, high: 0.5}}"


def run_study(name: str, workers: int, storage: str, tracking_uri: str, args, folder: Path) -> dict:
    """`workers` processes of the documented command on one new study; its trials' timings."""
    import optuna

    from conftest import TINY

    argv = [sys.executable, "-m", "lyricist.tune", "data=jaychou", f"tune.study_name={name}",
            f"tune.storage={storage}", f"logger.tracking_uri={tracking_uri}", *TINY,
            f"trainer.max_epochs={args.epochs}", f"model.hidden_size={args.hidden}",
            f"paths.encoded={folder / 'encoded'}", "tune=default", "tune.space=null", SPACE, "tune.timeout=null",
            "tune.pruner=null", "tune.preset=null", f"tune.n_trials={args.trials}",
            f"tune.output_dir={folder / 'out' / name}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", LYRICIST_ROOT=str(ROOT))
    load = os.getloadavg()[0]
    procs = [subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(workers)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"many_workers.py: a worker failed:\n{err[-3000:]}")
    trials = [t for t in optuna.load_study(study_name=name, storage=storage).trials if t.datetime_complete]
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {"trials": len(trials), "per_hour": len(trials) / span * 3600,
            "trial_s": mean((t.datetime_complete - t.datetime_start).total_seconds() for t in trials),
            "load": (load + os.getloadavg()[0]) / 2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="the study's budget (tune.n_trials)")
    parser.add_argument("--epochs", type=int, default=4, help="trainer.max_epochs of each trial")
    parser.add_argument("--hidden", type=int, default=16, help="model.hidden_size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run")
    args = parser.parse_args(argv)

    from conftest import LYRICS, write_encoded
    from servers import mlflow_server, pg_bin, throwaway_postgres

    if pg_bin() is None:
        sys.exit("many_workers.py: PostgreSQL is not installed (apt-get install postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="many-workers-"))
    write_encoded(folder / "encoded", LYRICS * 20, val_fraction=0.2, test_fraction=0.1)
    rows = []
    with throwaway_postgres(pg_bin()) as postgres:
        with mlflow_server(postgres.createdb("mlflow"), folder) as server:
            for n in args.workers:
                files = run_study(f"files{n}", n, f"sqlite:///{folder / 'optuna.db'}",
                                  f"sqlite:///{folder / 'mlflow.db'}", args, folder)
                servers = run_study(f"servers{n}", n, postgres.createdb(f"optuna{n}"), server, args, folder)
                rows += [("SQLite files", n, files), ("PostgreSQL + MLflow server", n, servers)]
    print(f"| study and runs | workers | trials | trials / hour | s / trial | load average |\n|---|---|---|---|---|---|")
    for store, n, r in rows:
        print(f"| {store} | {n} | {r['trials']} | {r['per_hour']:.0f} | {r['trial_s']:.2f} | {r['load']:.1f} |")
    one = {store: r for store, n, r in rows if n == min(args.workers)}
    extra = one["PostgreSQL + MLflow server"]["trial_s"] - one["SQLite files"]["trial_s"]
    print(f"\nthe servers' round trips: {extra:+.2f} s a trial ({min(args.workers)} worker(s); "
          f"{os.cpu_count()} CPUs, trials of {args.epochs} epochs, hidden {args.hidden})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
