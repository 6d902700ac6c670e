"""Your own corpus through conf/data/custom.yaml, and word-level vocabularies, end to end.

The real stage scripts (pipelines/unzip.py, preprocess.py, vocab.py) run on a user's .txt and
.zip with the `data=custom` composition written to a params file, as DVC runs them; then a
word-level model trains, generates (CLI, evaluation samples, the MLflow pyfunc model) and its
data is refused by a config that asks for characters.
"""

import copy
import json
import zipfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import TINY, compose_config, empty_store, stage, with_data
from lyricist.cli import generate as generate_cli
from lyricist.evaluation.evaluate import evaluate_checkpoint
from lyricist.settings import Decoding
from conftest import train
from lyricist.data.vocab import Vocab, load_ids

ENGLISH = ("the time traveller smiled at us and the time machine stood in the corner\r\n"
           "we sat and looked at the little machine on the table\r\n")


def prepare(work: Path, overrides: list[str]):
    """Compose `data=custom` + overrides into a params file, run unzip, preprocess and vocab on it
    (the dvc.yaml commands, paths from the config); return the config and the encoded dir."""
    cfg = compose_config(["data=custom", *overrides])
    params = work / "params.yaml"
    work.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, params, resolve=True)
    name = cfg.data.name
    interim, processed, encoded = (work / "data/interim" / f"{name}.txt", work / "data/processed" / name,
                                   work / "data/encoded" / name)
    stage("unzip").main(["--raw", cfg.data.raw_path, "--out", str(interim)])
    stage("preprocess").main(["--input", str(interim), "--out-dir", str(processed), "--params", str(params)])
    stage("vocab").main(["--in-dir", str(processed), "--out-dir", str(encoded), "--params", str(params)])
    return cfg, encoded


def encoded_files(encoded: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(encoded.iterdir())}


def test_a_user_text_file_and_zip_go_through_the_data_stages(tmp_path):
    text = "\ufeff" + ENGLISH * 10  # with a byte-order mark and Windows line ends
    raw = tmp_path / "mine.txt"
    raw.write_text(text, encoding="utf-8")
    overrides = [f"data.raw_path={raw}", "data.val_fraction=0.1", "data.test_fraction=0.2"]
    cfg, encoded = prepare(tmp_path / "txt", overrides)

    cleaned = (ENGLISH * 10).replace("\r\n", "\n")
    processed = tmp_path / "txt/data/processed/custom"
    splits = {s: (processed / f"{s}.txt").read_text(encoding="utf-8") for s in ("train", "val", "test")}
    assert "".join(splits.values()) == cleaned  # BOM and \r gone, newlines kept (the template's default)
    assert [len(splits[s]) for s in ("val", "test")] == [round(len(cleaned) * 0.1), round(len(cleaned) * 0.2)]
    assert sorted(p.name for p in encoded.iterdir()) == [
        "prepared_with.json", "test.npy", "train.npy", "val.npy", "vocab.json"]
    vocab = Vocab.load(encoded / "vocab.json")
    assert vocab.tokenizer == "char" and vocab == Vocab.build(splits["train"])
    for split, part in splits.items():
        assert vocab.decode(load_ids(encoded / f"{split}.npy").tolist()) == part  # no unknowns here
    assert json.loads((encoded / "prepared_with.json").read_text()) == {
        "newline": "keep", "lowercase": False, "max_chars": None, "val_fraction": 0.1,
        "test_fraction": 0.2, "min_freq": 1}  # default vocabulary options are not recorded

    # The same text as a zip (macOS junk included): the same encoded data, byte for byte.
    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("lyrics/mine.txt", text.encode("utf-8"))
        zf.writestr("__MACOSX/lyrics/._mine.txt", b"\x00\x05")
    _, from_zip = prepare(tmp_path / "zip", [f"data.raw_path={archive}", *overrides[1:]])
    assert encoded_files(from_zip) == encoded_files(encoded)


def test_word_level_custom_data_with_a_capped_vocabulary(tmp_path):
    raw = tmp_path / "mine.txt"
    raw.write_text(ENGLISH * 10, encoding="utf-8")
    # 4 words and val mostly <unk>: degenerate data, allowed on purpose.
    _, encoded = prepare(tmp_path, [f"data.raw_path={raw}", "data.tokenizer=word", "data.max_vocab_size=4",
                                    "data.lowercase=true", "data.min_vocab_size=1", "data.max_unk_rate=null"])
    vocab = Vocab.load(encoded / "vocab.json")
    train_text = (tmp_path / "data/processed/custom/train.txt").read_text(encoding="utf-8")
    assert train_text == (ENGLISH * 9).replace("\r\n", "\n")  # 90 % = 9 of the 10 copies
    # train: "the" 45 times; "\n", "and", "at", "machine", "time" 18 each (a tie, broken by code
    # point); the 4 most frequent stay, every other word reads as <unk>.
    assert vocab.tokenizer == "word" and vocab.itos == ["<unk>", "the", "\n", "and", "at"]
    assert [vocab.counts[w] for w in ("the", "\n", "and", "at", "machine", "time", "us")] == [45] + [18] * 5 + [9]
    ids = load_ids(encoded / "train.npy").tolist()
    assert len(ids) == 9 * (25 + 2)  # one id per word (25 a copy) or newline (2)
    assert vocab.decode(ids[:12]) == "the <unk> <unk> <unk> at <unk> and the <unk> <unk> <unk> <unk>"
    assert ids.count(0) == 9 * (25 - 5 - 2 - 2)  # all but the, and, at
    record = json.loads((encoded / "prepared_with.json").read_text())
    assert (record["tokenizer"], record["max_vocab_size"], record["lowercase"]) == ("word", 4, True)


