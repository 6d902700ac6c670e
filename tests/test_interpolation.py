"""Neural + Kneser-Ney interpolation: per-token scores aligned by position, the weight chosen on val."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import LYRICS, compose_config, with_data
from conftest import make_lm
from oracles import neural_perplexity
from lyricist.data.batching import consecutive_batches
from lyricist.evaluation.interpolation import (
    WEIGHT_GRID, choose_weight, interpolate_with_ngram, mixture_log_probs, neural_token_log_probs,
    ngram_token_log_probs,
)
from lyricist.evaluation.dynamic import evaluate_dynamic
from lyricist.evaluation.ngram import (
    KneserNey, best_kneser_ney, load_kneser_ney, perplexity as ngram_perplexity, save_kneser_ney,
)
from lyricist.models import RecurrentLM, eval_mode
from conftest import train
from lyricist.data.vocab import Vocab


def _markov_text(n: int, seed: int) -> str:
    """Characters drawn from the bigram statistics of the lyric: learnable, never memorised."""
    rng = np.random.default_rng(seed)
    followers: dict[str, list[str]] = {}
    for a, b in zip(LYRICS, LYRICS[1:]):
        followers.setdefault(a, []).append(b)
    out = [LYRICS[0]]
    while len(out) < n:
        out.append(str(rng.choice(followers.get(out[-1], list(LYRICS)))))
    return "".join(out)


def _load_stage(name: str):
    """pipelines/<name>.py as a module (pipelines/ is not a package)."""
    script = Path(__file__).resolve().parents[1] / "pipelines" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_stage", script)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


@pytest.fixture(scope="module")
def toy():
    """A vocabulary, train/val/test ids and an LSTM trained a little on train."""
    vocab = Vocab.build(LYRICS)
    train_ids, val_ids, test_ids = (torch.tensor(vocab.encode(_markov_text(n, seed)))
                                    for n, seed in ((1500, 0), (301, 1), (241, 2)))
    torch.manual_seed(0)
    model = make_lm(len(vocab), cell="lstm", hidden_size=16, embedding_size=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(10):  # epochs: enough that the network and the n-gram each know something
        state = None
        for x, y in consecutive_batches(train_ids, 4, 10):
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    return vocab, train_ids, val_ids, test_ids, model


@torch.no_grad()
def test_neural_log_probs_sit_at_the_positions_they_predict(toy):
    vocab, _, val_ids, _, model = toy
    batch_size, num_steps = 3, 7
    positions, log_probs = neural_token_log_probs(model, val_ids, batch_size, num_steps)
    # 301 tokens -> 3 streams of 100, 99 // 7 = 14 batches: stream b predicts b*100 + 1 .. b*100 + 98
    expected = [b * 100 + k for b in range(3) for k in range(1, 14 * 7 + 1)]
    assert positions.tolist() == expected
    assert math.exp(-log_probs.mean()) == pytest.approx(
        neural_perplexity(model, val_ids, batch_size, num_steps), rel=1e-6)
    # Each score is what the model, reading its stream alone from the stream's start, gives
    # the token at that position.
    for index in (0, 5, 97, 98, 150, len(expected) - 1):
        p = expected[index]
        start = p // 100 * 100
        logits, _ = model(val_ids[start:p][None, :], None)  # (1, p - start, V)
        assert log_probs[index] == pytest.approx(
            float(F.log_softmax(logits[0, -1], dim=-1)[val_ids[p]]), abs=1e-5)


def test_ngram_log_probs_read_the_text_before_each_position(toy):
    vocab, train_ids, val_ids, _, _ = toy
    kn = KneserNey(3).fit(train_ids, len(vocab))
    # One stream and 301 = 1 + 30 * 10 tokens: every token after the first is predicted, as in
    # ngram.perplexity.
    positions, _ = neural_token_log_probs(toy[4], val_ids, 1, 10)
    assert positions.tolist() == list(range(1, 301))
    scores = ngram_token_log_probs(kn, val_ids, positions)
    assert math.exp(-scores.mean()) == pytest.approx(ngram_perplexity(kn, val_ids), rel=1e-12)
    # Several streams: a stream's first predicted token still sees the text of the stream before.
    positions, _ = neural_token_log_probs(toy[4], val_ids, 3, 7)
    scores = ngram_token_log_probs(kn, val_ids, positions)
    ids = val_ids.tolist()
    at_101 = positions.tolist().index(101)
    assert scores[at_101] == pytest.approx(math.log(kn.prob(ids[99:101], ids[101])), abs=1e-15)


def test_weight_one_is_the_neural_and_zero_the_ngram_perplexity(toy):
    vocab, train_ids, val_ids, test_ids, model = toy
    splits = {"val": val_ids, "test": test_ids}
    fitted, _ = best_kneser_ney(train_ids, val_ids, len(vocab), max_order=4)
    only_neural = interpolate_with_ngram(model, splits, fitted, 3, 7, weights=(1.0,))
    only_ngram = interpolate_with_ngram(model, splits, fitted, 3, 7, weights=(0.0,))
    # The order is the val-best of 1..4, computed here on its own.
    orders = {o: ngram_perplexity(KneserNey(o).fit(train_ids, len(vocab)), val_ids) for o in range(1, 5)}
    best_order = min(orders, key=orders.get)
    assert only_neural.order == only_ngram.order == best_order
    assert only_neural.weight == 1.0 and only_ngram.weight == 0.0
    kn = KneserNey(best_order).fit(train_ids, len(vocab))
    for split, ids in splits.items():
        assert getattr(only_neural.interpolated, split) == pytest.approx(
            neural_perplexity(model, ids, 3, 7), rel=1e-6)
        # the n-gram alone, scored by hand on the positions the network predicts
        batch_len = len(ids) // 3
        positions = [b * batch_len + k for b in range(3) for k in range(1, (batch_len - 1) // 7 * 7 + 1)]
        tokens = ids.tolist()
        by_hand = math.exp(-sum(math.log(kn.prob(tokens[max(0, p - best_order + 1):p], tokens[p]))
                                for p in positions) / len(positions))
        assert getattr(only_ngram.interpolated, split) == pytest.approx(by_hand, rel=1e-12)
    assert only_ngram.ngram == only_ngram.interpolated


def test_the_weight_is_the_val_optimal_one_of_the_grid(toy):
    vocab, train_ids, val_ids, test_ids, model = toy
    fitted, _ = best_kneser_ney(train_ids, val_ids, len(vocab), max_order=4)
    metrics = interpolate_with_ngram(model, {"val": val_ids, "test": test_ids}, fitted, 3, 7)
    kn = KneserNey(metrics.order).fit(train_ids, len(vocab))

    def mixture_ppl(ids, w):  # in probabilities, not in log space as the library does
        positions, neural = neural_token_log_probs(model, ids, 3, 7)
        p_kn = np.exp(ngram_token_log_probs(kn, ids, positions))
        return math.exp(-np.mean(np.log(w * np.exp(neural) + (1 - w) * p_kn)))

    val_ppls = {w: mixture_ppl(val_ids, w) for w in WEIGHT_GRID}
    best_w = min(val_ppls, key=val_ppls.get)
    assert 0.0 < best_w < 1.0, f"the optimum {best_w} is an end of the grid: the test proves little"
    assert metrics.weight == best_w
    assert metrics.interpolated.val == pytest.approx(val_ppls[best_w], rel=1e-10)
    assert metrics.interpolated.val < min(val_ppls[0.0], val_ppls[1.0])
    assert metrics.interpolated.test == pytest.approx(mixture_ppl(test_ids, best_w), rel=1e-10)
    # Chosen on val alone: another test split changes the test number, never the weight.
    other = interpolate_with_ngram(model, {"val": val_ids, "test": test_ids.flip(0)}, fitted, 3, 7)
    assert other.weight == best_w
    assert other.interpolated.test != metrics.interpolated.test
    with pytest.raises(ValueError, match="'val' and optionally 'test'"):
        interpolate_with_ngram(model, {"val": val_ids, "dev": test_ids}, fitted, 3, 7)


def test_a_loaded_ngram_gives_the_same_numbers_bit_for_bit(toy, tmp_path):
    vocab, train_ids, val_ids, test_ids, model = toy
    splits = {"val": val_ids, "test": test_ids}
    fitted, _ = best_kneser_ney(train_ids, val_ids, len(vocab), max_order=4)
    save_kneser_ney(fitted, tmp_path / "kn.npz", max_order=4)
    loaded = load_kneser_ney(tmp_path / "kn.npz", len(vocab), 4, "modified", 0.75)
    # fitted again, as the evaluate stage does without the baseline's model
    refit = interpolate_with_ngram(model, splits, best_kneser_ney(train_ids, val_ids, len(vocab), max_order=4)[0], 3, 7)
    assert interpolate_with_ngram(model, splits, loaded, 3, 7) == refit
    # the adaptive n-gram goes on counting from the loaded counts exactly as from the fitted ones
    assert (evaluate_dynamic(model, loaded, splits, 10, [0.0, 1.0])
            == evaluate_dynamic(model, fitted, splits, 10, [0.0, 1.0]))


class _Boom(RuntimeError):
    pass


def test_eval_mode_restores_the_mode_even_after_an_exception():
    model = make_lm(5, cell="gru", hidden_size=4, dropout=0.5)
    for was_training in (True, False):
        model.train(was_training)
        with pytest.raises(_Boom):
            with eval_mode(model):
                assert not model.training and not any(m.training for m in model.modules())
                raise _Boom
        assert model.training is was_training
        assert all(m.training is was_training for m in model.modules())


def test_evaluation_leaves_a_training_model_training_when_it_fails(toy, monkeypatch):
    model = make_lm(len(toy[0]), cell="gru", hidden_size=4).train()
    calls = []

    def forward_that_fails_on_the_second_batch(ids, state=None):
        calls.append(model.training)
        if len(calls) == 2:
            raise _Boom
        return RecurrentLM.forward(model, ids, state)

    monkeypatch.setattr(model, "forward", forward_that_fails_on_the_second_batch)
    for evaluate in (neural_perplexity, neural_token_log_probs):
        calls.clear()
        with pytest.raises(_Boom):
            evaluate(model, toy[2], 3, 7)
        assert calls == [False, False] and model.training  # eval inside, training again after


def test_mixture_weight_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mixture_log_probs(np.zeros(2), np.zeros(2), 1.5)
    assert choose_weight(np.log([0.9, 0.8]), np.log([0.1, 0.2]), weights=(0.0, 0.5, 1.0)) == (
        1.0, pytest.approx(math.exp(-np.mean(np.log([0.9, 0.8])))))


def test_evaluate_stage_writes_the_interpolated_perplexities(tiny_data, tmp_path, capsys):
    cfg = compose_config(["data.batch_size=4", "data.num_steps=8", "model.hidden_size=16",
                          "model.embedding_size=16", "trainer.max_epochs=1", "logger=none",
                          "trainer.enable_progress_bar=false", "train.eval_batch_size=2",
                          "baseline.max_order=3"])
    train(with_data(cfg, tiny_data), output_dir=tmp_path / "run")
    params = tmp_path / "params.yaml"
    OmegaConf.save(cfg, params)
    baseline, stage = (_load_stage(name) for name in ("baseline", "evaluate"))
    ngram = tmp_path / "models" / "ngram" / "kneser_ney.npz"
    baseline.main(["--data-dir", str(tiny_data), "--metrics", str(tmp_path / "baseline.json"),
                   "--model", str(ngram), "--params", str(params)])
    capsys.readouterr()
    evaluate = ["--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.ckpt"), "--data-dir",
                str(tiny_data), "--samples", str(tmp_path / "samples.md"), "--params", str(params)]
    stage.main([*evaluate, "--metrics", str(tmp_path / "metrics.json"), "--ngram", str(ngram)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    printed = capsys.readouterr().out
    # The baseline stage's model gives exactly what fitting it again here gives.
    stage.main([*evaluate, "--metrics", str(tmp_path / "refit.json")])
    assert (tmp_path / "refit.json").read_text() == (tmp_path / "metrics.json").read_text()
    # A model fit with other settings is refused, naming the fix.
    OmegaConf.save(OmegaConf.merge(cfg, {"baseline": {"max_order": 2}}), tmp_path / "other.yaml")
    with pytest.raises(ValueError, match=r"max_order: fit with 3, asked 2.*dvc repro baseline"):
        stage.main([*evaluate[:-1], str(tmp_path / "other.yaml"), "--metrics", str(tmp_path / "m.json"),
                    "--ngram", str(ngram)])
    assert f"interpolated  val {metrics['interpolated_val_ppl']:9.2f}" in printed
    assert metrics["ngram_order"] in (1, 2, 3) and metrics["interpolation_weight"] in WEIGHT_GRID
    for split in ("val", "test"):
        assert metrics[f"interpolated_{split}_ppl"] > 1
        # log of a mixture >= the mixture of logs: never worse than the worse of the two
        assert metrics[f"interpolated_{split}_ppl"] <= max(metrics[f"{split}_ppl"],
                                                           metrics[f"ngram_{split}_ppl"]) * (1 + 1e-5)
    # w chosen on val: on val the mixture is no worse than either end of the grid
    assert metrics["interpolated_val_ppl"] <= min(metrics["val_ppl"], metrics["ngram_val_ppl"]) * (1 + 1e-5)
    # Dynamic evaluation is on by default: a rate of the grid, its rows printed.
    assert metrics["dynamic_lr"] in cfg.evaluate.dynamic_lrs
    assert f"dynamic+kn    val {metrics['dynamic_interpolated_val_ppl']:9.2f}" in printed
    assert metrics["dynamic_interpolated_val_ppl"] <= min(metrics["dynamic_val_ppl"],
                                                          metrics["ngram_adaptive_val_ppl"]) * (1 + 1e-9)
    # So is Krause et al.'s rule: its rate of 0 and the grid, never worse than static on val.
    assert metrics["krause_lr"] in [0.0, *cfg.evaluate.krause_lrs]
    assert metrics["krause_val_ppl"] <= metrics["val_ppl"] * (1 + 1e-6)
    assert f"krause        val {metrics['krause_val_ppl']:9.2f}" in printed
