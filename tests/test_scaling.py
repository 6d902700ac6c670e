"""benchmarks/scaling.py: its size parsing, the split of a training epoch into steps and
validation, and one small run of the data stages end to end (no timings asserted)."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import scaling  # noqa: E402


def test_sizes_read_as_characters():
    assert [scaling.parse_size(s) for s in ("100k", "1M", "2500", "1.5M")] == [100_000, 1_000_000, 2500, 1_500_000]
    assert [scaling.label(n) for n in (100_000, 1_000_000, 2500, 1_500_000)] == ["100k", "1M", "2500", "1500k"]
    for bad in ("ten", "1G", "0", "-5"):
        with pytest.raises(argparse.ArgumentTypeError, match="e.g. 100k, 1M"):
            scaling.parse_size(bad)


def test_a_stage_runs_the_command_dvc_yaml_gives_it():
    params = {"paths": {"encoded": "data/encoded/x", "reports": "reports", "ngram": "models/kn.npz"}}
    assert scaling.stage_command("baseline", params) == [
        sys.executable, str(ROOT / "pipelines/baseline.py"), "--data-dir", "data/encoded/x",
        "--metrics", "reports/baseline.json", "--model", "models/kn.npz"]


def test_the_two_bounded_epochs_give_the_step_and_the_validation_time():
    # 100 steps of 32 x 35 tokens at 0.05 s each, and a validation pass of 7 s.
    step, val, n, batch_tokens = 0.05, 7.0, 100, 32 * 35
    mine = {"train_steps": n, "batch": [32, 35, "consecutive"], "steps_per_epoch": 1000,
            f"train {n}": {"tokens_per_sec": n * batch_tokens / (n * step + val)},
            f"train {2 * n}": {"tokens_per_sec": 2 * n * batch_tokens / (2 * n * step + val)}}
    split = scaling.train_split(mine)
    assert split["step"] == pytest.approx(step) and split["val"] == pytest.approx(val)
    assert split["tokens_per_sec"] == pytest.approx(batch_tokens / step)
    assert split["epoch"] == pytest.approx(1000 * step + val)
    assert scaling.train_split({"corpus_bytes": 10}) is None  # train not run at this size
    # With the evaluate stage's static scoring (4 s for val and test, 3 of 4 tokens in val): val takes 3 s.
    scored = scaling.train_split({**mine, "static_seconds": 4.0, "val_tokens": 300, "test_tokens": 100})
    assert scored["step"] == pytest.approx(step) and scored["val"] == 3.0
    # An epoch shorter than N steps ran whole, twice: its time is measured, not extrapolated.
    short = scaling.train_split({**mine, "steps_per_epoch": 80,
                                 f"train {n}": {"tokens_per_sec": 80 * batch_tokens / 10.0},
                                 f"train {2 * n}": {"tokens_per_sec": 80 * batch_tokens / 9.0}})
    assert short["epoch"] == pytest.approx(9.0) and short["val"] is None


def test_the_evaluate_stage_s_static_line_is_read():
    line = "  static perplexity (val 50,000 tokens, test 5,000 tokens): 2.0 s"
    assert scaling.STATIC.search(line).groups() == ("50,000", "5,000", "2.0")
    assert scaling.STATIC.search("  static perplexity (val 7 tokens): 0.1 s").groups() == ("7", None, "0.1")


@pytest.mark.skipif(not (ROOT / "data/raw/timemachine.txt").is_file(),
                    reason="make_corpus.py fits its chain on data/raw/timemachine.txt (dvc pull)")
def test_a_small_run_of_the_data_stages_prints_the_table(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/scaling.py"), "--sizes", "10k", "20k",
                          "--stages", "vocab", "unzip", "preprocess", "baseline", "--work", str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"10k", "20k"} and results["20k"]["corpus_bytes"] >= 20_000
    for size in results.values():
        assert set(size) == {"corpus_bytes", "unzip", "preprocess", "vocab", "baseline"}
        assert all(size[s]["seconds"] > 0 and size[s]["peak_mib"] > 0 for s in scaling.STAGES[:4])
    assert "| stage | 10k | 20k | 10k → 20k | extra MiB per extra corpus MiB |" in out
    assert "| baseline | " in out and "| train" not in out and "| corpus | " in out
    assert "kn5: fit" in (tmp_path / "20k" / "baseline.log").read_text()  # the stage ran, with its progress lines
    assert (tmp_path / "20k" / "reports/baseline.json").is_file()


@pytest.mark.skipif(not (ROOT / "data/raw/timemachine.txt").is_file(),
                    reason="make_corpus.py fits its chain on data/raw/timemachine.txt (dvc pull)")
def test_a_stage_past_the_limit_is_stopped_and_reported_so(tmp_path):
    # vocab imports torch: well over 0.3 s. It is killed, measured so far, and the next stage not run.
    command = [sys.executable, str(ROOT / "benchmarks/scaling.py"), "--sizes", "10k", "--work", str(tmp_path)]
    subprocess.run(command + ["--stages", "unzip", "preprocess"], capture_output=True, check=True, timeout=600)
    out = subprocess.run(command + ["--stage-limit", "0.3", "--stages", "vocab", "baseline"],
                         capture_output=True, text=True, check=True, timeout=600).stdout
    size = json.loads((tmp_path / "results.json").read_text())["10k"]
    assert size["vocab"]["stopped"] is True and size["vocab"]["seconds"] >= 0.3 and "baseline" not in size
    assert "stopped at the 0.3 s limit" in out and "| vocab | > 0 s (stopped), ≥ " in out
