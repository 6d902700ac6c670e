"""Lyrics measured as lyrics (lyricist.evaluation.lyrics) and the decoding options of
lyricist.generate: nucleus sampling, the repetition penalty, the n-gram ban, and their refusals."""

import html
import math
import random

import pytest
import torch

from conftest import gen
from conftest import LYRICS, compose_config
from conftest import make_lm
from lyricist.data.vocab import Vocab
from lyricist.evaluation import lyrics
from lyricist.evaluation.metrics import LyricMetrics, LyricsResult
from lyricist.evaluation.samples import sample_lyrics
from lyricist.decoding import banned_by_ngrams, generate, nucleus_cut, penalize_recent
from lyricist.models import RecurrentLM
from lyricist.cli.config import settings_of
from lyricist.settings import Decoding


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_the_reference_holds_exactly_the_texts_ngrams_in_8_bytes_each(chunk, monkeypatch):
    # Hashed chunk by chunk (7: windows across every chunk border), it answers as a set of the strings would.
    monkeypatch.setattr(lyrics, "_HASH_CHUNK", chunk)
    rng = random.Random(0)
    text = "".join(rng.choice("ab 分开\n\ufffd") for _ in range(3000))
    reference, exact = lyrics.NgramSet(text, n=5), set(lyrics.char_ngrams(text, 5))
    assert len(reference) == len(exact) and reference.hashes.nbytes == 8 * len(exact)
    probes = sorted(exact) + ["".join(rng.choice("ab 分开xy") for _ in range(5)) for _ in range(500)]
    assert reference.contains(probes).tolist() == [g in exact for g in probes]
    assert "abab" not in reference and all(g in reference for g in sorted(exact)[:20])
    assert lyrics.NgramSet("abc", n=5).contains(["aaaaa"]).tolist() == [False]  # nothing to hold
    with pytest.raises(ValueError, match="reference holds 5-grams, but copy_rate was asked for n=3"):
        lyrics.copy_rate(["abcdef"], reference, n=3)


def test_copy_rate_counts_the_ngrams_found_in_the_reference():
    reference = lyrics.NgramSet("abcdefghij", n=3)  # abc bcd ... hij
    assert lyrics.copy_rate(["abcx"], reference, n=3) == 0.5  # abc yes, bcx no
    assert lyrics.copy_rate(["abcx", "hij", "zz"], reference, n=3) == 2 / 3  # pooled; "zz" has none
    assert lyrics.copy_rate(["ab"], reference, n=3) == 0.0
    assert lyrics.copy_rate(["abc    "], lyrics.NgramSet("abc    x", n=3), n=3) == 1.0  # 3 of 3: "   " x2 left out
    assert lyrics.copy_rate(["一二三四五六七八九"], lyrics.NgramSet("零一二三四五六七八")) == 1 / 2  # n = 8


def test_repeated_lines_distinct_and_line_lengths():
    texts = ["我不能\n再想\n我不能\n\n 我不能 ", "再想\n我"]  # the second text's 再想 repeats nothing of its own
    assert lyrics.lines_of(texts[0]) == ["我不能", "再想", "我不能", "我不能"]
    assert lyrics.repeated_lines(texts) == 2 / 6
    assert lyrics.distinct(["aaab"], 1) == 2 / 4 and lyrics.distinct(["aaab"], 2) == 2 / 3
    assert lyrics.distinct(["aaab", "abcd"], 1) == (2 / 4 + 4 / 4) / 2  # the mean over texts
    m = lyrics.lyric_metrics(texts, lyrics.NgramSet("我不能再想我不能再想"))
    assert m.line_length_mean == pytest.approx(14 / 6)
    assert m.line_length_std == pytest.approx(math.sqrt(sum((x - 14 / 6) ** 2 for x in [3, 2, 3, 3, 2, 1]) / 6))
    assert m.copy_rate == 0.0 and m.repeated_lines == 2 / 6  # no text holds 8 characters in a row


def test_human_pieces_are_as_long_as_a_sample():
    assert lyrics.human_pieces("abcdefg", 3) == ["abc", "def"]  # the short rest left out
    assert lyrics.human_pieces("ab", 3) == ["ab"]
    with pytest.raises(ValueError, match="length"):
        lyrics.human_pieces("abc", 0)


def test_metrics_keys_for_reports_and_mlflow():
    m = LyricMetrics(0.1, 0.2, 0.3, 0.4, 5.0, 6.0)
    assert list(m.as_flat_dict("samples/")) == ["samples/copy_rate", "samples/repeated_lines", "samples/distinct_1",
                                                "samples/distinct_2", "samples/line_length_mean",
                                                "samples/line_length_std"]
    flat = LyricsResult(m, LyricMetrics(0.0, 0.0, 0.5, 0.9, 13.0, 4.0)).as_flat_dict()
    assert flat["samples_copy_rate"] == 0.1 and flat["human_test_distinct_2"] == 0.9 and len(flat) == 12


def test_nucleus_keeps_the_fewest_tokens_holding_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    kept = lambda p: torch.isfinite(nucleus_cut(logits, p)).nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.5) == [0] and kept(0.8) == [0, 1] and kept(0.81) == [0, 1, 2] and kept(1.0) == [0, 1, 2, 3]
    assert kept(1e-9) == [0]  # the most likely token is always kept


def test_ctrl_penalty_and_the_ngram_ban():
    logits = torch.tensor([2.0, -2.0, 1.0, 3.0])
    assert penalize_recent(logits, [0, 1, 0], 2.0).tolist() == [1.0, -4.0, 1.0, 3.0]
    exempt = torch.tensor([True, False, False, False])
    assert penalize_recent(logits, [0, 1], 2.0, exempt).tolist() == [2.0, -4.0, 1.0, 3.0]
    assert banned_by_ngrams([1, 2, 3, 1, 2], 3) == {3} and banned_by_ngrams([1, 2, 3, 1, 2], 2) == {3}
    assert banned_by_ngrams([1, 2, 3], 4) == set() and banned_by_ngrams([4, 5], 1) == {4, 5}


