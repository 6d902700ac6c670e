"""Dynamic evaluation and the adaptive n-gram: score first, learn after, never look ahead."""

import copy
import math

import numpy as np
import pytest
import torch

from conftest import LYRICS
from conftest import make_lm
from oracles import dynamic_token_log_probs, neural_perplexity as static_perplexity
from lyricist.evaluation.dynamic import RMSDecayUpdate, StreamReader, evaluate_dynamic, gradient_rms
from lyricist.evaluation.progress import Progress
from lyricist.data.batching import consecutive_batches
from lyricist.evaluation.interpolation import WEIGHT_GRID, mixture_log_probs, perplexity_of
from lyricist.models import RecurrentLM
from lyricist.evaluation.ngram import KneserNey, adaptive_ngram_scores, ngram_token_log_probs
from lyricist.data.vocab import Vocab

NUM_STEPS = 5


@pytest.fixture(scope="module")
def toy():
    """Vocabulary, train ids, and val/test texts that repeat a "chorus" unseen in train."""
    vocab = Vocab.build(LYRICS)
    rng = np.random.default_rng(0)
    chorus = rng.integers(1, len(vocab), 12).tolist()

    def song(seed: int) -> torch.Tensor:
        verse = np.random.default_rng(seed).integers(1, len(vocab), 8).tolist()
        return torch.tensor((verse + chorus) * 4)  # the chorus comes back: something to learn as it reads

    torch.manual_seed(0)
    model = make_lm(len(vocab), cell="lstm", hidden_size=16, embedding_size=8, init="torch").eval()
    return vocab, torch.tensor(vocab.encode(LYRICS * 3)), song(1), song(2), model


def test_rate_zero_is_static_evaluation_of_one_stream(toy):
    vocab, _, val, _, model = toy
    positions, log_probs = dynamic_token_log_probs(model, val, NUM_STEPS, lr=0.0)
    usable = (len(val) - 1) // NUM_STEPS * NUM_STEPS
    assert positions.tolist() == list(range(1, usable + 1))
    assert perplexity_of(log_probs) == pytest.approx(static_perplexity(model, val, 1, NUM_STEPS), rel=1e-6)


def test_learning_from_the_read_text_helps_and_leaves_the_model_alone(toy):
    _, _, val, _, model = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, static = dynamic_token_log_probs(model, val, NUM_STEPS, lr=0.0)
    _, dynamic = dynamic_token_log_probs(model, val, NUM_STEPS, lr=1.0)
    # The first segment is scored before any update: identical.
    np.testing.assert_allclose(dynamic[:NUM_STEPS], static[:NUM_STEPS], rtol=1e-6)
    # The chorus comes back three times: the reader that learns predicts it better.
    assert perplexity_of(dynamic) < 0.8 * perplexity_of(static)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)
    assert not model.training


def test_no_token_is_scored_by_a_model_that_has_seen_it(toy):
    _, _, val, _, model = toy
    cut = 3 * NUM_STEPS + 1  # tokens 1..cut-1 are segments 0-2; the labels of segment 3 start at cut
    changed = val.clone()
    changed[cut:] = changed[cut:].flip(0)
    _, original = dynamic_token_log_probs(model, val, NUM_STEPS, lr=1.0)
    _, altered = dynamic_token_log_probs(model, changed, NUM_STEPS, lr=1.0)
    np.testing.assert_allclose(altered[: cut - 1], original[: cut - 1], rtol=1e-6)  # the past is the past
    assert not np.allclose(altered[cut - 1:], original[cut - 1:])


def test_adaptive_ngram_counts_each_token_after_predicting_it(toy):
    vocab, train_ids, val, _, _ = toy
    ngram = KneserNey(3).fit(train_ids, len(vocab))
    positions = np.arange(1, 31)
    scores = ngram_token_log_probs(ngram, val, positions, adaptive=True)
    tokens = val.tolist()
    for i, p in enumerate(positions.tolist()):
        # By hand: fit on train, observe everything before p, then predict p.
        by_hand = KneserNey(3).fit(train_ids, len(vocab)).observe(tokens[:p])
        assert scores[i] == pytest.approx(math.log(by_hand.prob(tokens[max(0, p - 2):p], tokens[p])), rel=1e-12)
    # The model passed in keeps its training counts.
    fresh = KneserNey(3).fit(train_ids, len(vocab))
    assert ngram.prob(tokens[:2], tokens[2]) == fresh.prob(tokens[:2], tokens[2])
    # And it learns the chorus: the adaptive scores beat the static ones.
    static = np.array([math.log(ngram.prob(tokens[max(0, p - 2):p], tokens[p])) for p in positions])
    assert scores.mean() > static.mean()


