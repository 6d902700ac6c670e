import importlib.util
import itertools
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import params_file, stage, write_encoded
from lyricist.evaluation.ngram import (
    FALLBACK_DISCOUNTS, AddOneUnigram, KneserNey, best_kneser_ney, estimate_discounts, evaluate_baselines,
    load_kneser_ney, perplexity, save_kneser_ney,
)
from lyricist.data.vocab import Vocab, VocabError, encode_to_array, save_ids

# "abacab" over the vocabulary <unk> a b c: small enough to check by hand.
A, B, C = 1, 2, 3
TOY = [A, B, A, C, A, B]
TOY_V = 4
# 400 random characters of a 7-token vocabulary: its trigram and 4-gram levels get Chen &
# Goodman's discounts, its unigram and bigram levels (too few types) the fallback ones.
TEXT = "".join(np.random.default_rng(0).choice(list("abcde "), 400, p=[.3, .2, .15, .1, .05, .2]))


def encoded(text: str) -> tuple[list[int], int]:
    vocab = Vocab.build(text)
    return vocab.encode(text), len(vocab)


@pytest.mark.parametrize("mode", ["modified", "single", "fixed"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distribution_sums_to_one_for_every_context(order, mode):
    ids, vocab_size = encoded(TEXT)
    model = KneserNey(order, mode).fit(ids, vocab_size)
    # every context of order - 1 tokens (seen or not, <unk> included) and every shorter one
    for length in range(order):
        for context in itertools.product(range(vocab_size), repeat=length):
            dist = model.distribution(context)
            assert dist.shape == (vocab_size,)
            assert dist.sum() == pytest.approx(1.0, abs=1e-12)
            assert dist.min() > 0.0  # <unk> never occurs in train and still has a chance
            assert model.prob(context, 0) == pytest.approx(dist[0], rel=1e-12)


def test_hand_computed_kneser_ney_bigram_and_trigram():
    # Bigrams of "abacab": ab 2, ba 1, ac 1, ca 1. Unigram continuation counts (distinct
    # predecessors): a 2 (b, c), b 1, c 1, <unk> 0; total 4, mass 3 * 0.75 = 2.25, so
    # P1(a) = (2 - .75) / 4 + 2.25 / 4 / 4 = 0.453125 and P1(b) = P1(c) = 0.203125.
    bigram = KneserNey(2, "fixed", 0.75).fit(TOY, TOY_V)
    assert bigram.distribution(()) == pytest.approx([0.140625, 0.453125, 0.203125, 0.203125])
    # P(b | a) = (2 - .75) / 3 + (2 * .75 / 3) * P1(b)
    assert bigram.prob([A], B) == pytest.approx(1.25 / 3 + 0.5 * 0.203125)
    # P(a | b) = (1 - .75) / 1 + .75 * P1(a)
    assert bigram.prob([B], A) == pytest.approx(0.25 + 0.75 * 0.453125)
    # unseen context <unk>: the unigram level alone
    assert bigram.prob([0], A) == pytest.approx(0.453125)

    # Trigrams aba, bac, aca, cab (once each); bigram continuation counts ab 1 (only "cab":
    # the first "ab" has no predecessor), ac 1; so P2(b | a) = (1 - .75) / 2 + .75 * P1(b).
    trigram = KneserNey(3, "fixed", 0.75).fit(TOY, TOY_V)
    p2_b_given_a = 0.125 + 0.75 * 0.203125
    assert trigram.prob([C, A], B) == pytest.approx(0.25 + 0.75 * p2_b_given_a)  # 0.4580078125
    assert trigram.prob([C, A], C) == pytest.approx(0.75 * p2_b_given_a)  # P2(c | a) = P2(b | a)
    # a history shorter than order - 1 (start of a text) stops at the bigram level
    assert trigram.prob([A], B) == pytest.approx(p2_b_given_a)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_observing_a_text_equals_fitting_on_it(order):
    """fit(A) then observe(B after A) is fit(A + B): same probabilities for every context,
    with fixed discounts (modified ones are estimated from A's counts and then kept)."""
    ids, vocab_size = encoded(TEXT)
    first, second = ids[:250], ids[250:]
    observed = KneserNey(order, "fixed", 0.75).fit(first, vocab_size).observe(second, context=first)
    refit = KneserNey(order, "fixed", 0.75).fit(ids, vocab_size)
    for length in range(order):
        for context in itertools.product(range(vocab_size), repeat=length):
            np.testing.assert_allclose(observed.distribution(context), refit.distribution(context),
                                       rtol=1e-12, atol=0)
    # Without the context, only the n-grams inside B are added: still a distribution.
    alone = KneserNey(order, "modified").fit(first, vocab_size).observe(second)
    for context in itertools.product(range(vocab_size), repeat=order - 1):
        assert alone.distribution(context).sum() == pytest.approx(1.0, abs=1e-12)


def test_observing_makes_a_repeated_line_likely():
    # "aab" never occurs in the training text; once observed, the model expects it again.
    model = KneserNey(3, "modified").fit(TOY * 5, TOY_V)
    before = model.prob([A, A], B)
    model.observe([C, C, A, A, B])
    assert model.prob([A, A], B) > 1.5 * before


def test_modified_discounts_follow_chen_and_goodman():
    counts = [1] * 10 + [2] * 4 + [3] * 2 + [4] + [9, 12]  # n1..n4 = 10, 4, 2, 1
    y = 10 / 18
    assert estimate_discounts(counts) == pytest.approx(
        (1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2))
    assert estimate_discounts(counts, "single") == pytest.approx((y, y, y))
    assert estimate_discounts(counts, "fixed", 0.5) == (0.5, 0.5, 0.5)
    # no n-gram seen exactly 3 times (D3+ undefined) or none seen once (Y = 0): the fallback
    assert estimate_discounts([1, 1, 1, 2, 5]) == FALLBACK_DISCOUNTS
    assert estimate_discounts([2, 2, 3, 4], "single") == (FALLBACK_DISCOUNTS[0],) * 3


def test_unigram_add_one_value_and_perplexity_of_uniform_is_vocab_size():
    model = AddOneUnigram().fit(TOY, TOY_V)  # counts a 3, b 2, c 1, <unk> 0; N = 6
    assert model.prob((), A) == pytest.approx(4 / 10)
    assert model.distribution() == pytest.approx([0.1, 0.4, 0.3, 0.2])
    uniform = AddOneUnigram().fit([], vocab_size=7)
    assert perplexity(uniform, [3, 1, 4, 1, 5, 6, 0]) == pytest.approx(7.0)


def test_perplexity_skips_the_first_token_unless_given_context():
    model = AddOneUnigram().fit(TOY, TOY_V)
    nll = -math.log(0.3) - math.log(0.2)  # b then c; the first a has no history
    assert perplexity(model, [A, B, C]) == pytest.approx(math.exp(nll / 2))
    nll_with_context = nll - math.log(0.4)  # with context the first a is predicted too
    assert perplexity(model, [A, B, C], context=[B]) == pytest.approx(math.exp(nll_with_context / 3))
    with pytest.raises(ValueError, match="nothing to predict"):
        perplexity(model, [A])


def test_order_one_kneser_ney_is_close_to_add_one_unigram():
    ids, vocab_size = encoded(TEXT)
    held_out = ids[::-1]
    kn1 = perplexity(KneserNey(1).fit(ids, vocab_size), held_out)
    add_one = perplexity(AddOneUnigram().fit(ids, vocab_size), held_out)
    assert kn1 == pytest.approx(add_one, rel=0.15)
    # both beat guessing uniformly, and neither looks at context
    assert kn1 < vocab_size and add_one < vocab_size
    assert KneserNey(1).fit(ids, vocab_size).prob([A, B], C) == KneserNey(1).fit(ids, vocab_size).prob([], C)


def test_higher_orders_capture_a_repetitive_sequence():
    ids, vocab_size = encoded("abcd" * 50)
    held_out, _ = encoded("abcd" * 10)
    results, best = evaluate_baselines(ids, {"val": held_out}, vocab_size, max_order=4)
    assert results["unigram"]["val_ppl"] > 4.0  # four equally frequent characters (+ <unk>)
    assert results["kn2"]["val_ppl"] < 1.2
    assert results["kn4"]["val_ppl"] < 1.2
    assert results["best"]["name"].startswith("kn") and results["best"]["val_ppl"] < 1.2
    assert f"kn{best.order}" == results["best"]["name"]


def test_the_best_kneser_ney_is_the_one_the_evaluate_stage_would_fit():
    ids, vocab_size = encoded(TEXT)
    held_out = ids[::-1][:150]
    results, best = evaluate_baselines(ids, {"val": held_out}, vocab_size, max_order=5)
    fitted, val_ppl = best_kneser_ney(ids, held_out, vocab_size, max_order=5)
    assert best.order == fitted.order and results[f"kn{best.order}"]["val_ppl"] == val_ppl
    assert evaluate_baselines(ids, {"test": held_out}, vocab_size, max_order=2)[1] is None  # no val


def _contexts(ids: list[int], vocab_size: int, order: int) -> list[list[int]]:
    """Every context of the text, shorter ones (a split's start) and unseen random ones."""
    rng = np.random.default_rng(1)
    seen = [ids[max(0, i - order + 1):i] for i in range(len(ids))]
    return seen + [rng.integers(0, vocab_size, n).tolist() for n in range(order) for _ in range(20)]


@pytest.mark.parametrize("order, mode", [(1, "modified"), (2, "fixed"), (4, "modified"), (5, "single")])
def test_a_saved_model_loads_with_the_same_probabilities(tmp_path, order, mode):
    ids, vocab_size = encoded(TEXT)
    fitted = KneserNey(order, mode, 0.6).fit(ids, vocab_size)
    path = tmp_path / "ngram" / "kn.npz"
    save_kneser_ney(fitted, path, max_order=5)
    assert not [p for p in path.parent.iterdir() if p != path]  # no temporary file left
    loaded = load_kneser_ney(path, vocab_size, max_order=5, discount_mode=mode, fixed_discount=0.6)
    assert (loaded.order, loaded.discount_mode, loaded.vocab_size) == (order, mode, vocab_size)
    held_out = ids[::-1]
    for context in _contexts(held_out, vocab_size, order):
        assert [loaded.prob(context, w) for w in range(vocab_size)] == [
            fitted.prob(context, w) for w in range(vocab_size)]  # bit for bit
        np.testing.assert_array_equal(loaded.distribution(context), fitted.distribution(context))
    # It goes on learning as the fitted one does (the adaptive n-gram of dynamic evaluation).
    loaded.observe(held_out[:200], context=ids[-4:])
    fitted.observe(held_out[:200], context=ids[-4:])
    for context in _contexts(held_out[200:], vocab_size, order):
        assert loaded.distribution(context).tolist() == fitted.distribution(context).tolist()


def test_a_saved_model_that_does_not_match_is_refused_with_the_fix(tmp_path):
    ids, vocab_size = encoded(TEXT)
    path = tmp_path / "kn.npz"
    save_kneser_ney(KneserNey(3).fit(ids, vocab_size), path, max_order=4)
    settings = dict(vocab_size=vocab_size, max_order=4, discount_mode="modified", fixed_discount=0.75)
    assert load_kneser_ney(path, **settings).order == 3
    for changed, message in [({"vocab_size": vocab_size + 1}, f"vocab_size: fit with {vocab_size}, asked"),
                             ({"max_order": 5}, "max_order: fit with 4, asked 5"),
                             ({"discount_mode": "fixed"}, "discount_mode: fit with 'modified', asked 'fixed'")]:
        with pytest.raises(ValueError, match=message + ".*dvc repro baseline"):
            load_kneser_ney(path, **{**settings, **changed})
    with pytest.raises(FileNotFoundError, match="dvc repro baseline"):
        load_kneser_ney(tmp_path / "missing.npz", **settings)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a Kneser-Ney model file.*dvc repro baseline"):
        load_kneser_ney(tmp_path / "junk.npz", **settings)


def test_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        KneserNey(2).fit([1, 2, 4], vocab_size=4)


def test_stage_script_writes_metrics_json(tmp_path, capsys):
    # pipelines/ is not a package: load the stage script from its path
    script = Path(__file__).resolve().parents[1] / "pipelines" / "baseline.py"
    spec = importlib.util.spec_from_file_location("baseline_stage", script)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)

    text = "分开 不分开 我不能再想 我不 我不 我不能\n爱情来的太快就像龙卷风\n" * 10
    data_dir = tmp_path / "encoded"
    vocab = Vocab.build(text[:250])
    vocab.save(data_dir / "vocab.json")
    for split, part in (("train", text[:250]), ("val", text[250:]), ("test", "")):
        save_ids(data_dir / f"{split}.npy", encode_to_array(vocab, part))
    params = tmp_path / "params.yaml"
    params.write_text("baseline:\n  max_order: 3\n  discount_mode: modified\n  fixed_discount: 0.75\n",
                      encoding="utf-8")

    metrics_path, model_path = tmp_path / "reports" / "baseline.json", tmp_path / "models" / "kn.npz"
    stage.main(["--data-dir", str(data_dir), "--metrics", str(metrics_path), "--params", str(params),
                "--model", str(model_path)])
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    out = capsys.readouterr().out
    assert "baseline: fitting on train 250, val " in out  # before the fit, then one line per model as it ends
    assert re.search(r"^  kn3: fit \d+\.\d s, scored val \d+\.\d s$", out, re.M), out
    # The saved model is the val-best Kneser-Ney order, with the perplexity the metrics report.
    saved = load_kneser_ney(model_path, len(vocab), max_order=3, discount_mode="modified", fixed_discount=0.75)
    kn_names = [name for name in metrics if name.startswith("kn")]
    assert f"kn{saved.order}" == min(kn_names, key=lambda name: metrics[name]["val_ppl"])
    assert perplexity(saved, np.load(data_dir / "val.npy")) == metrics[f"kn{saved.order}"]["val_ppl"]
    assert set(metrics) == {"unigram", "kn1", "kn2", "kn3", "best"}
    assert set(metrics["kn3"]) == {"val_ppl"}  # the empty test split is left out
    assert metrics["best"]["val_ppl"] == min(m["val_ppl"] for name, m in metrics.items() if name != "best")
    assert all(np.isfinite(m["val_ppl"]) for m in metrics.values())


def test_the_baselines_report_one_line_per_model_with_its_times():
    ids, vocab_size = encoded(TEXT)
    lines = []
    metrics, best = evaluate_baselines(ids, {"val": ids[::-1][:150], "test": ids[:3]}, vocab_size, max_order=3,
                                       report=lines.append)
    assert [line.split(":")[0].strip() for line in lines] == ["unigram", "kn1", "kn2", "kn3"]
    assert all(re.fullmatch(r"  \w+: fit \d+\.\d s, scored val, test \d+\.\d s", line) for line in lines), lines
    # Only the val-best order is kept, and it is the one with the lowest val perplexity (ties: the lower).
    orders = [int(name[2:]) for name in metrics if name.startswith("kn")]
    assert best.order == min(orders, key=lambda k: (metrics[f"kn{k}"]["val_ppl"], k))


def test_baseline_refuses_an_empty_val_split_and_keeps_the_old_report(tmp_path):
    encoded = write_encoded(tmp_path / "encoded", "abc", val_fraction=0.05, test_fraction=0.05)
    report = tmp_path / "reports" / "baseline.json"
    report.parent.mkdir()
    report.write_text('{"kn5": {"val_ppl": 175.4}}\n')
    with pytest.raises(VocabError, match=r"the val split in .* holds 0 token\(s\), too few \(>= 2\)"):
        stage("baseline").main(["--data-dir", str(encoded), "--metrics", str(report),
                                "--model", str(tmp_path / "kn.npz"), "--params", str(params_file(tmp_path))])
    assert json.loads(report.read_text()) == {"kn5": {"val_ppl": 175.4}}
    assert not (tmp_path / "kn.npz").exists()
