"""Start-up of a training run: how long `python -m lyricist.train` takes to train one batch and
validate one, from a bare shell, from the activated venv, and from a copy of the code, and how
many times the compiled LSTM step is built meanwhile (none, once `make install` has built it).

    .venv/bin/python benchmarks/startup.py          # ~1 minute; needs `make run` (or dvc repro vocab) first
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lyricist.models.fast import kernels

ROOT = Path(__file__).resolve().parents[1]
ONE_BATCH = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
             "logger=none", "trainer.enable_progress_bar=false"]


def builds() -> int:
    log = kernels.cache_dir() / kernels.BUILD_LOG
    return len(log.read_text().splitlines()) if log.is_file() else 0


def run(label: str, path: str, pythonpath: str | None, out: Path) -> None:
    env = dict(os.environ, PATH=path, LYRICIST_ROOT=str(ROOT))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    before, start = builds(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lyricist.train", *ONE_BATCH, f"hydra.run.dir={out}"],
                          env=env, capture_output=True, text=True, cwd=out.parent)
    if proc.returncode:  # e.g. no encoded data yet: the training app's own one-line error
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        sys.exit(f"startup: the run from {label} failed: {lines[0]}")
    print(f"  {label:34} {time.perf_counter() - start:5.1f} s   builds of the LSTM step: {builds() - before}")


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    kernels.step_kernels()  # built here if `make install` did not
    venv_bin = str(Path(sys.executable).parent)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy"
        shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__"))
        print("one training batch + one validation batch, whole process (start-up included):")
        run("bare shell (/usr/bin:/bin)", "/usr/bin:/bin", None, Path(tmp) / "a")
        run("activated venv", f"{venv_bin}{os.pathsep}{os.environ['PATH']}", None, Path(tmp) / "b")
        run("a copy of the code, bare shell", "/usr/bin:/bin", str(copy), Path(tmp) / "c")


if __name__ == "__main__":
    main()
