import json

import numpy as np
import pytest
import torch

from lyricist.vocab import Vocab, VocabError, encode_to_array, load_ids, save_ids

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
    with pytest.raises(ValueError, match="min_freq"):
        Vocab.build(TEXT, min_freq=0)


def test_unseen_characters_map_to_unk_and_decode_visibly():
    vocab = Vocab.build(TEXT)
    ids = vocab.encode("分手吧")
    assert ids[1:] == [0, 0] and vocab.unk_index == 0
    assert vocab.decode(ids) == "分<unk><unk>"
    assert vocab.decode(ids, unk="") == "分"
    assert vocab.unknown_chars("分手吧手") == ["手", "吧"]
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
    assert array.dtype == np.int32 and array.shape == (len(TEXT),)
    path = tmp_path / "train.npy"
    save_ids(path, array)
    assert np.load(path).dtype == np.int32
    ids = load_ids(path)
    assert ids.dtype == torch.int64 and ids.tolist() == vocab.encode(TEXT)


def test_ids_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dvc"):
        load_ids(tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an npy file")
    with pytest.raises(VocabError, match="bad.npy"):
        load_ids(bad)
    with pytest.raises(ValueError, match="1-D"):
        save_ids(tmp_path / "x.npy", np.zeros((2, 2), dtype=np.int64))
