"""How each pipeline stage's time and memory grow with the corpus: the stages run as DVC runs
them, one fresh process each, on generated corpora of several sizes.

    .venv/bin/python benchmarks/scaling.py                        # 100k, 1M and 10M characters: ~25 minutes here
    .venv/bin/python benchmarks/scaling.py --sizes 1M --stages unzip preprocess vocab baseline

For each size it writes an English-like text (benchmarks/make_corpus.py, not timed) into a
small project folder (conf/ copied, params.yaml composed from it with `data=custom` pointing at
the text, as `dvc exp run -S data=custom` would), then runs each stage's command from dvc.yaml
with its `${...}` filled from params.yaml, measuring its wall time and peak RSS (os.wait4: that
process alone). Training is bounded: one epoch cut at --train-steps steps, run twice (N and 2N
steps, each validating on the whole val split); the difference gives the time of a training
step, the rest the validation pass, and from both the time of one full epoch. Evaluate runs
with its default settings, on the 2N-step checkpoint.

Results are kept in <work>/results.json (`--work`; default a temporary folder), so stages run in
separate calls add up to one table: stage x size (seconds, peak MiB), the ratio from one size to
the next (x10 in corpus: ~x10 in time is linear, ~x1 is flat), and the extra memory per extra
byte of corpus (the copies of the corpus a stage holds).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("unzip", "preprocess", "vocab", "baseline", "train", "evaluate")
DEFAULT_SIZES = ("100k", "1M", "10M")
SUFFIXES = {"": 1, "k": 1_000, "M": 1_000_000}


def parse_size(text: str) -> int:
    """'100k' -> 100_000, '1M' -> 1_000_000, '2500' -> 2500."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kM]?)", text)
    if not match or float(match[1]) * SUFFIXES[match[2]] < 1:
        raise argparse.ArgumentTypeError(f"a size is a number of characters, e.g. 100k, 1M or 2500; got {text!r}")
    return int(float(match[1]) * SUFFIXES[match[2]])


def label(chars: int) -> str:
    for suffix in ("M", "k"):
        if chars >= SUFFIXES[suffix] and chars % SUFFIXES[suffix] == 0:
            return f"{chars // SUFFIXES[suffix]}{suffix}"
    return str(chars)


def compose(project: Path, overrides: list[str]) -> dict:
    """params.yaml from the project's conf/, as DVC's Hydra mode composes it on `dvc exp run -S ...`."""
    from dvc.utils.hydra import compose_and_dump

    compose_and_dump(project / "params.yaml", str(project / "conf"), None, "config", ".", overrides)
    return yaml.safe_load((project / "params.yaml").read_text())


def stage_command(name: str, params: dict) -> list[str]:
    """dvc.yaml's command of stage `name`, its ${...} filled from params, run by this Python."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cmd = OmegaConf.create({**params, "_cmd": stages[name]["cmd"]})._cmd  # resolves ${data.raw_path}, ...
    words = shlex.split(cmd)
    assert words[0] == "python" and words[1].startswith("pipelines/"), words[:2]
    return [sys.executable, str(ROOT / words[1]), *words[2:]]


# Run by a fresh, small Python between this process and the stage: a child's peak RSS counts
# the memory of whatever it was forked from, and this process holds DVC's and Hydra's modules.
MEASURE = """
import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:  # ru_maxrss: KiB on Linux
    f.write(f"{time.perf_counter() - start} {usage.ru_maxrss / 1024} {os.waitstatus_to_exitcode(status)}")