def test_stage_errors_name_the_fix_before_any_output(tmp_path):
    missing = tmp_path / "data/raw/custom.txt"
    with pytest.raises(FileNotFoundError, match="point data.raw_path at it") as err:
        prepare(tmp_path, [f"data.raw_path={missing}"])
    assert str(missing) in str(err.value) and "conf/data/custom.yaml" in str(err.value)
    assert not (tmp_path / "data").exists()

    raw = tmp_path / "mine.txt"
    raw.write_text(ENGLISH * 10, encoding="utf-8")
    for bad, message in [("data.tokenizer=bpe", r"data\.tokenizer='bpe' is not allowed: use 'char' or 'word'"),
                         ("data.max_vocab_size=0", r"data\.max_vocab_size=0 is not allowed: use a value >= 1")]:
        with pytest.raises(ValueError, match=message):
            prepare(tmp_path / bad.split("=")[0], [f"data.raw_path={raw}", bad])
        assert not (tmp_path / bad.split("=")[0] / "data/encoded").exists()  # refused before work


def test_word_level_run_end_to_end(tmp_path, capsys, _empty_store):
    raw = tmp_path / "mine.txt"
    raw.write_text(ENGLISH * 30, encoding="utf-8")
    uri = empty_store(_empty_store, tmp_path / "mlflow.db")
    cfg, encoded = prepare(tmp_path, TINY + [
        f"data.raw_path={raw}", "data.tokenizer=word", "data.newline=space", "data.val_fraction=0.1",
        "data.test_fraction=0.1", "data.prefixes=['the time']", "trainer.max_epochs=1",
        f"logger.tracking_uri={uri}"])
    vocab = Vocab.load(encoded / "vocab.json")
    assert vocab.tokenizer == "word" and "\n" not in vocab  # newline=space: no line-break token

    # Training refuses bad options, and this data for a config that asks for characters,
    # before writing anything.
    for key, value, message in [("tokenizer", "bpe", "data.tokenizer='bpe' is not allowed"),
                                ("max_vocab_size", 0, "data.max_vocab_size=0 is not allowed"),
                                ("tokenizer", "char", "data.tokenizer: prepared 'word', asked 'char'")]:
        bad = copy.deepcopy(cfg)
        bad.data[key] = value
        with pytest.raises(ValueError, match=message):
            train(with_data(bad, encoded), output_dir=tmp_path / "refused")
        assert not (tmp_path / "refused").exists()

    metrics = train(with_data(cfg, encoded), output_dir=tmp_path / "run")
    assert metrics["epoch"] == 0 and 1 < metrics["val/ppl"] < len(vocab) * 2
    ckpt = str(tmp_path / "run" / "checkpoints" / "best.ckpt")
    capsys.readouterr()

    def is_generated(text: str, n_words: int, known=vocab.itos[1:]) -> bool:
        words = text.split(" ")
        return (text.startswith("the time ") and len(words) == 2 + n_words
                and all(w in known for w in words))  # vocabulary words, single spaces

    assert generate_cli.main(["--checkpoint", ckpt, "--prefix", "the time", "--num-tokens", "6",
                              "--strategy", "greedy"]) == 0
    [line] = capsys.readouterr().out.splitlines()
    assert is_generated(line, 6), line
    assert generate_cli.main(["--checkpoint", ckpt, "--prefix", "the time", "--num-chars", "6",
                              "--strategy", "sample", "--seed", "1"]) == 0
    # (sampling may draw <unk>, which greedy decoding of this model does not choose)
    assert is_generated(capsys.readouterr().out.rstrip("\n"), 6, known=vocab.itos)
    # A prefix word the vocabulary lacks is named (the whole word, not its letters).
    assert generate_cli.main(["--checkpoint", ckpt, "--prefix", "the spaceship"]) == 2
    assert "words not in the (word-level) vocabulary: 'spaceship'" in capsys.readouterr().err
    assert generate_cli.main(["--checkpoint", ckpt, "--prefix", "   "]) == 2
    assert "empty" in capsys.readouterr().err

    # The evaluate stage's samples.
    _, samples = evaluate_checkpoint(ckpt, encoded, batch_size=2, num_steps=8,
                                     prefixes=["the time"], decoding=Decoding(num_chars=5, strategy="greedy"))
    assert "# Samples (5 words after the prefix)" in samples and "## the time" in samples
    sample = samples.split("<pre>\n")[1].split("\n</pre>")[0]
    assert is_generated(sample, 5) and sample == line.rsplit(" ", 1)[0]  # greedy: same words

    # The MLflow pyfunc model the run logged.
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    [served] = model.predict(pd.DataFrame({"prefix": ["the time"], "num_chars": [6],
                                           "strategy": ["greedy"]}))["lyrics"]
    assert served == line