def test_rate_and_weight_are_chosen_on_val_and_test_starts_afresh(toy):
    vocab, train_ids, val, test, model = toy
    ngram = KneserNey(3).fit(train_ids, len(vocab))
    rates = [0.0, 0.3, 1.0, 1e6]  # 1e6 diverges: it must not win
    metrics = evaluate_dynamic(model, ngram, {"val": val, "test": test}, NUM_STEPS, rates)
    by_rate = {lr: perplexity_of(dynamic_token_log_probs(model, val, NUM_STEPS, lr)[1]) for lr in rates[:3]}
    assert metrics.lr == min(by_rate, key=by_rate.get) != 0.0
    assert metrics.dynamic.val == pytest.approx(by_rate[metrics.lr], rel=1e-9)
    # test is read by a fresh copy of the trained model with val's rate, not one that read val
    positions, neural = dynamic_token_log_probs(model, test, NUM_STEPS, metrics.lr)
    assert metrics.dynamic.test == pytest.approx(perplexity_of(neural), rel=1e-9)
    adaptive = ngram_token_log_probs(ngram, test, positions, adaptive=True)
    assert metrics.ngram_adaptive.test == pytest.approx(perplexity_of(adaptive), rel=1e-12)
    assert metrics.weight in WEIGHT_GRID
    assert metrics.interpolated.test == pytest.approx(
        perplexity_of(mixture_log_probs(neural, adaptive, metrics.weight)), rel=1e-9)
    assert metrics.interpolated.val <= min(metrics.dynamic.val, metrics.ngram_adaptive.val) * (1 + 1e-9)
    # Without a test split, only val is measured.
    val_only = evaluate_dynamic(model, ngram, {"val": val}, NUM_STEPS, rates[:2])
    assert val_only.dynamic.test is val_only.ngram_adaptive.test is val_only.interpolated.test is None


def test_bad_arguments_name_the_fix(toy):
    vocab, train_ids, val, _, model = toy
    ngram = KneserNey(2).fit(train_ids, len(vocab))
    with pytest.raises(ValueError, match="chosen on val"):
        evaluate_dynamic(model, ngram, {"test": val}, NUM_STEPS, [1.0])
    with pytest.raises(ValueError, match="learning_rates"):
        evaluate_dynamic(model, ngram, {"val": val}, NUM_STEPS, [])


def test_no_update_is_always_tried_so_adapting_never_reports_worse_than_static(toy):
    """Rates that only hurt (here: they diverge) lose to 0, which the grid always holds: the
    reported dynamic perplexity is then the static one of the same single stream."""
    vocab, train_ids, val, test, model = toy
    ngram = KneserNey(2).fit(train_ids, len(vocab))
    result = evaluate_dynamic(model, ngram, {"val": val, "test": test}, NUM_STEPS, [1e6, 1e7])
    assert result.lr == 0.0
    static_val = perplexity_of(dynamic_token_log_probs(model, val, NUM_STEPS, lr=0.0)[1])
    assert result.dynamic.val == pytest.approx(static_val, rel=1e-12)
    # Whatever the rates, the one chosen is never worse on the tuning tokens than not adapting.
    helpful = evaluate_dynamic(model, ngram, {"val": val}, NUM_STEPS, [0.3, 1.0])
    assert helpful.dynamic.val <= static_val * (1 + 1e-12)


