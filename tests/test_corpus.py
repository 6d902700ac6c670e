"""Reading a raw corpus (lyricist.data.corpus, the unzip and preprocess stages): zips and text
files, hostile input refused before any output (devices, FIFOs, zip bombs, sizes, encodings,
NUL bytes), cleaning and the split."""

import os
import subprocess
import sys
import time
import zipfile

import pytest

from conftest import LYRICS as SONG, ROOT, params_file, stage
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


def _zip(path, text: bytes, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("lyrics.txt", text)
    return path


def _patch_zip(path, *, flags=None, method=None):
    """Rewrite the member's general-purpose flags / compression method in both of its headers
    (zipfile writes neither encryption nor Deflate64)."""
    data = bytearray(path.read_bytes())
    local, central = data.index(b"PK\x03\x04"), data.index(b"PK\x01\x02")
    for offset, value in ((6, flags), (8, method)):
        if value is not None:
            data[local + offset:local + offset + 2] = value.to_bytes(2, "little")
            data[central + offset + 2:central + offset + 4] = value.to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


def test_a_symlink_to_dev_zero_is_refused_at_once_and_nothing_is_written(tmp_path):
    raw, out = tmp_path / "custom.txt", tmp_path / "interim.txt"
    raw.symlink_to("/dev/zero")
    started = time.process_time()  # this process's CPU time: reading /dev/zero would spend it, load would not
    with pytest.raises(CorpusError, match=r"custom.txt \(a symlink to /dev/zero\) is a character device, "
                                          r"not a regular file.*data.raw_path"):
        stage("unzip").main(["--raw", str(raw), "--out", str(out)])
    assert time.process_time() - started < 5 and not out.exists()


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "custom.txt"
    os.mkfifo(fifo)
    with pytest.raises(CorpusError, match=r"is a FIFO \(named pipe\), not a regular file"):
        read_raw_text(fifo)  # opening it would block until a writer came


def test_the_unzip_stage_prints_one_line_and_exits_2(tmp_path):
    fifo, out = tmp_path / "custom.txt", tmp_path / "interim.txt"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines/unzip.py"), "--raw", str(fifo), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: corpus path {fifo} is a FIFO")
    assert "Traceback" not in proc.stderr and not out.exists()


def test_a_zip_bomb_is_refused_by_its_ratio_before_it_is_expanded(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", b"la" * 1_000_000)  # 2 MB of text in a few KB
    compressed = zipfile.ZipFile(bomb).infolist()[0].compress_size
    with pytest.raises(CorpusError, match=rf"expands \d[\d,]* times \({compressed:,} -> 2,000,000 bytes\), above "
                                          r"the limit of 100 \(data.max_compression_ratio\)"):
        read_raw_text(bomb)
    assert read_raw_text(bomb, max_ratio=1e6) == "la" * 1_000_000  # the limit is configurable


def test_text_above_the_size_limit_is_refused_with_the_numbers(tmp_path):
    plain = tmp_path / "big.txt"
    plain.write_text("分开" * 100, encoding="utf-8")  # 600 bytes
    with pytest.raises(CorpusError, match=r"is 600 bytes of text, above the limit of 500 \(data.max_raw_bytes\)"):
        read_raw_text(plain, max_bytes=500)
    stored = _zip(tmp_path / "big.zip", ("分开" * 100).encode(), zipfile.ZIP_STORED)
    with pytest.raises(CorpusError, match=r"big.zip:lyrics.txt is 600 bytes of text, above the limit of 500"):
        read_raw_text(stored, max_bytes=500)


def test_the_unzip_stage_reads_its_limits_from_params(tmp_path):
    raw, out = tmp_path / "big.txt", tmp_path / "interim.txt"
    raw.write_text("la" * 300, encoding="utf-8")
    params = params_file(tmp_path, ["data.max_raw_bytes=100"])
    with pytest.raises(CorpusError, match="above the limit of 100"):
        stage("unzip").main(["--raw", str(raw), "--out", str(out), "--params", str(params)])
    assert not out.exists()


def test_encrypted_and_deflate64_members_get_a_clear_message(tmp_path):
    encrypted = _patch_zip(_zip(tmp_path / "secret.zip", b"hello"), flags=0x1)
    with pytest.raises(CorpusError, match=r"secret.zip:lyrics.txt is encrypted \(password-protected\)"):
        read_raw_text(encrypted)
    deflate64 = _patch_zip(_zip(tmp_path / "win.zip", b"hello"), method=9)
    with pytest.raises(CorpusError, match=r"compressed with Deflate64, which Python's zipfile cannot read.*zip -9"):
        read_raw_text(deflate64)


def test_utf16_gets_the_utf16_hint(tmp_path):
    path = tmp_path / "lyrics.txt"
    path.write_bytes("分开\n不分开\n".encode("utf-16"))  # with its byte-order mark
    with pytest.raises(CorpusError, match=r"is UTF-16 text.*iconv -f UTF-16 -t UTF-8") as err:
        read_raw_text(path)
    assert "GB18030" not in str(err.value)


def test_nul_bytes_are_refused(tmp_path):
    path = tmp_path / "zeros.txt"
    path.write_bytes(b"ok" + b"\x00" * 200_000)
    with pytest.raises(CorpusError, match=r"holds 200,000 NUL characters \(the first at character 2\)"):
        read_raw_text(path)


def test_other_control_characters_are_stripped_by_the_documented_rule():
    # C0 (but \t, \n, \r), DEL and C1 go; tabs and line ends stay (\r\n -> \n as before).
    assert clean_text("a\x07b\x1bc\x7fd\x85e\tf\r\ng\x0b") == "abcde\tf\ng"
    assert clean_text(SONG) == SONG  # ordinary text is unchanged


def _processed(tmp_path, text):
    interim = tmp_path / "interim.txt"
    interim.write_text(text, encoding="utf-8")
    return interim


@pytest.mark.parametrize("text, overrides, message", [
    (SONG, ["data.max_chars=0"], r"data.max_chars=0 is not allowed: use a value >= 1"),
    ("abc", [], r"the val split is empty: data.val_fraction of 3 characters rounds to 0"),
])
def test_preprocess_refuses_an_empty_split(tmp_path, text, overrides, message):
    out = tmp_path / "processed"
    with pytest.raises(ValueError, match=message):
        stage("preprocess").main(["--input", str(_processed(tmp_path, text)), "--out-dir", str(out),
                                  "--params", str(params_file(tmp_path, overrides))])
    assert not out.exists()


def test_hints_name_dvc_pull_with_a_target():
    """A bare `dvc pull` also asks for pipeline outputs that are in no remote and fails on them
    (README): every hint names what to pull."""
    import re

    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "pipelines").glob("*.py")]
    bare = [f"{path.name}: {m.group(0)}" for path in sources
            for m in re.finditer(r"dvc pull(?: --force)?(?=`| &&|\))", path.read_text(encoding="utf-8"))]
    assert not bare
