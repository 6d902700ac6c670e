"""How each pipeline stage's time and memory grow with the corpus: the stages run as DVC runs
them, one fresh process each, on generated corpora of several sizes.

    .venv/bin/python benchmarks/scaling.py                        # 100k, 1M and 10M: ~35 minutes here
    .venv/bin/python benchmarks/scaling.py --sizes 100k 1M --work /tmp/scaling     # ~5 minutes
    .venv/bin/python benchmarks/scaling.py --sizes 10M --stages unzip preprocess vocab baseline train --work /tmp/scaling
    .venv/bin/python benchmarks/scaling.py --sizes 10M --stages evaluate --stage-limit 700 --work /tmp/scaling

(The last two: 10M in two calls of ~3 and <= 12 minutes, the table of all three sizes after the second.)

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
# The evaluate stage's line for its static scoring of val and test (lyricist.evaluation.evaluate).
STATIC = re.compile(r"static perplexity \(val ([\d,]+) tokens(?:, test ([\d,]+) tokens)?\): ([\d.]+) s")


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
import os, signal, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[3:])
if float(sys.argv[2]) > 0:  # the stage's time limit: killed then, its peak so far still measured
    signal.signal(signal.SIGALRM, lambda *_: proc.kill())
    signal.setitimer(signal.ITIMER_REAL, float(sys.argv[2]))
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:  # ru_maxrss: KiB on Linux
    f.write(f"{time.perf_counter() - start} {usage.ru_maxrss / 1024} {os.waitstatus_to_exitcode(status)}")
"""


