"""Hostile and degenerate input refused before any output (#17): reads that would never end or
fill memory, zips that cannot be read, text that is not text, splits and vocabularies that
would train to a perfect, meaningless perplexity. Each case asserts the message and that the
stage wrote nothing (an existing output is left as it was)."""

import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from omegaconf import OmegaConf

from conftest import LYRICS, ROOT, compose_config, write_encoded
from lyricist.data.corpus import CorpusError, clean_text, read_raw_text
from lyricist.data.vocab import VocabError


def stage(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params_file(tmp_path, overrides=()):
    path = tmp_path / "params.yaml"
    OmegaConf.save(compose_config(list(overrides)), path, resolve=True)
    return path


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
    assert clean_text(LYRICS) == LYRICS  # ordinary text is unchanged


def _processed(tmp_path, text):
    interim = tmp_path / "interim.txt"
    interim.write_text(text, encoding="utf-8")
    return interim


@pytest.mark.parametrize("text, overrides, message", [
    (LYRICS, ["data.max_chars=0"], r"data.max_chars=0 is not allowed: use a value >= 1"),
    ("abc", [], r"the val split is empty: data.val_fraction of 3 characters rounds to 0"),
])
def test_preprocess_refuses_an_empty_split(tmp_path, text, overrides, message):
    out = tmp_path / "processed"
    with pytest.raises(ValueError, match=message):
        stage("preprocess").main(["--input", str(_processed(tmp_path, text)), "--out-dir", str(out),
                                  "--params", str(params_file(tmp_path, overrides))])
    assert not out.exists()


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


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_generate_cli_refuses_a_temperature_that_is_not_finite(value, tmp_path, capsys):
    from lyricist.cli import generate as generate_cli

    argv = ["--checkpoint", str(tmp_path / "none.ckpt"), "--prefix", "分开", "--temperature", value]
    assert generate_cli.main(argv) == 2  # before the checkpoint is even looked for
    err = capsys.readouterr().err
    assert err.startswith(f"error: temperature={value} is not allowed: use a ") and "Traceback" not in err


def test_hints_name_dvc_pull_with_a_target():
    """A bare `dvc pull` also asks for pipeline outputs that are in no remote and fails on them
    (README): every hint names what to pull."""
    import re

    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "pipelines").glob("*.py")]
    bare = [f"{path.name}: {m.group(0)}" for path in sources
            for m in re.finditer(r"dvc pull(?: --force)?(?=`| &&|\))", path.read_text(encoding="utf-8"))]
    assert not bare
