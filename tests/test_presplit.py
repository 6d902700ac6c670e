"""A pre-split corpus (conf/data/presplit.yaml, `data.split_files`): its train, valid and test
files, in a folder or a zip, reach data/processed as given (cleaned, never re-split), the
vocabulary comes from train alone and the corpus' own <unk> is the unknown token. One file
named for two splits (two spellings, a symlink, a copy) is refused."""

import os
import random
import zipfile
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import PIPELINE_TINY, compose_config, compose_params, params_file, run, stage
from lyricist.data.vocab import UNK_TOKEN, Vocab, load_ids
from lyricist.tracking.store import raw_data_md5
from lyricist import settings
from lyricist.data.corpus import CorpusError, read_split_texts

PTB_NAMES = {"train": "ptb.train.txt", "val": "ptb.valid.txt", "test": "ptb.test.txt"}


def ptb_like(seed: int, n_lines: int, words: list[str]) -> str:
    """PTB's shape: lines of lowercase words, each starting with a space, rare words as <unk>."""
    rng = random.Random(seed)
    return "".join(" " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 12))) + " \n"
                   for _ in range(n_lines))


WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "ran", "to", "<unk>", "<unk>", "and", "of", "N"]
TEXTS = {"train": ptb_like(0, 60, WORDS), "val": ptb_like(1, 12, WORDS + ["zebra"]),
         "test": ptb_like(2, 12, WORDS)}