def run_measured(command: list[str], cwd: Path, log: Path, limit: float = 0) -> dict:
    """{"seconds", "peak_mib"} of the stage's process alone (and "stopped": true when it ran
    past `limit` seconds, 0: none, and was killed); its output goes to `log`."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    measured = log.with_suffix(".measured")
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", MEASURE, str(measured), str(limit), *command], cwd=cwd, env=env,
                       stdout=out, stderr=subprocess.STDOUT, check=True)
    seconds, peak, code = measured.read_text().split()
    result = {"seconds": float(seconds), "peak_mib": float(peak)}
    if limit and int(code) == -9 and float(seconds) >= limit:
        return {**result, "stopped": True}
    if int(code):
        sys.exit(f"{' '.join(command)} failed ({code}); its output: {log}\n{log.read_text()[-3000:]}")
    return result


def epoch_tokens_per_sec(project: Path, params: dict) -> float:
    """The train stage's tokens_per_sec of its (only) epoch: train tokens over the time of the
    training batches and the validation after them (lyricist.training.module)."""
    with open(project / params["paths"]["models"] / "metrics.csv") as f:
        return float(list(csv.DictReader(f))[-1]["tokens_per_sec"])


def run_size(chars: int, project: Path, stages: list[str], train_steps: int, results: dict,
             limit: float = 0) -> None:
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
            log = project / f"{row.replace(' ', '_')}.log"
            mine[row] = run_measured(stage_command(name, params), project, log, limit)
            stopped = mine[row].get("stopped")
            if name == "train" and not stopped:
                mine[row]["tokens_per_sec"] = epoch_tokens_per_sec(project, params)
                mine["batch"] = [params["data"]["batch_size"], params["data"]["num_steps"], params["data"]["sampling"]]
            if name == "evaluate" and (match := STATIC.search(log.read_text())):
                mine["val_tokens"], mine["test_tokens"] = (int(m.replace(",", "")) if m else 0 for m in match.groups()[:2])
                mine["static_seconds"] = float(match[3])
            print(f"  {label(chars):>5} {row:10} {mine[row]['seconds']:7.1f} s  peak {mine[row]['peak_mib']:7.0f} MiB"
                  f"{f'  (stopped at the {limit:g} s limit; its output: {log})' if stopped else ''}", flush=True)
            if stopped:
                return  # the later stages need this one's outputs
    if "train" in stages:
        batch_size, num_steps, sampling = mine["batch"]
        # The count lyricist.data.batching.num_batches gives, from the file's header alone: this
        # process stays small (see MEASURE), so torch is not imported here.
        train_tokens = len(np.load(project / params["paths"]["encoded"] / "train.npy", mmap_mode="r"))
        mine["steps_per_epoch"] = (train_tokens - 1) // num_steps // batch_size if sampling == "random" else (
            train_tokens // batch_size - 1) // num_steps
        mine["train_steps"] = train_steps


def train_split(mine: dict) -> dict | None:
    """A training step's seconds and one full epoch's, from the two bounded epochs of N and 2N
    steps: their times t = tokens / tokens_per_sec are (steps)·step + val. The validation pass
    is the evaluate stage's static scoring of val (the same forward pass, its time per token)
    when it ran, else the intercept of the two. An epoch shorter than N steps was measured whole."""
    n = mine.get("train_steps")
    if not n or any(f"train {k}" not in mine or "tokens_per_sec" not in mine[f"train {k}"] for k in (n, 2 * n)):
        return None
    batch_tokens, epoch_steps = mine["batch"][0] * mine["batch"][1], mine["steps_per_epoch"]
    (a1, t1), (a2, t2) = ((steps, steps * batch_tokens / mine[f"train {k}"]["tokens_per_sec"])
                          for k in (n, 2 * n) for steps in [min(k, epoch_steps)])
    if a1 == a2:
        return {"step": t2 / a2, "val": None, "tokens_per_sec": a2 * batch_tokens / t2, "epoch": t2}
    step = (t2 - t1) / (a2 - a1)
    val = (mine["static_seconds"] * mine["val_tokens"] / (mine["val_tokens"] + mine["test_tokens"])
           if "static_seconds" in mine else t1 - a1 * step)
    return {"step": step, "val": val, "tokens_per_sec": batch_tokens / step, "epoch": epoch_steps * step + val}


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
        cells = [("" if row not in results[s] else f"> {results[s][row]['seconds']:.0f} s (stopped), "
                  f"≥ {results[s][row]['peak_mib']:.0f} MiB" if results[s][row].get("stopped") else
                  f"{results[s][row]['seconds']:.1f} s, {results[s][row]['peak_mib']:.0f} MiB") for s in sizes]
        ratios = [f"time ×{'≥ ' if results[b][row].get('stopped') else ''}"
                  f"{results[b][row]['seconds'] / results[a][row]['seconds']:.1f}, "
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
                          ("one training step, ms", "{step_ms:.1f}"),
                          ("steps per full epoch", None), ("one full epoch, s (extrapolated)", "{epoch:,.0f}")]:
            cells = [("" if not splits[s] else f"{results[s]['steps_per_epoch']:,}" if fmt is None
                      else "(in the epoch)" if "{val" in fmt and splits[s]["val"] is None
                      else fmt.format(**splits[s], step_ms=1000 * splits[s]["step"])) for s in sizes]
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
    parser.add_argument("--stage-limit", type=float, default=0,
                        help="seconds after which a stage is stopped (and reported as such); 0: none")
    parser.add_argument("--work", help="folder for the projects and results.json (kept); default: a temporary one")
    args = parser.parse_args(argv)
    if args.train_steps < 1:
        parser.error(f"--train-steps must be >= 1, got {args.train_steps}")
    if not args.stage_limit >= 0:  # not: NaN as well
        parser.error(f"--stage-limit must be >= 0 seconds (0: none), got {args.stage_limit}")
    stages = [s for s in STAGES if s in args.stages]  # pipeline order, whatever order was given
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="lyricist-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    store = work / "results.json"
    results = json.loads(store.read_text()) if store.is_file() else {}
    try:
        for chars in args.sizes:
            run_size(chars, work / label(chars), stages, args.train_steps, results, args.stage_limit)
            store.write_text(json.dumps(results, indent=1))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{sys.version.split()[0]}, {os.cpu_count()} CPUs; per-stage logs and results.json in "
          f"{args.work or '(a removed temporary folder)'}\n")
    print(table(results))


if __name__ == "__main__":
    main()