"""


def run_measured(command: list[str], cwd: Path, log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of the stage's process alone; its output goes to `log`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    measured = log.with_suffix(".measured")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", MEASURE, str(measured), *command], cwd=cwd, env=env,
                       stdout=out, stderr=subprocess.STDOUT, check=True)
    seconds, peak, code = measured.read_text().split()
    if int(code):
        sys.exit(f"{' '.join(command)} failed ({code}); its output: {log}\n{log.read_text()[-3000:]}")
    return float(seconds), float(peak)


def epoch_tokens_per_sec(project: Path, params: dict) -> float:
    """The train stage's tokens_per_sec of its (only) epoch: train tokens over the time of the
    training batches and the validation after them (lyricist.training.module)."""
    with open(project / params["paths"]["models"] / "metrics.csv") as f:
        return float(list(csv.DictReader(f))[-1]["tokens_per_sec"])


def run_size(chars: int, project: Path, stages: list[str], train_steps: int, results: dict) -> None:
    project.mkdir(parents=True, exist_ok=True)
    if not (project / "conf").is_dir():
        shutil.copytree(ROOT / "conf", project / "conf")
    corpus = project / "corpus.txt"
    if not corpus.is_file() or corpus.stat().st_size < chars:
        subprocess.run([sys.executable, str(ROOT / "benchmarks/make_corpus.py"), "--chars", str(chars),
                        "--out", str(corpus)], check=True, capture_output=True)
    base = ["data=custom", f"data.raw_path={corpus}", "logger.tracking_uri=sqlite:///mlflow.db",
            "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "train.overwrite=true"]
    mine = results.setdefault(label(chars), {"corpus_bytes": corpus.stat().st_size})
    for name in stages:
        runs = [(name, [])] if name != "train" else [
            (f"train {n}", [f"trainer.limit_train_batches={n}"]) for n in (train_steps, 2 * train_steps)]
        for row, extra in runs:
            params = compose(project, base + extra)
            seconds, peak = run_measured(stage_command(name, params), project, project / f"{row.replace(' ', '_')}.log")
            mine[row] = {"seconds": seconds, "peak_mib": peak}
            if name == "train":
                mine[row]["tokens_per_sec"] = epoch_tokens_per_sec(project, params)
                mine["batch"] = [params["data"]["batch_size"], params["data"]["num_steps"], params["data"]["sampling"]]
            print(f"  {label(chars):>5} {row:10} {seconds:7.1f} s  peak {peak:7.0f} MiB", flush=True)
    if "train" in stages:
        batch_size, num_steps, sampling = mine["batch"]
        # The count lyricist.data.batching.num_batches gives, from the file's header alone: this
        # process stays small (see MEASURE), so torch is not imported here.
        train_tokens = len(np.load(project / params["paths"]["encoded"] / "train.npy", mmap_mode="r"))
        mine["steps_per_epoch"] = (train_tokens - 1) // num_steps // batch_size if sampling == "random" else (
            train_tokens // batch_size - 1) // num_steps
        mine["train_steps"] = train_steps


def train_split(mine: dict) -> dict | None:
    """A training step's seconds and the validation pass's, from the N- and 2N-step epochs:
    their epoch times t = tokens / tokens_per_sec are N·step + val and 2N·step + val."""
    n = mine.get("train_steps")
    if not n or f"train {n}" not in mine or f"train {2 * n}" not in mine:
        return None
    batch_tokens = mine["batch"][0] * mine["batch"][1]
    t1 = n * batch_tokens / mine[f"train {n}"]["tokens_per_sec"]
    t2 = 2 * n * batch_tokens / mine[f"train {2 * n}"]["tokens_per_sec"]
    step = (t2 - t1) / n
    val = t1 - n * step
    return {"step": step, "val": val, "tokens_per_sec": batch_tokens / step,
            "epoch": mine["steps_per_epoch"] * step + val}


def table(results: dict) -> str:
    sizes = sorted(results, key=lambda s: results[s]["corpus_bytes"])
    rows = [row for row in (*STAGES[:4], *sorted({r for s in sizes for r in results[s] if r.startswith("train ")},
                                                  key=lambda r: int(r.split()[1])), "evaluate")
            if any(row in results[s] for s in sizes)]
    ratio_heads = [f"{a} → {b}" for a, b in zip(sizes, sizes[1:])]
    lines = [f"| stage | {' | '.join(sizes)} | {' | '.join(ratio_heads)} | extra MiB per extra corpus MiB |",
             "|---" * (2 + len(sizes) + len(ratio_heads)) + "|"]
    corpus_mib = {s: results[s]["corpus_bytes"] / 2**20 for s in sizes}
    for row in rows:
        cells = [f"{results[s][row]['seconds']:.1f} s, {results[s][row]['peak_mib']:.0f} MiB" if row in results[s]
                 else "" for s in sizes]
        ratios = [f"time ×{results[b][row]['seconds'] / results[a][row]['seconds']:.1f}, "
                  f"memory ×{results[b][row]['peak_mib'] / results[a][row]['peak_mib']:.2f}"
                  if row in results[a] and row in results[b] else "" for a, b in zip(sizes, sizes[1:])]
        have = [s for s in sizes if row in results[s]]
        copies = ((results[have[-1]][row]["peak_mib"] - results[have[0]][row]["peak_mib"])
                  / (corpus_mib[have[-1]] - corpus_mib[have[0]]) if len(have) > 1 else None)
        lines.append(f"| {row} | {' | '.join(cells)} | {' | '.join(ratios)} | "
                     f"{'' if copies is None else f'{copies:.1f}'} |")
    lines.append(f"| corpus | {' | '.join(f'{corpus_mib[s]:.1f} MiB' for s in sizes)} |"
                 + " |" * len(ratio_heads) + " |")
    splits = {s: train_split(results[s]) for s in sizes}
    if any(splits.values()):
        lines += ["", "| training (from the two bounded epochs) | " + " | ".join(sizes) + " |",
                  "|---" * (1 + len(sizes)) + "|"]
        for name, fmt in [("train tokens/s (steps only)", "{tokens_per_sec:,.0f}"),
                          ("one validation pass, s", "{val:.1f}"),
                          ("steps per full epoch", None), ("one full epoch, s (extrapolated)", "{epoch:,.0f}")]:
            cells = [("" if not splits[s] else f"{results[s]['steps_per_epoch']:,}" if fmt is None
                      else fmt.format(**splits[s])) for s in sizes]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[parse_size(s) for s in DEFAULT_SIZES],
                        help="corpus sizes in characters (default: 100k 1M 10M)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="the stages to run, in pipeline order; each needs the ones before it done "
                             "(in an earlier call with the same --work)")
    parser.add_argument("--train-steps", type=int, default=200, help="N: the train stage runs N and 2N steps")
    parser.add_argument("--work", help="folder for the projects and results.json (kept); default: a temporary one")
    args = parser.parse_args(argv)
    if args.train_steps < 1:
        parser.error(f"--train-steps must be >= 1, got {args.train_steps}")
    stages = [s for s in STAGES if s in args.stages]  # pipeline order, whatever order was given
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lyricist-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    try:
        for chars in args.sizes:
            run_size(chars, work / label(chars), stages, args.train_steps, results)
            store.write_text(json.dumps(results, indent=1))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{sys.version.split()[0]}, {os.cpu_count()} CPUs; per-stage logs and results.json in "
          f"{args.work or '(a removed temporary folder)'}\n")
    print(table(results))


if __name__ == "__main__":
    main()
