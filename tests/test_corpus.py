import zipfile

import pytest

from lyricist.data.corpus import CorpusError, clean_text, read_raw_text, split_text, write_text

LYRICS = "想要有直升机\n想要和你飞到宇宙去\n"


def make_zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zip_with_one_member_ignores_directories_and_macos_junk(tmp_path):
    path = make_zip(
        tmp_path / "jay.txt.zip",
        {"lyrics/": b"", "lyrics/jay.txt": LYRICS.encode(), "__MACOSX/lyrics/._jay.txt": b"\x00\x05"},
    )
    assert read_raw_text(path) == LYRICS


def test_plain_text_file_and_bom(tmp_path):
    path = tmp_path / "timemachine.txt"
    path.write_bytes(b"\xef\xbb\xbfThe Time Machine\n")
    assert read_raw_text(path) == "The Time Machine\n"


def test_missing_file_says_dvc_pull_or_where_to_put_your_own(tmp_path):
    path = tmp_path / "absent.zip"
    with pytest.raises(FileNotFoundError, match="dvc pull") as err:
        read_raw_text(path)
    message = str(err.value)
    assert f"`dvc pull {path}.dvc`" in message  # a bundled corpus
    assert f"put the .txt or .zip at {path}, or point data.raw_path at it" in message  # your own
    assert "conf/data/custom.yaml" in message


def test_corrupt_zip_says_re_pull(tmp_path):
    path = tmp_path / "jay.zip"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CorpusError, match="corrupt.*dvc pull --force"):
        read_raw_text(path)


def test_zip_with_two_members_lists_both(tmp_path):
    path = make_zip(tmp_path / "two.zip", {"a.txt": b"a", "b.txt": b"b"})
    with pytest.raises(CorpusError, match="2 files") as err:
        read_raw_text(path)
    assert "a.txt" in str(err.value) and "b.txt" in str(err.value)


def test_zip_with_no_text_member(tmp_path):
    empty = make_zip(tmp_path / "empty.zip", {})
    with pytest.raises(CorpusError, match="no text file.*archive is empty"):
        read_raw_text(empty)
    junk_only = make_zip(tmp_path / "junk.zip", {"__MACOSX/._x": b"\x00"})
    with pytest.raises(CorpusError, match="__MACOSX/._x"):
        read_raw_text(junk_only)


def test_non_utf8_reports_byte_offset_and_file(tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("abc".encode() + "周杰伦".encode("gbk"))
    with pytest.raises(CorpusError, match=r"gbk\.txt.*byte 3"):
        read_raw_text(path)
    zipped = make_zip(tmp_path / "gbk.zip", {"lyrics.txt": b"ok\n\xff"})
    with pytest.raises(CorpusError, match=r"lyrics\.txt.*byte 3"):
        read_raw_text(zipped)


def test_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"\xef\xbb\xbf\n\n")
    with pytest.raises(CorpusError, match="empty"):
        read_raw_text(path)


def test_carriage_returns_are_removed():
    assert clean_text("a\r\nb\rc\n") == "a\nbc\n"
    assert clean_text("a\r\nb", newline="space") == "a b"


def test_newline_modes_lowercase_and_max_chars():
    text = "Time\nMachine\n"
    assert clean_text(text) == text
    assert clean_text(text, newline="space") == "Time Machine "
    assert clean_text(text, lowercase=True) == "time\nmachine\n"
    # Truncation counts cleaned characters: "\r\n" is one character by then.
    assert clean_text("ab\r\ncd", max_chars=4) == "ab\nc"
    assert clean_text(text, max_chars=0) == ""
    with pytest.raises(ValueError, match="newline mode 'drop'"):
        clean_text(text, newline="drop")
    with pytest.raises(ValueError, match="max_chars"):
        clean_text(text, max_chars=-1)


def test_split_is_contiguous_train_val_test():
    text = "".join(chr(0x4E00 + i) for i in range(100))
    parts = split_text(text, val_fraction=0.1, test_fraction=0.2)
    assert [len(parts[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    assert parts["train"] + parts["val"] + parts["test"] == text
    assert text.startswith(parts["train"]) and text.endswith(parts["test"])
    no_test = split_text(text, 0.1, 0.0)
    assert no_test["test"] == "" and len(no_test["val"]) == 10
    odd = split_text("x" * 63282, 0.1, 0.1)
    assert sum(map(len, odd.values())) == 63282


@pytest.mark.parametrize("val,test", [(-0.1, 0.1), (1.0, 0.0), (0.1, 1.0), (0.5, 0.5), (0.7, 0.4)])
def test_split_rejects_bad_fractions(val, test):
    with pytest.raises(ValueError, match=str(val) if val < 0 or val >= 1 else str(test)):
        split_text("abcdefghij", val, test)


def test_write_text_is_atomic_utf8_and_creates_parents(tmp_path):
    path = tmp_path / "processed" / "jay" / "train.txt"
    write_text(path, LYRICS)
    assert path.read_bytes() == LYRICS.encode("utf-8")
    write_text(path, "新的")  # overwrite in place
    assert path.read_bytes() == "新的".encode("utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["train.txt"]  # no temp file left
