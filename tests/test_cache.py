"""The neural cache (Grave et al., 2017): a hand-computed example, the reading order, and the
evaluate row beside the adaptive n-gram."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import LYRICS, ROOT, with_data
from conftest import make_lm
from oracles import dynamic_token_log_probs
from lyricist.data.vocab import Vocab
from lyricist.evaluation.cache import cache_log_probs, evaluate_cache, stream_states, with_cache
from lyricist.evaluation.interpolation import perplexity_of
from lyricist.evaluation.ngram import KneserNey, ngram_token_log_probs
from lyricist.models import RecurrentLM
from conftest import train


def test_cache_probabilities_match_a_hand_computed_example():
    # h0 = (1, 0) predicted token 0, h1 = (0, 1) token 1, h2 = (1, 0) token 0.
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    targets = torch.tensor([0, 1, 0])
    p = np.exp(cache_log_probs(hidden, targets, theta=1.0, size=2))
    assert math.isnan(p[0])  # nothing read yet
    assert p[1] == 0.0  # the window {0} holds token 0 only
    assert p[2] == pytest.approx(math.e / (math.e + 1))  # h2·h0 = 1, h2·h1 = 0: e^1 / (e^1 + e^0)
    assert np.exp(cache_log_probs(hidden, targets, theta=2.0, size=2))[2] == pytest.approx(0.8807970779778823)
    assert np.exp(cache_log_probs(hidden, targets, theta=1.0, size=1))[2] == 0.0  # window {1}: token 1 only
    # Mixed with p_model = 0.25 at λ = 0.5: 0.25 (empty cache), 0.5 x 0.25, 0.5 x 0.25 + 0.5 x 0.7311.
    with np.errstate(divide="ignore"):
        mixed = np.exp(with_cache(np.log(np.full(3, 0.25)), np.log(p), 0.5))
    assert mixed == pytest.approx([0.25, 0.125, 0.49052928766])
    # Row blocks change nothing.
    assert np.array_equal(cache_log_probs(hidden, targets, 1.0, 2, rows=1), cache_log_probs(hidden, targets, 1.0, 2),
                          equal_nan=True)


@pytest.fixture(scope="module")
def toy():
    vocab = Vocab.build(LYRICS)
    chorus = np.random.default_rng(0).integers(1, len(vocab), 12).tolist()

    def song(seed):
        return torch.tensor((np.random.default_rng(seed).integers(1, len(vocab), 8).tolist() + chorus) * 4)

    torch.manual_seed(0)
    model = make_lm(len(vocab), cell="lstm", hidden_size=16, embedding_size=16, tie_weights=True,
                        init="torch").eval()
    return vocab, torch.tensor(vocab.encode(LYRICS * 3)), song(1), song(2), model


def test_the_stream_is_read_as_dynamic_evaluation_reads_it_without_updates(toy):
    _, _, val, _, model = toy
    log_p, hidden, targets = stream_states(model, val, chunk=7)
    positions, static = dynamic_token_log_probs(model, val, num_steps=len(val) - 1, lr=0.0)
    assert np.allclose(log_p, static, atol=1e-6) and list(positions) == list(range(1, len(val)))
    assert torch.equal(targets, val[1:]) and hidden.shape == (len(val) - 1, 16)
    assert np.allclose(stream_states(model, val, chunk=256)[0], log_p, atol=1e-9)


def test_the_cache_learns_the_chorus_and_mixes_with_the_adaptive_ngram(toy):
    vocab, train, val, test, model = toy
    ngram = KneserNey(3).fit(train.tolist(), len(vocab))
    result = evaluate_cache(model, {"val": val, "test": test}, size=100, ngram=ngram,
                            thetas=(0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0))
    static = {s: perplexity_of(stream_states(model, ids)[0]) for s, ids in (("val", val), ("test", test))}
    # The chorus comes back four times: copying it beats the untrained network.
    assert result.lam > 0 and result.cache.val < 0.8 * static["val"] and result.cache.test < 0.8 * static["test"]
    adaptive = perplexity_of(ngram_token_log_probs(ngram, val, np.arange(1, len(val)), adaptive=True))
    assert result.ngram_adaptive.val == pytest.approx(adaptive)
    # λ and the mixture weight chosen on val include "off": never worse there than either side.
    assert result.interpolated.val <= min(result.cache.val, adaptive) * (1 + 1e-9)
    flat = result.as_flat_dict()
    assert set(flat) == {"cache_size", "cache_theta", "cache_lambda", "cache_interpolation_weight", "cache_val_ppl",
                         "cache_test_ppl", "cache_interpolated_val_ppl", "cache_interpolated_test_ppl"}
    with pytest.raises(ValueError, match="evaluate.cache_size must be an integer >= 1"):
        evaluate_cache(model, {"val": val}, size=0, ngram=ngram, thetas=[1.0])


def test_the_evaluate_stage_writes_the_cache_rows_after_the_others(tiny_cfg, tiny_data, tmp_path, capsys):
    cfg = with_data(tiny_cfg, tiny_data)
    cfg.logger.enabled = False
    train(cfg, tmp_path / "run")
    OmegaConf.update(cfg, "evaluate.cache_size", 50)
    OmegaConf.update(cfg, "evaluate.dynamic_lrs", [])
    OmegaConf.update(cfg, "evaluate.krause_lrs", [])
    OmegaConf.update(cfg, "baseline.max_order", 3)
    OmegaConf.save(cfg, tmp_path / "params.yaml")
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "pipelines" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    stage.main(["--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.ckpt"), "--data-dir", str(tiny_data),
                "--params", str(tmp_path / "params.yaml"), "--metrics", str(tmp_path / "metrics.json"),
                "--samples", str(tmp_path / "samples.md")])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    keys = list(metrics)
    assert keys[-8:] == ["cache_size", "cache_theta", "cache_lambda", "cache_interpolation_weight",
                         "cache_val_ppl", "cache_interpolated_val_ppl", "cache_test_ppl", "cache_interpolated_test_ppl"]
    assert metrics["cache_size"] == 50 and metrics["cache_val_ppl"] <= metrics["val_ppl"] * 1.05
    printed = capsys.readouterr().out
    assert f"  cache         val {metrics['cache_val_ppl']:9.2f}" in printed and "cache+kn" in printed


def test_an_empty_theta_grid_is_refused_in_one_line():
    from conftest import compose_config
    from lyricist.cli.config import settings_of

    with pytest.raises(ValueError, match=r"^evaluate.cache_thetas=\[\] is not allowed: List should have at least 1 item"):
        settings_of(compose_config(["evaluate.cache_thetas=[]"]))