def test_the_rate_is_chosen_on_a_bounded_part_of_val(toy, monkeypatch):
    vocab, train_ids, val, test, model = toy
    ngram = KneserNey(2).fit(train_ids, len(vocab))
    import lyricist.evaluation.dynamic as dynamic

    read = []
    real = dynamic.StreamReader.read

    def recording(self, ids, *args):
        read.append((len(ids), self.lr))
        return real(self, ids, *args)

    monkeypatch.setattr(dynamic.StreamReader, "read", recording)
    result = dynamic.evaluate_dynamic(model, ngram, {"val": val, "test": test}, NUM_STEPS, [0.3, 1.0],
                                      tune_tokens=30)
    assert read[:3] == [(31, 0.0), (31, 0.3), (31, 1.0)]  # each rate reads the first 30 predictions once
    # then the chosen rate's reader goes on through the rest of val, and a fresh one reads test
    assert read[3:] == [(len(val) - 30, result.lr), (len(test), result.lr)]
    with pytest.raises(ValueError, match=r"evaluate\.dynamic_tune_tokens.*null"):
        dynamic.evaluate_dynamic(model, ngram, {"val": val}, NUM_STEPS, [1.0], tune_tokens=NUM_STEPS)


@pytest.mark.parametrize("rule", ["sgd", "krause"])
def test_reading_on_from_the_tuning_part_gives_what_reading_val_afresh_gives(toy, rule):
    """The tuning reader goes on through the rest of val instead of a fresh reader starting over:
    the same operations on the same segments, so the same numbers, bit for bit."""
    vocab, train_ids, val, test, model = toy
    rms = gradient_rms(model, train_ids, NUM_STEPS, batch_size=2) if rule == "krause" else None
    lr = 1.0 if rule == "sgd" else 0.01
    whole = dynamic_token_log_probs(model, val, NUM_STEPS, lr, rms, decay=0.02)[1]
    reader = StreamReader(model, NUM_STEPS, lr, rms, decay=0.02)
    first = reader.read(val[:31])  # 30 predictions: segments 0-5
    rest = reader.read(val[30:])  # token 30, the last target read, is the next segment's first input
    assert np.array_equal(np.concatenate([first, rest]), whole)
    ngram = KneserNey(2).fit(train_ids, len(vocab))
    result = evaluate_dynamic(model, ngram, {"val": val, "test": test}, NUM_STEPS, [lr], tune_tokens=30,
                              rms=rms, decay=0.02)
    assert result.lr == lr  # the chorus is learnt: the rate helps already on the first 30 tokens
    assert result.dynamic.val == perplexity_of(whole)
    assert result.dynamic.test == perplexity_of(dynamic_token_log_probs(model, test, NUM_STEPS, lr, rms, 0.02)[1])


def test_the_adaptive_ngram_scored_once_serves_every_rule(toy):
    vocab, train_ids, val, test, model = toy
    ngram = KneserNey(3).fit(train_ids, len(vocab))
    splits = {"val": val, "test": test}
    adaptive = adaptive_ngram_scores(ngram, splits, NUM_STEPS)
    for split, ids in splits.items():
        positions = dynamic_token_log_probs(model, ids, NUM_STEPS, 0.0)[0]
        assert np.array_equal(adaptive[split], ngram_token_log_probs(ngram, ids, positions, adaptive=True))
    assert (evaluate_dynamic(model, ngram, splits, NUM_STEPS, [0.3], adaptive=adaptive)
            == evaluate_dynamic(model, ngram, splits, NUM_STEPS, [0.3]))
    with pytest.raises(ValueError, match="same positions"):
        evaluate_dynamic(model, ngram, splits, NUM_STEPS, [0.3], adaptive={"val": adaptive["val"][:-1],
                                                                             "test": adaptive["test"]})


def test_progress_lines_come_at_most_every_interval_and_name_the_read(toy):
    _, _, val, _, model = toy
    now = [0.0]

    def clock():
        now[0] += 1.0  # one second per call: a segment read takes a second
        return now[0]

    lines = []
    progress = Progress(lines.append, every=3.0, clock=clock)
    StreamReader(model, NUM_STEPS, 0.3).read(val, progress, "rate 0.3 on val")
    segments = (len(val) - 1) // NUM_STEPS
    assert len(lines) == segments // 3  # a line every third second, i.e. segment
    total = segments * NUM_STEPS
    # The first tick starts the read's clock (its segment is read before it): 2 s since then.
    assert lines[0] == f"    rate 0.3 on val: 15 / {total} tokens in 2 s, ~{2 * (total - 15) / 15:.0f} s left"
    StreamReader(model, NUM_STEPS, 0.3).read(val, progress, "rate 0.3 on test")  # a new label, a new clock
    first_test_line = next(line for line in lines if "on test" in line)
    assert int(first_test_line.split(" in ")[1].split(" s")[0]) <= 3
    with pytest.raises(ValueError, match="positive seconds"):
        Progress(lines.append, every=0)


