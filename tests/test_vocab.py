"""Vocabularies and id files (lyricist.data.vocab) and the vocab stage, which refuses degenerate
data (<unk> alone, one repeated character, val mostly unseen) unless allowed."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LYRICS, compose_config, params_file, stage
from lyricist.cli.config import settings_of
from lyricist.data.vocab import Vocab, VocabError, encode_to_array, id_dtype, load_ids, save_ids

TEXT = "分开\n不分开 战争中部队"


def test_round_trip_on_chinese_one_token_per_character():
    vocab = Vocab.build(TEXT)
    ids = vocab.encode(TEXT)
    assert len(ids) == len(TEXT)  # code points, not UTF-8 bytes
    assert vocab.decode(ids) == TEXT
    assert vocab.unk_index not in ids
    assert vocab.itos[vocab.stoi["战"]] == "战" and "战" in vocab
    assert len(vocab) == 1 + len(set(TEXT))


def test_order_is_count_descending_then_code_point():
    vocab = Vocab.build("bcaab\n\n\n")  # counts: \n 3, a 2, b 2, c 1
    assert vocab.itos == ["<unk>", "\n", "a", "b", "c"]
    assert vocab.counts == {"\n": 3, "a": 2, "b": 2, "c": 1}
    assert Vocab.build(TEXT) == Vocab.build(TEXT)
    assert Vocab.build(TEXT).itos[1:3] == sorted("分开")  # both seen twice: tie -> code point


def test_min_freq_sends_rare_characters_to_unk():
    vocab = Vocab.build(TEXT, min_freq=2)
    assert vocab.itos == ["<unk>", *sorted("分开")]
    assert vocab.encode("不分") == [vocab.unk_index, vocab.stoi["分"]]
    assert vocab.counts["不"] == 1  # counts still report what min_freq dropped


def test_unseen_characters_map_to_unk_and_decode_visibly():
    vocab = Vocab.build(TEXT)
    ids = vocab.encode("分手吧")
    assert ids[1:] == [0, 0] and vocab.unk_index == 0
    assert vocab.decode(ids) == "分<unk><unk>"
    assert vocab.decode(ids, unk="") == "分"
    assert vocab.unknown_tokens("分手吧手") == ["手", "吧"]
    with pytest.raises(IndexError, match="outside the vocabulary"):
        vocab.decode([len(vocab)])


def test_save_load_round_trip_is_readable_utf8(tmp_path):
    vocab = Vocab.build(TEXT)
    path = tmp_path / "nested" / "vocab.json"
    vocab.save(path)
    raw = path.read_text(encoding="utf-8")
    assert "战" in raw and "\\u" not in raw  # human-readable Chinese, not escapes
    loaded = Vocab.load(path)
    assert loaded == vocab and loaded.counts == vocab.counts
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    assert list(tmp_path.joinpath("nested").iterdir()) == [path]  # no temp files left behind


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc repro"):
        Vocab.load(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    with pytest.raises(VocabError, match="broken.json.*malformed"):
        Vocab.load(broken)
    no_unk = tmp_path / "no_unk.json"
    no_unk.write_text(json.dumps({"format": "lyricist-char-vocab", "version": 1, "itos": ["a"]}), encoding="utf-8")
    with pytest.raises(VocabError, match="<unk>"):
        Vocab.load(no_unk)


def test_ids_round_trip_through_npy(tmp_path):
    vocab = Vocab.build(TEXT)
    array = encode_to_array(vocab, TEXT)
    assert array.dtype == np.uint8 and array.shape == (len(TEXT),)  # a handful of characters: 1 byte each
    path = tmp_path / "train.npy"
    save_ids(path, array, len(vocab))
    assert np.load(path).dtype == np.uint8
    ids = load_ids(path)
    assert ids.dtype == torch.uint8 and ids.tolist() == vocab.encode(TEXT)


@pytest.mark.parametrize("vocab_size, dtype", [(1, np.uint8), (256, np.uint8), (257, np.uint16),
                                               (65_536, np.uint16), (65_537, np.int32), (2**31, np.int32)])
def test_ids_take_the_smallest_type_that_holds_the_vocabulary(vocab_size, dtype, tmp_path):
    assert id_dtype(vocab_size) == dtype
    ids = np.array([0, vocab_size - 1])
    save_ids(tmp_path / "ids.npy", ids, vocab_size)
    assert np.load(tmp_path / "ids.npy").dtype == dtype
    assert load_ids(tmp_path / "ids.npy").tolist() == [0, vocab_size - 1]


def test_every_split_gets_the_vocabulary_s_type(tmp_path):
    # A split whose ids all lie below 256 still gets uint16 when the vocabulary needs it.
    save_ids(tmp_path / "val.npy", [1, 2, 3], vocab_size=300)
    assert np.load(tmp_path / "val.npy").dtype == np.uint16
    save_ids(tmp_path / "guess.npy", [1, 2, 300])  # no vocab_size: the largest id decides
    assert np.load(tmp_path / "guess.npy").dtype == np.uint16
    with pytest.raises(ValueError, match="id 300 is outside a vocabulary of 300"):
        save_ids(tmp_path / "bad.npy", [1, 300], vocab_size=300)
    with pytest.raises(ValueError, match="does not fit int32.*max_vocab_size"):
        id_dtype(2**31 + 1)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.int16, np.dtype(">i4")])
def test_an_older_id_file_still_loads(dtype, tmp_path):
    # Earlier runs wrote int32 always; other integer types (and byte orders) load as their values.
    np.save(tmp_path / "old.npy", np.array([5, 0, 3, 1000], dtype=dtype))
    ids = load_ids(tmp_path / "old.npy")
    assert ids.tolist() == [5, 0, 3, 1000]
    assert ids.dtype in (torch.int32, torch.int64)


def test_loaded_ids_are_memory_mapped_and_never_write_the_file(tmp_path):
    save_ids(tmp_path / "ids.npy", np.arange(100), 100)
    before = (tmp_path / "ids.npy").read_bytes()
    ids = load_ids(tmp_path / "ids.npy")
    if Path("/proc/self/maps").is_file():  # Linux: the file is mapped into this process, not read into it
        assert str(tmp_path / "ids.npy") in Path("/proc/self/maps").read_text()
    ids[0] = 7  # copy on write: this process's page only
    assert (tmp_path / "ids.npy").read_bytes() == before and load_ids(tmp_path / "ids.npy")[0] == 0


def test_ids_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc"):
        load_ids(tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an npy file")
    with pytest.raises(VocabError, match="bad.npy"):
        load_ids(bad)
    with pytest.raises(ValueError, match="1-D"):
        save_ids(tmp_path / "x.npy", np.zeros((2, 2), dtype=np.int64))


# -- word-level vocabularies (data.tokenizer=word) ------------------------------------------------

WORDS = "the time machine\nby h g wells\n\nthe time traveller\n"


def test_word_tokens_are_whitespace_separated_with_newline_its_own_token():
    vocab = Vocab.build(WORDS, tokenizer="word")
    assert vocab.tokenizer == "word"
    assert vocab.tokenize("the  time\tmachine \n by\n\n") == ["the", "time", "machine", "\n", "by", "\n", "\n"]
    ids = vocab.encode(WORDS)
    assert len(ids) == 14 and vocab.unk_index not in ids  # 10 words + 4 newlines
    assert vocab.decode(ids) == WORDS  # round trip: single spaces, no space around "\n"
    assert vocab.itos == ["<unk>", "\n", "the", "time", "by", "g", "h", "machine", "traveller", "wells"]
    # Other spacing comes back normalised.
    assert vocab.decode(vocab.encode(" the\ttime  \n  machine ")) == "the time\nmachine"


def test_word_unknowns_decode_as_whole_words():
    vocab = Vocab.build(WORDS, tokenizer="word")
    ids = vocab.encode("the flying machine")
    assert ids == [vocab.stoi["the"], 0, vocab.stoi["machine"]]
    assert vocab.decode(ids) == "the <unk> machine"
    assert vocab.decode(ids, unk="") == "the machine"  # the word is dropped, not its letters
    assert vocab.unknown_tokens("the flying flying time machines") == ["flying", "machines"]
    assert vocab.decode_after("the time", vocab.encode("machine\nby")) == "the time machine\nby"
    assert vocab.decode_after("the time", vocab.encode("\nby")) == "the time\nby"
    assert Vocab.build(TEXT).decode_after("分开", [1]) == "分开" + Vocab.build(TEXT).itos[1]


def test_max_vocab_size_keeps_the_most_frequent_ties_by_code_point():
    text = "b a c a b d\nd e\n"  # a 2, b 2, d 2, \n 2, c 1, e 1
    vocab = Vocab.build(text, tokenizer="word", max_vocab_size=3)
    assert vocab.itos == ["<unk>", "\n", "a", "b"]  # "d" (also 2) loses the tie to "b"
    assert vocab.encode("c d a e") == [0, 0, 2, 0]
    assert vocab.counts["d"] == 2 and vocab.counts["e"] == 1  # counts report what the cap dropped
    # Deterministic: the same counts in another order give the same ids.
    assert Vocab.build("d\n e d c b a b a\n", tokenizer="word", max_vocab_size=3) == vocab
    # A cap above the number of tokens changes nothing; min_freq applies first.
    assert Vocab.build(text, tokenizer="word", max_vocab_size=100) == Vocab.build(text, tokenizer="word")
    assert Vocab.build(text, tokenizer="word", min_freq=2, max_vocab_size=10).itos[1:] == ["\n", "a", "b", "d"]
    # The same for characters.
    assert Vocab.build("bcaab\n\n\n", max_vocab_size=2).itos == ["<unk>", "\n", "a"]
    # A literal "<unk>" word is the unknown token itself, not a second entry.
    assert Vocab.build("a <unk> <unk> b", tokenizer="word").itos == ["<unk>", "a", "b"]


@pytest.mark.parametrize("override,message", [
    ("data.tokenizer=bpe", r"data\.tokenizer='bpe' is not allowed: use 'char' or 'word' \(char: one token"),
    ("data.max_vocab_size=0", r"data\.max_vocab_size=0 is not allowed: use a value >= 1 \(keep the N most"),
    ("data.max_vocab_size=-5", r"data\.max_vocab_size=-5 is not allowed"),
    ("data.max_vocab_size=2.5", r"data\.max_vocab_size=2\.5 is not allowed: use a valid integer"),
    ("data.max_vocab_size=true", r"data\.max_vocab_size=True is not allowed: use a valid integer"),
    ("data.min_freq=0", r"data\.min_freq=0 is not allowed: use a value >= 1"),
])
def test_bad_vocabulary_options_name_the_key_and_the_fix(override, message):
    with pytest.raises(ValueError, match=message):
        settings_of(compose_config([override]))


def test_vocab_json_records_the_tokenizer_and_a_char_file_keeps_its_format(tmp_path):
    words = Vocab.build(WORDS, tokenizer="word", max_vocab_size=4)
    words.save(tmp_path / "words.json")
    raw = json.loads((tmp_path / "words.json").read_text(encoding="utf-8"))
    assert (raw["format"], raw["tokenizer"]) == ("lyricist-word-vocab", "word")
    loaded = Vocab.load(tmp_path / "words.json")
    assert loaded.tokenizer == "word" and loaded == words
    assert loaded.decode(loaded.encode("the time\nthe")) == "the time\nthe"

    # A char vocabulary's file is what it was before word vocabularies (the committed data's).
    chars = Vocab.build(TEXT)
    assert list(chars.to_dict()) == ["format", "version", "unk_token", "itos", "counts"]
    assert chars.to_dict()["format"] == "lyricist-char-vocab"
    assert Vocab.from_dict(chars.to_dict()).tokenizer == "char"
    assert Vocab.build("ab", tokenizer="word") != Vocab.build("ab")  # same itos, other tokenizer

    with pytest.raises(VocabError, match="'tokenizer' says 'char'"):
        Vocab.from_dict({**words.to_dict(), "tokenizer": "char"})
    with pytest.raises(VocabError, match="non-empty string without whitespace"):
        Vocab(["<unk>", "two words"], tokenizer="word")


def test_a_split_of_ids_decodes_as_the_list_of_them_would(tmp_path):
    # A whole split (an array or tensor, one character per <unk>) takes numpy's path: same text.
    vocab = Vocab.build(TEXT)
    ids = vocab.encode(TEXT + "未知") + [0]
    save_ids(tmp_path / "ids.npy", ids, len(vocab))
    for given in (load_ids(tmp_path / "ids.npy"), np.array(ids), torch.tensor(ids)):
        assert vocab.decode(given, unk="\ufffd") == vocab.decode(ids, unk="\ufffd") == TEXT + "\ufffd" * 3
    assert vocab.decode(np.array(ids), unk="") == TEXT  # unk="" (not one character): the plain path
    with pytest.raises(IndexError, match=f"id {len(vocab)} is outside the vocabulary"):
        vocab.decode(np.array([1, len(vocab)]), unk="\ufffd")
    with pytest.raises(IndexError, match="id -1 is outside"):
        vocab.decode(torch.tensor([-1, 2]), unk="\ufffd")


# -- degenerate data refused by the vocab stage unless allowed -----------------------------------
def _vocab_stage(tmp_path, texts, overrides=()):
    processed = tmp_path / "processed"
    processed.mkdir(exist_ok=True)
    for split, text in texts.items():
        (processed / f"{split}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "encoded"
    stage("vocab").main(["--in-dir", str(processed), "--out-dir", str(out),
                         "--params", str(params_file(tmp_path, overrides))])
    return out


def test_a_corpus_of_one_repeated_character_is_refused_unless_allowed(tmp_path):
    from lyricist.data.vocab import VocabError

    texts = {"train": "a" * 900, "val": "a" * 100, "test": "a" * 100}
    with pytest.raises(VocabError, match=r"train's vocabulary holds 1 token\(s\) besides <unk> \('a'\), fewer than "
                                         r"data.min_vocab_size=5.*allow it on purpose with data.min_vocab_size=1"):
        _vocab_stage(tmp_path, texts)
    assert not (tmp_path / "encoded").exists()
    assert Vocab.load(_vocab_stage(tmp_path, texts, ["data.min_vocab_size=1"]) / "vocab.json").itos == ["<unk>", "a"]


def test_a_corpus_own_unk_words_are_not_counted_as_unseen(tmp_path):
    line = " the cat sat on <unk> mat \n"  # PTB's shape: its rare words are "<unk>" already (1 in 7 tokens)
    out = _vocab_stage(tmp_path, {"train": line * 20, "val": line * 3, "test": line * 3},
                       ["data.tokenizer=word", "data.min_vocab_size=1"])
    assert (np.load(out / "val.npy") == 0).mean() == pytest.approx(1 / 7)  # above 0.05, and not refused


def _split_files(folder, train, val, test):
    folder.mkdir(parents=True)
    for name, text in (("train", train), ("val", val), ("test", test)):
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    return folder


def test_vocab_stage_refuses_a_vocabulary_of_unk_alone(tmp_path):
    processed = _split_files(tmp_path / "processed", LYRICS * 3, LYRICS, LYRICS)
    out = tmp_path / "encoded"
    with pytest.raises(VocabError, match=r"the vocabulary would be <unk> alone: no token of train occurs "
                                         r"data.min_freq=100000000 times \(the most frequent, ' ', occurs \d+\)"):
        stage("vocab").main(["--in-dir", str(processed), "--out-dir", str(out),
                             "--params", str(params_file(tmp_path, ["data.min_freq=100000000"]))])
    assert not out.exists()


def test_vocab_stage_refuses_a_val_split_mostly_unk_unless_allowed(tmp_path):
    processed = _split_files(tmp_path / "processed", LYRICS * 3, "xyzwvu" * 10 + "分开", LYRICS)
    out = tmp_path / "encoded"
    with pytest.raises(VocabError, match=r"96.8% of the val split is <unk> \(above data.max_unk_rate=0.05\).*"
                                         r"allow it on purpose with data.max_unk_rate=null"):
        stage("vocab").main(["--in-dir", str(processed), "--out-dir", str(out), "--params", str(params_file(tmp_path))])
    assert not out.exists()  # an error before any output (#25; it was a warning)
    stage("vocab").main(["--in-dir", str(processed), "--out-dir", str(out),
                         "--params", str(params_file(tmp_path, ["data.max_unk_rate=null"]))])
    assert (np.load(out / "val.npy") == 0).sum() == 60  # allowed on purpose: the data is written
