"""benchmarks/throughput.py: its FLOP count by hand, and one tiny run end to end (no timings asserted);
every benchmark script parses its arguments before it runs."""

import runpy
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput  # noqa: E402
import pytest


def test_product_flops_counts_the_products_by_hand():
    args = SimpleNamespace(batch_size=2, num_steps=3, hidden_size=4, vocab_size=10, embedding_size=5, num_layers=1)
    # rnn, per time step: recurrent 3 * 2*4*4 = 96, head 3 * 2*4*10 = 240 multiply-adds.
    assert throughput.product_flops("b1", "rnn", args) == 2 * 3 * (96 + 240)
    # a adds one_hot (2, 10) x (10, 4) and its weight gradient: 2 * 80.
    assert throughput.product_flops("a", "rnn", args) == 2 * 3 * (96 + 240 + 160)
    # b and c add the embedding's projection (2, 5) x (5, 16) for the lstm's 4 gates, 3 times.
    assert throughput.product_flops("c", "lstm", args) == 2 * 3 * (3 * 2 * 4 * 16 + 240 + 3 * 2 * 5 * 16)


def test_product_flops_of_a_stacked_layer():
    one = SimpleNamespace(batch_size=2, num_steps=3, hidden_size=4, vocab_size=10, embedding_size=5, num_layers=1)
    two = SimpleNamespace(**{**vars(one), "num_layers": 2})
    # A second gru layer adds its recurrence and its input projection (2, 4) x (4, 12), 3 times
    # each, whatever layer 0 reads (a's one-hot, b1's gathered rows, b's and c's embedding).
    extra = 2 * 3 * (3 * 2 * 4 * 12 + 3 * 2 * 4 * 12)
    for variant in ("a", "b1", "b", "c"):
        assert throughput.product_flops(variant, "gru", two) == throughput.product_flops(variant, "gru", one) + extra


def test_naive_stacked_loop_equals_torch_nn_lstm():
    """a with 2 layers is the same model as torch.nn's 2-layer LSTM fed the one-hot rows."""
    import torch

    naive = throughput.NaiveLM(vocab_size=7, cell="lstm", hidden_size=5, num_layers=2)
    oracle = torch.nn.LSTM(7, 5, num_layers=2)
    with torch.no_grad():
        for layer in range(2):
            getattr(oracle, f"weight_ih_l{layer}").copy_(naive.w_xh[layer].t())
            getattr(oracle, f"weight_hh_l{layer}").copy_(naive.w_hh[layer].t())
            getattr(oracle, f"bias_ih_l{layer}").copy_(torch.randn(20))
            naive.b_xh[layer].copy_(getattr(oracle, f"bias_ih_l{layer}"))
            getattr(oracle, f"bias_hh_l{layer}").copy_(naive.b_hh[layer])
    ids = torch.randint(7, (3, 4))  # (B, T)
    logits, state = naive(ids)  # (B, T, V)
    hidden, (h, c) = oracle(torch.nn.functional.one_hot(ids.t(), 7).float())  # (T, B, H)
    expected = hidden.transpose(0, 1) @ naive.w_hq + naive.b_q  # (B, T, V)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(torch.stack([s[0] for s in state]), h)  # (L, B, H)
    torch.testing.assert_close(torch.stack([s[1] for s in state]), c)


def test_tiny_benchmark_run_prints_every_variant_and_ratio():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--cells", "rnn", "lstm", "--repeats", "1",
         "--steps", "1", "--warmup", "0", "--vocab-size", "40", "--hidden-size", "8", "--embedding-size", "8",
         "--num-steps", "5", "--gen-chars", "5", "--no-rss"],
        capture_output=True, text=True, check=True, timeout=300)
    out = result.stdout
    for variant in throughput.VARIANTS:
        assert f"lstm  {variant}  " in out
        assert (f"rnn   {variant}  " in out) == (variant != "b-")  # only the LSTM and the GRU have a compiled step
    assert "b/c = " in out and "b1/a = " in out and "b-/c = " in out
    assert "b1/a = 3 needs b1's at" in out and "the head's forward product alone" in out
    assert "products (measured once on this machine" in out and "[rounds " in out  # the backend, the spread
    assert "fwd / bwd / opt ms" in out  # each variant's step split into forward, backward and optimizer


def test_tiny_two_layer_run_builds_two_layers_in_every_variant():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--cells", "gru", "--repeats", "1",
         "--steps", "1", "--warmup", "0", "--vocab-size", "30", "--hidden-size", "6", "--embedding-size", "4",
         "--num-steps", "3", "--gen-chars", "3", "--num-layers", "2"],
        capture_output=True, text=True, check=True, timeout=300)
    assert "2 layer(s) x hidden 6" in result.stdout
    for variant in throughput.VARIANTS:
        assert f"gru   {variant}  " in result.stdout
    assert "rss of" not in result.stdout  # the per-variant subprocesses were given --num-layers too


def test_size_names_an_issue_size_and_a_flag_overrides_it():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--size", "ptb", "--cells", "lstm",
         "--variants", "b", "c", "--repeats", "1", "--steps", "1", "--warmup", "0", "--vocab-size", "50",
         "--hidden-size", "6", "--embedding-size", "4", "--num-steps", "3", "--gen-chars", "3", "--no-rss"],
        capture_output=True, text=True, check=True, timeout=300)
    assert "vocab 50 (--vocab-size), batch 20, steps 3, 2 layer(s) x hidden 6, embedding 4" in result.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_answers_help_and_a_bad_argument_without_running(script, monkeypatch, capsys):
    path = str(ROOT / "benchmarks" / script)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [str(ROOT / "benchmarks"), *sys.path])  # as `python <script>` has it

    def command(arg: str) -> SimpleNamespace:
        """`python <script> <arg>`, run in this process: the message is the test, not torch's import."""
        monkeypatch.setattr(sys, "argv", [path, arg])
        try:
            runpy.run_path(path, run_name="__main__")
            returncode = 0
        except SystemExit as exit:
            returncode = exit.code if isinstance(exit.code, int) else 1
        except Exception:  # noqa: BLE001 (what a subprocess would print, then exit 1 with)
            returncode = 1
            traceback.print_exc()
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=returncode, stdout=out, stderr=err)

    helped = command("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage:"), helped.stderr[-1000:]
    bad = command("--no-such-option")
    assert bad.returncode == 2 and f"{script}: error: " in bad.stderr  # argparse's usage error
    assert "Traceback" not in bad.stderr