def test_krause_update_follows_the_formula_and_never_overshoots_the_trained_weights():
    trained = torch.tensor([1.0, -2.0, 0.5])
    weight = torch.nn.Parameter(trained + torch.tensor([0.4, -0.4, 1.0]))  # moved off by reading
    other = torch.nn.Parameter(torch.zeros(2))
    rms = [torch.tensor([0.1, 0.2, 40.0]), torch.tensor([0.3, 0.3])]
    update = RMSDecayUpdate([weight, other], rms, lr=0.01, decay=0.5, eps=0.001)
    update.trained[0] = trained.clone()  # as if built before the move
    weight.grad, other.grad = torch.tensor([1.0, 2.0, -3.0]), None
    before = weight.detach().clone()
    update.step()
    norm = float(rms[0].mean() + rms[1].mean())
    factor = (0.5 * rms[0] / norm).clamp(max=1.0)
    assert factor[2] == 1.0 and factor[0] < 1.0  # a large rms: the decay capped at "back to trained"
    expected = before + factor * (trained - before) - 0.01 * weight.grad / (rms[0] + 0.001)
    torch.testing.assert_close(weight.detach(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(other.detach(), torch.zeros(2))  # no gradient, no move (it sits at its trained value)


def test_krause_step_into_buffers_gives_the_formulas_floats_bit_for_bit():
    """The step writes into buffers kept between steps; its floats are the literal formula's."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(64, 32), (32,), (7, 3)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    rms = [torch.rand(shape, generator=generator) for shape in shapes]
    update = RMSDecayUpdate(params, rms, lr=0.003, decay=0.02, eps=1e-3)
    literal = [p.detach().clone() for p in params]
    trained = [p.clone() for p in literal]
    norm = sum(float(r.mean()) for r in rms)
    for _ in range(3):
        grads = [torch.randn(shape, generator=generator) for shape in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        update.step()
        for p, p0, r, g in zip(literal, trained, rms, grads):
            p.add_((0.02 * r / norm).clamp(max=1.0) * (p0 - p) - 0.003 * g / (r + 1e-3))
        for p, expected in zip(params, literal):
            assert torch.equal(p.detach(), expected)


def test_gradient_rms_is_the_root_mean_square_of_the_batch_gradients(toy):
    _, train_ids, _, _, model = toy
    rms = gradient_rms(model, train_ids, NUM_STEPS, batch_size=2, max_tokens=40)
    reader, squares, state, count = copy.deepcopy(model), None, None, 0
    for x, y in consecutive_batches(train_ids[:41], 2, NUM_STEPS):
        state = None if state is None else tuple(s.detach() for s in state)
        logits, state = reader(x, state)
        grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()),
                                    list(reader.parameters()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, reader.parameters())]
        squares = [g ** 2 for g in grads] if squares is None else [s + g ** 2 for s, g in zip(squares, grads)]
        count += 1
    assert count == 3  # 41 ids: 2 streams of 20, each 3 segments of 5 inputs (+1 target)
    for got, square in zip(rms, squares):
        torch.testing.assert_close(got, torch.sqrt(square / count))


def test_krause_rule_learns_the_chorus_and_leaves_the_model_alone(toy):
    vocab, train_ids, val, test, model = toy
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rms = gradient_rms(model, train_ids, NUM_STEPS, batch_size=2)
    _, static = dynamic_token_log_probs(model, val, NUM_STEPS, lr=0.0, rms=rms)
    _, krause = dynamic_token_log_probs(model, val, NUM_STEPS, lr=0.01, rms=rms, decay=0.02, eps=1e-3)
    np.testing.assert_allclose(krause[:NUM_STEPS], static[:NUM_STEPS], rtol=1e-6)  # scored before learning
    assert perplexity_of(krause) < 0.8 * perplexity_of(static)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)
    # Chosen on val with 0 in the grid, like the SGD rule, and never worse than static there.
    ngram = KneserNey(2).fit(train_ids, len(vocab))
    result = evaluate_dynamic(model, ngram, {"val": val, "test": test}, NUM_STEPS, [0.01, 1e3], rms=rms,
                              decay=0.02)
    assert result.lr == 0.01 and result.dynamic.val == pytest.approx(perplexity_of(krause), rel=1e-9)