def write_folder(folder: Path, texts=TEXTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in texts.items():
        (folder / PTB_NAMES[split]).write_text(text, encoding="utf-8")
    (folder / "README").write_text("not a split\n")  # other files in the folder are not read
    return folder


def prepare(work: Path, raw: Path, overrides=()) -> tuple[Path, Path]:
    """The unzip, preprocess and vocab stage scripts on `data=presplit` at `raw`, as DVC runs them."""
    # val's "zebra", a word train lacks, is ~10 % of it on purpose: above data.max_unk_rate's default.
    cfg = compose_config(["data=presplit", f"data.raw_path={raw}", "data.max_unk_rate=0.2", *overrides])
    work.mkdir(parents=True, exist_ok=True)
    params = work / "params.yaml"
    OmegaConf.save(cfg, params, resolve=True)
    interim, processed, encoded = work / "interim/presplit.txt", work / "processed", work / "encoded"
    stage("unzip").main(["--raw", str(raw), "--out", str(interim), "--params", str(params)])
    stage("preprocess").main(["--input", str(interim), "--out-dir", str(processed), "--params", str(params)])
    stage("vocab").main(["--in-dir", str(processed), "--out-dir", str(encoded), "--params", str(params)])
    return processed, encoded


def read_splits(folder: Path) -> dict[str, str]:
    return {s: (folder / f"{s}.txt").read_text(encoding="utf-8") for s in ("train", "val", "test")}


def test_the_three_files_are_used_as_given_and_the_corpus_unk_is_the_unknown_token(tmp_path):
    texts = {**TEXTS, "train": "\ufeff" + TEXTS["train"].replace("\n", "\r\n")}  # a BOM, Windows line ends
    processed, encoded = prepare(tmp_path / "work", write_folder(tmp_path / "ptb", texts))
    assert read_splits(processed) == TEXTS  # cleaned, each file whole, none moved to another split
    vocab = Vocab.load(encoded / "vocab.json")
    assert vocab.tokenizer == "word" and vocab == Vocab.build(TEXTS["train"], tokenizer="word")
    assert vocab.itos.count(UNK_TOKEN) == 1 and vocab.stoi[UNK_TOKEN] == 0
    assert "zebra" not in vocab  # a word of val alone: the vocabulary is train's
    for split, text in TEXTS.items():
        ids = load_ids(encoded / f"{split}.npy").tolist()
        # The corpus' "<unk>" is id 0, as is val's unseen "zebra"; everything else is itself.
        expected = [vocab.stoi.get(token, 0) for token in vocab.tokenize(text)]
        assert ids == expected and ids.count(0) == text.count("<unk>") + text.count("zebra") > 0


def test_a_zip_with_a_top_folder_gives_the_same_data_as_the_folder(tmp_path):
    archive_path = tmp_path / "ptb.zip"
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for split, text in TEXTS.items():
            archive.writestr(f"simple-examples/data/{PTB_NAMES[split]}", text)
    from_zip, encoded_zip = prepare(tmp_path / "zip", archive_path)
    from_folder, encoded_folder = prepare(tmp_path / "folder", write_folder(tmp_path / "ptb"))
    assert read_splits(from_zip) == read_splits(from_folder) == TEXTS
    assert ({p.name: p.read_bytes() for p in encoded_zip.iterdir()}
            == {p.name: p.read_bytes() for p in encoded_folder.iterdir()})


def test_max_chars_and_lowercase_apply_to_each_file(tmp_path):
    texts = {split: text.upper().replace("<UNK>", "<unk>") for split, text in TEXTS.items()}
    processed, _ = prepare(tmp_path / "work", write_folder(tmp_path / "ptb", texts),
                           ["data.lowercase=true", "data.max_chars=100"])
    assert read_splits(processed) == {split: text.lower()[:100] for split, text in TEXTS.items()}


def refused(tmp_path: Path, raw: Path, overrides=()) -> str:
    """The message the stages stop with; nothing of the pipeline's output written."""
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        prepare(tmp_path / "work", raw, overrides)
    assert not (tmp_path / "work/processed").exists() and not (tmp_path / "work/encoded").exists()
    return str(err.value)


def test_a_missing_split_file_is_refused_naming_it_and_what_is_there(tmp_path):
    folder = write_folder(tmp_path / "ptb")
    (folder / "ptb.valid.txt").unlink()
    message = refused(tmp_path, folder)
    assert "val file" in message and "ptb.valid.txt" in message and "data.split_files.val" in message
    assert "ptb.test.txt" in message  # what the folder holds
    assert not (tmp_path / "work/interim").exists()  # refused before the unzip stage wrote anything


def test_an_empty_split_file_is_refused(tmp_path):
    folder = write_folder(tmp_path / "ptb")
    (folder / "ptb.test.txt").write_text(" \n\n")
    message = refused(tmp_path, folder)
    assert "test file" in message and "ptb.test.txt" in message and "empty" in message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_split_file_that_is_not_a_regular_file_is_refused(tmp_path):
    folder = write_folder(tmp_path / "ptb")
    (folder / "ptb.train.txt").unlink()
    os.mkfifo(folder / "ptb.train.txt")  # reading it would block forever
    message = refused(tmp_path, folder)
    assert "FIFO" in message and "not a regular file" in message and "data.split_files.train" in message
    (folder / "ptb.train.txt").unlink()
    (folder / "ptb.train.txt").mkdir()
    assert "is a directory" in refused(tmp_path, folder)


def test_a_missing_zip_member_is_refused_with_the_archives_listing(tmp_path):
    archive_path = tmp_path / "ptb.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("ptb.train.txt", TEXTS["train"])
        archive.writestr("ptb.valid.txt", TEXTS["val"])
    message = refused(tmp_path, archive_path)
    assert "no member named 'ptb.test.txt'" in message and "ptb.valid.txt" in message


@pytest.mark.parametrize("overrides, words", [
    (["data.val_fraction=0.1"], ["data.val_fraction=0.1", "never re-split", "data.val_fraction=0"]),
    (["~data.split_files.test"], ["data.split_files.test is missing"]),
    (["+data.split_files.dev=dev.txt"], ["data.split_files.dev is not a setting"]),
    (["data.split_files.test=/etc/passwd"], ["data.split_files.test='/etc/passwd'", "relative path", "e.g."]),
    (["data.split_files.test=../x.txt"], ["data.split_files.test='../x.txt'", "relative path", "e.g."]),
    (["data.split_files.test=ptb.train.txt"], ["one file for two splits", "e.g."]),
])
def test_bad_split_settings_are_refused_by_key_before_any_output(tmp_path, overrides, words):
    message = refused(tmp_path, write_folder(tmp_path / "ptb"), overrides)
    for word in words:
        assert word in message


def test_a_single_file_with_split_files_is_refused(tmp_path):
    single = tmp_path / "corpus.txt"
    single.write_text(TEXTS["train"])
    message = refused(tmp_path, single)
    assert "single file" in message and "data.split_files=null" in message


def test_a_folder_without_split_files_says_how_to_use_it(tmp_path):
    message = refused(tmp_path, write_folder(tmp_path / "ptb"), ["data.split_files=null",
                                                                  "data.val_fraction=0.1", "data.test_fraction=0.1"])
    assert "is a directory" in message and "data.split_files" in message and "presplit.yaml" in message


def test_the_data_md5_tag_is_dvcs_hash_of_the_folder(tmp_path):
    lock = {"schema": "2.0", "stages": {"unzip": {"deps": [
        {"path": "data/raw/ptb", "hash": "md5", "md5": "0123abcd.dir", "size": 10, "nfiles": 3}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert raw_data_md5("data/raw/ptb", tmp_path) == raw_data_md5("data/raw/ptb/", tmp_path) == "0123abcd.dir"
    (tmp_path / "dvc.lock").unlink()  # no lock yet: the folder's pointer (`dvc add data/raw/ptb`)
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/ptb.dvc").write_text(yaml.safe_dump({"outs": [{"path": "ptb", "md5": "feed.dir"}]}))
    assert raw_data_md5("data/raw/ptb/", tmp_path) == "feed.dir"


def test_the_template_names_ptbs_files_with_fractions_zero():
    data = compose_config(["data=presplit"]).data
    assert dict(data.split_files) == PTB_NAMES
    assert (data.val_fraction, data.test_fraction, data.tokenizer) == (0, 0, "word")
    for option in ("jaychou", "timemachine", "custom"):  # the single-file corpora are unchanged
        assert compose_config([f"data={option}"]).data.split_files is None


@pytest.mark.slow
def test_a_presplit_word_corpus_runs_end_to_end_through_dvc_repro(project, tmp_path):
    """conf/data/presplit.yaml as its comments say: the three files in data/raw/ptb/, `dvc add`ed,
    the whole pipeline with the one config; the files reach data/processed as given and the
    MLflow tag data_md5 is DVC's hash of the folder."""
    texts = {"train": ptb_like(0, 200, WORDS), "val": ptb_like(1, 30, WORDS), "test": ptb_like(2, 30, WORDS)}
    write_folder(project / "data/raw/ptb", texts)
    run(["dvc", "add", "data/raw/ptb"], project)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # PIPELINE_TINY's max_chars would cut train short: here the files are used whole. What this test
    # reads is the data stages', DVC's and the run's tags: no logged model, no evaluation grids or cache.
    compose_params(project, ["data=presplit", *PIPELINE_TINY, "data.max_chars=null", f"logger.tracking_uri={uri}",
                             "logger.log_model=false", "evaluate.dynamic_lrs=[]", "evaluate.krause_lrs=[]",
                             "evaluate.cache_size=null"])

    out = run(["dvc", "repro"], project)
    for name in ("unzip", "preprocess", "vocab", "baseline", "train", "evaluate"):
        assert f"Running stage '{name}'" in out
    assert (project / "data/interim/presplit.txt").is_dir()  # the unzip stage's folder of three files
    assert read_splits(project / "data/processed/presplit") == texts  # as given, not re-split
    vocab = Vocab.load(project / "data/encoded/presplit/vocab.json")
    assert vocab == Vocab.build(texts["train"], tokenizer="word") and UNK_TOKEN not in vocab.itos[1:]
    assert (project / "reports/metrics.json").is_file() and (project / "models/checkpoints/best.ckpt").is_file()

    lock = yaml.safe_load((project / "dvc.lock").read_text())
    [raw_dep] = [d for d in lock["stages"]["unzip"]["deps"] if d["path"] == "data/raw/ptb"]
    assert raw_dep["md5"].endswith(".dir") and raw_dep.get("nfiles") == 4  # the README too
    client = MlflowClient(uri)
    [run_info] = client.search_runs(client.get_experiment_by_name("lyricist").experiment_id)
    assert run_info.data.tags["data_md5"] == raw_dep["md5"]

    assert "Data and pipelines are up to date" in run(["dvc", "repro"], project)
    (project / "data/raw/ptb/ptb.test.txt").write_text(texts["test"] + " the cat \n", encoding="utf-8")
    assert "unzip:" in run(["dvc", "status"], project)  # a change in any split file re-runs the data stages


# -- splits identified by what they are ---------------------------------------------------------
SPLIT_TEXTS = {"train": "分开 不分开\n" * 30, "val": "我不能再想\n" * 5, "test": "爱情来的太快\n" * 5}


def _folder(folder, texts=SPLIT_TEXTS):
    folder.mkdir()
    for split, text in texts.items():
        (folder / f"{split}.txt").write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("val", ["./train.txt", "train.txt/", ".//train.txt", "a/./train.txt"])
def test_one_file_named_two_ways_is_refused_by_its_path(val):
    train = "a/train.txt" if val.startswith("a/") else "train.txt"
    with pytest.raises(ValueError, match="names one file for two splits"):
        settings.section(settings.SplitFiles, {"train": train, "val": val, "test": "test.txt"}, "data.split_files")


def test_a_symlink_to_train_is_refused_as_the_same_file(tmp_path):
    folder = _folder(tmp_path / "ptb")
    (folder / "val.txt").unlink()
    (folder / "val.txt").symlink_to(folder / "train.txt")
    names = {split: f"{split}.txt" for split in SPLIT_TEXTS}
    with pytest.raises(CorpusError, match=r"data.split_files.train='train.txt' and data.split_files.val='val.txt' "
                                          r"are one file \(.*train.txt\)"):
        read_split_texts(folder, names)


def test_two_splits_with_the_same_content_are_refused_and_unzip_writes_nothing(tmp_path):
    folder = _folder(tmp_path / "ptb", {**SPLIT_TEXTS, "test": SPLIT_TEXTS["train"]})  # a copy of train
    names = {split: f"{split}.txt" for split in SPLIT_TEXTS}
    out = tmp_path / "interim"
    params = params_file(tmp_path, ["data=presplit", "data.split_files.train=train.txt",
                                    "data.split_files.val=val.txt", "data.split_files.test=test.txt"])
    with pytest.raises(CorpusError, match=r"the train and test files \(.*train.txt and .*test.txt\) hold the same "
                                          r"text \(sha256 [0-9a-f]{12}\.\.\.\).*Name three different files"):
        stage("unzip").main(["--raw", str(folder), "--out", str(out), "--params", str(params)])
    assert not out.exists()
    archive = tmp_path / "ptb.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for split in SPLIT_TEXTS:
            z.writestr(f"ptb/{split}.txt", (folder / f"{split}.txt").read_text(encoding="utf-8"))
    with pytest.raises(CorpusError, match=r"the train and test files \(.*ptb.zip:ptb/train.txt and "
                                          r".*ptb.zip:ptb/test.txt\) hold the same text"):
        read_split_texts(archive, names)


def test_zip_member_names_are_matched_in_any_spelling(tmp_path):
    archive = tmp_path / "ptb.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for split, text in SPLIT_TEXTS.items():
            z.writestr(f"ptb/{split}.txt", text)
    texts = read_split_texts(archive, {"train": "./train.txt", "val": "ptb//val.txt", "test": "test.txt/"})
    assert texts == SPLIT_TEXTS
    with pytest.raises(CorpusError, match=r"data.split_files.train='train.txt' and data.split_files.val="
                                          r"'ptb/./train.txt' are one file \(ptb/train.txt\)"):
        read_split_texts(archive, {"train": "train.txt", "val": "ptb/./train.txt", "test": "test.txt"})