def _constant_model(vocab: Vocab, logits: dict[str, float]) -> RecurrentLM:
    """A model whose every prediction has these logits (others 0): its greedy decoding repeats."""
    model = make_lm(len(vocab), cell="rnn", hidden_size=4, embedding_size=4)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        for token, value in logits.items():
            model.head.bias[vocab.stoi[token]] = value
    return model


def test_repetition_controls_change_what_greedy_repeats():
    vocab = Vocab.build(LYRICS)
    model = _constant_model(vocab, {"爱": 5.0, "风": 4.0, "\n": 4.5})
    assert gen(model, vocab, "分开", 5) == "分开爱爱爱爱爱"
    # 爱 penalised to 2.5 after it was written: the line break (never penalised) wins from then on.
    assert gen(model, vocab, "分开", 4, repetition_penalty=2.0) == "分开爱\n\n\n"
    # A 1-token window: after the line break 爱 is out of it, back at 5.
    assert gen(model, vocab, "分开", 4, repetition_penalty=2.0, repetition_window=1) == "分开爱\n爱\n"
    # No bigram twice: after 爱 then 爱爱 is banned, so the line break; then 爱\n is taken, ...
    assert gen(model, vocab, "分开", 4, no_repeat_ngram=2) == "分开爱爱\n爱"
    # No token twice (the prefix's included): the rest have logit 0, the first id of them wins.
    assert gen(model, vocab, "分开", 6, no_repeat_ngram=1) == "分开爱\n风<unk> 不"


def test_sampling_with_top_p_is_reproducible_and_a_tiny_nucleus_is_greedy():
    vocab = Vocab.build(LYRICS)
    torch.manual_seed(0)
    model = make_lm(len(vocab), cell="gru", hidden_size=8, embedding_size=4)
    sample = dict(strategy="sample", temperature=0.8, top_p=0.9, seed=3)
    assert gen(model, vocab, "分开", 20, **sample) == gen(model, vocab, "分开", 20, **sample)
    assert (gen(model, vocab, "分开", 20, strategy="sample", top_p=1e-9, seed=1)
            == gen(model, vocab, "分开", 20))
    assert (gen(model, vocab, "分开", 20, strategy="sample", top_p=1.0, seed=1)
            == gen(model, vocab, "分开", 20, strategy="sample", seed=1))  # 1: no cut


@pytest.mark.parametrize("option, value, allowed", [
    ("temperature", float("nan"), "a finite number"), ("temperature", math.inf, "a finite number"),
    ("temperature", 0, "a value > 0"), ("top_p", 0, "a value > 0"), ("top_p", 1.5, "a value <= 1"),
    ("top_k", 0, "a value >= 1"), ("repetition_penalty", 0.5, "a value >= 1"), ("repetition_window", 0, "a value >= 1"),
    ("no_repeat_ngram", 0, "a value >= 1"), ("strategy", "beam", "'greedy' or 'sample'"), ("num_chars", 0, "a value >= 1")])
def test_bad_decoding_options_are_refused_by_name(option, value, allowed):
    # conf's generate.* (the per-epoch samples, evaluate), before training starts; the served model
    # and the CLI check their fields with the same schema (lyricist.settings.Decoding).
    with pytest.raises(ValueError, match=rf"^generate\.{option}={value!r} is not allowed: use {allowed}.* \(.+\)$"):
        settings_of(compose_config([f"generate.{option}={value}"]))


def test_the_samples_page_puts_greedy_beside_the_default_and_measures_both():
    vocab = Vocab.build(LYRICS)
    torch.manual_seed(0)
    model = make_lm(len(vocab), cell="gru", hidden_size=8, embedding_size=4)
    train_ids, test_ids = torch.tensor(vocab.encode(LYRICS * 3)), torch.tensor(vocab.encode(LYRICS))
    decoding = dict(strategy="sample", temperature=0.8, top_p=0.9, repetition_penalty=1.2, seed=0)
    result, page = sample_lyrics(model, vocab, ["分开", "战争中部队"], Decoding(num_chars=30, **decoding), train_ids, test_ids)
    name = "default decoding"
    assert ("(`generate.*`: sample, temperature 0.8, top-p 0.9, repetition penalty 1.2 over 20 tokens, "
            "seed 0 (+1 per prefix))") in page
    defaults = [gen(model, vocab, p, 30, **{**decoding, "seed": i}) for i, p in enumerate(["分开", "战争中部队"])]
    reference = lyrics.NgramSet(LYRICS * 3)
    assert result.samples == lyrics.lyric_metrics(defaults, reference)
    length = round(sum(map(len, defaults)) / 2)
    assert result.human == lyrics.lyric_metrics(lyrics.human_pieces(LYRICS, length), reference)
    assert f"<th>greedy</th><th>{name}</th>" in page and page.count("<table>") == 2
    greedy = gen(model, vocab, "战争中部队", 30)
    assert "<unk>" in greedy and f"<pre>\n{html.escape(greedy)}\n</pre>" in page  # <unk> shown, not a tag
    assert f"<pre>\n{html.escape(defaults[0])}\n</pre>" in page
    assert f"| copy rate | {result.samples.copy_rate:.3f} | " in page  # greedy's column comes first
    assert f"| | greedy | {name} | human test text | what |" in page  # all prefixes together
    assert page.count(f"| | greedy | {name} |\n") == 2  # each prefix's
