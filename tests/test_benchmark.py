"""benchmarks/throughput.py: its FLOP count by hand, and one tiny run end to end (no timings asserted)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402


def test_product_flops_counts_the_products_by_hand():
    args = SimpleNamespace(batch_size=2, num_steps=3, hidden_size=4, vocab_size=10, embedding_size=5)
    # rnn, per time step: recurrent 3 * 2*4*4 = 96, head 3 * 2*4*10 = 240 multiply-adds.
    assert throughput.product_flops("b1", "rnn", args) == 2 * 3 * (96 + 240)
    # a adds one_hot (2, 10) x (10, 4) and its weight gradient: 2 * 80.
    assert throughput.product_flops("a", "rnn", args) == 2 * 3 * (96 + 240 + 160)
    # b and c add the embedding's projection (2, 5) x (5, 16) for the lstm's 4 gates, 3 times.
    assert throughput.product_flops("c", "lstm", args) == 2 * 3 * (3 * 2 * 4 * 16 + 240 + 3 * 2 * 5 * 16)


def test_tiny_benchmark_run_prints_every_variant_and_ratio():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--cells", "rnn", "lstm", "--repeats", "1",
         "--steps", "1", "--warmup", "0", "--vocab-size", "40", "--hidden-size", "8", "--embedding-size", "8",
         "--num-steps", "5", "--gen-chars", "5", "--no-rss"],
        capture_output=True, text=True, check=True, timeout=300)
    out = result.stdout
    for variant in throughput.VARIANTS:
        assert f"lstm  {variant}  " in out
        assert (f"rnn   {variant}  " in out) == (variant != "b-")  # only the LSTM has a compiled step
    assert "b/c = " in out and "b1/a = " in out and "b-/c = " in out
    assert "b1/a = 3 needs b1's at" in out and "the head's forward product alone" in out
