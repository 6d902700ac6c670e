"""The hostile cases that got through #17's defences (#25): each is refused before any work, or
handled, with one line and nothing lost."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import ROOT, TINY, make_lit, make_lm, project_env, with_data
from test_pipeline import project  # noqa: F401 (a fixture)
from lyricist.cli import generate as generate_cli
from lyricist import rundir, settings
from lyricist.data.corpus import CorpusError, read_split_texts
from lyricist.checkpoint import load_checkpoint
from lyricist.data.vocab import Vocab, encode_to_array, save_ids
from lyricist.evaluation.ppl import MAX_LOSS, perplexity
from lyricist.models import RecurrentLM
from lyricist.tracking import store
from conftest import train
from lyricist.training.datamodule import LyricsDataModule
from lyricist.training.module import LitLanguageModel, TrainingDiverged


def _app(overrides, tiny_data, run_dir, cwd):
    """`python -m lyricist.train` with the tiny config, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "lyricist.train", *TINY, "logger=none", "trainer.max_epochs=1",
                           f"paths.encoded={tiny_data}", f"hydra.run.dir={run_dir}", *overrides],
                          capture_output=True, text=True, cwd=cwd, env=project_env(), timeout=300)


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
    from test_hostile_input import params_file, stage

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


# -- degenerate data refused by the vocab stage unless allowed -----------------------------------
def _vocab_stage(tmp_path, texts, overrides=()):
    from test_hostile_input import params_file, stage

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


# -- a checkpoint scored or sampled only with its own vocabulary ------------------------------------
def _checkpoint(path, text):
    """A lyricist checkpoint of an untrained model over `text`'s characters (what load_checkpoint reads)."""
    vocab = Vocab.build(text)
    model = make_lm(len(vocab), hidden_size=8)
    model_config = {**model.config.model_dump(), "vocab_size": model.vocab_size}
    torch.save({"lyricist": {"model_config": model_config, "vocab": vocab.to_dict()}, "epoch": 0,
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _encoded(folder, text):
    folder.mkdir()
    vocab = Vocab.build(text)
    vocab.save(folder / "vocab.json")
    for split in ("train", "val", "test"):
        save_ids(folder / f"{split}.npy", encode_to_array(vocab, text), len(vocab))
    return folder


def test_evaluate_refuses_a_checkpoint_of_another_vocabulary_naming_both(tmp_path):
    from test_hostile_input import params_file, stage

    ckpt = _checkpoint(tmp_path / "a.ckpt", "abcdefgh" * 20)
    data = _encoded(tmp_path / "encoded", "abcdefgx" * 20)  # one letter differs: same size, other ids
    metrics = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"checkpoint .*a.ckpt was trained with another vocabulary than "
                                         r".*encoded/vocab.json \(9 char tokens against 9 char tokens; id 8 is 'h' "
                                         r"in the first, 'x' in the second\)"):
        stage("evaluate").main(["--checkpoint", str(ckpt), "--data-dir", str(data), "--metrics", str(metrics),
                                "--samples", str(tmp_path / "samples.md"), "--params", str(params_file(tmp_path))])
    assert not metrics.exists()


def test_generate_and_the_ensemble_refuse_another_vocabulary(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "a.ckpt", "abcdefgh" * 20)
    other = _checkpoint(tmp_path / "b.ckpt", "abcdefg" * 20)
    data = _encoded(tmp_path / "encoded", "abcdefgx" * 20)
    assert generate_cli.main(["--checkpoint", str(ckpt), "--prefix", "ab", "--num-chars", "5",
                              "--data-dir", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint {ckpt} was trained with another vocabulary than {data / 'vocab.json'}")
    assert len(err.splitlines()) == 2  # the line and the traceback hint
    assert generate_cli.main(["--checkpoint", str(ckpt), "--prefix", "ab", "--num-chars", "5"]) == 0  # no data: as before
    with pytest.raises(ValueError, match=r"b.ckpt was trained with another vocabulary than .*a.ckpt \(8 char tokens "
                                         r"against 9 char tokens\): an ensemble"):
        load_checkpoint([ckpt, other])


def test_generate_cli_bounds_num_chars_and_reports_progress_on_a_long_sample(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "a.ckpt", "abcdefgh" * 20)
    assert generate_cli.main(["--checkpoint", str(ckpt), "--prefix", "ab", "--num-chars", "10000000"]) == 2
    assert capsys.readouterr().err.startswith("error: num_chars=10000000 is not allowed: use a value <= 1000000")
    clock = iter(range(0, 1000, 4))  # 4 s a token, as a slow machine would take
    lines = generate_cli.ProgressLines("prefix 1", every=10, clock=lambda: next(clock))
    for done in range(1, 11):
        lines(done, 10)
    assert capsys.readouterr().err.splitlines() == [
        "generate: prefix 1: 3 / 10 tokens in 12 s, ~28 s left", "generate: prefix 1: 6 / 10 tokens in 24 s, ~16 s left",
        "generate: prefix 1: 9 / 10 tokens in 36 s, ~4 s left"]


# -- long jobs: a summary after every seed ------------------------------------------------------
def test_seeds_writes_its_summary_after_every_seed_so_a_stopped_run_keeps_them(tiny_data, tmp_path, monkeypatch):
    import json

    from lyricist import seeds
    from lyricist.experiments import seeds as seeds_run
    from lyricist.training.run import train as train_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    trained = []

    def stopped_at_the_second_seed(s, output_dir, **kwargs):  # fault injection: Ctrl-C during seed 2
        if trained:
            raise KeyboardInterrupt
        trained.append(output_dir)
        return train_settings(s, output_dir, **kwargs)

    monkeypatch.setattr(seeds_run, "train", stopped_at_the_second_seed)
    out = tmp_path / "seeds"
    with pytest.raises(KeyboardInterrupt):
        seeds.main(["--seeds", "3", "--static", "--out", str(out), *TINY, "logger=none", f"paths.encoded={tiny_data}",
                    "baseline.max_order=2", "train.seed=7"])
    summary = json.loads((out / "summary.json").read_text())
    assert [r["seed"] for r in summary["runs"]] == [7] and summary["seeds"] == 3
    assert "(1 of 3 seeds so far)" in (out / "summary.md").read_text()
    with pytest.raises(SystemExit):  # argparse's refusal, before any work
        seeds.main(["--seeds", "1000", "--out", str(tmp_path / "many")])
    assert not (tmp_path / "many").exists()


# -- dvc repro: a refused setting loses nothing ------------------------------------------------
@pytest.mark.slow
def test_dvc_repro_refuses_a_bad_train_setting_before_removing_the_last_runs_outputs(project, tmp_path):
    from test_pipeline import TINY as PIPELINE_TINY, compose_params, run

    run(["dvc", "pull", "-q", "data/raw/jaychou_lyrics.txt.zip.dvc"], project)
    uri = f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}"
    out = run(["dvc", "repro", "train"], project)
    assert "Running stage 'check'" in out and "Running stage 'train'" in out
    kept = {name: (project / "models" / name).read_bytes() for name in ("metrics.csv", "checkpoints/best.ckpt",
                                                                         "checkpoints/last.ckpt")}
    compose_params(project, [*PIPELINE_TINY, uri, "data.batch_size=-3"])
    failed = subprocess.run(["dvc", "repro", "train"], cwd=project, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert failed.returncode != 0
    assert "error: data.batch_size=-3 is not allowed" in failed.stdout + failed.stderr
    assert "Running stage 'train'" not in failed.stdout
    assert {name: (project / "models" / name).read_bytes() for name in kept} == kept  # the last run's, untouched


# -- perplexity that cannot overflow ---------------------------------------------------------
def test_perplexity_of_any_loss_is_a_number_never_an_overflow():
    assert perplexity(1.0) == pytest.approx(2.718281828)
    assert perplexity(MAX_LOSS) < float("inf")
    assert perplexity(1e30) == perplexity(710.0) == perplexity(float("inf")) == float("inf")
    assert perplexity(float("nan")) != perplexity(float("nan"))  # nan stays nan


def test_a_huge_init_scale_without_the_guard_is_a_divergence_in_one_line_and_the_folder_stays_usable(
        tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    refused = _app(["model.init_scale=1e30"], tiny_data, run_dir, tmp_path)  # bounded by the schema now
    assert refused.returncode == 2 and "error: model.init_scale=1e+30 is not allowed: use a value <= 10" in refused.stderr
    assert not run_dir.exists()
    proc = _app(["optim.lr=1e12", "train.divergence_factor=null"], tiny_data, run_dir, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "\nerror: training loss " in proc.stderr and ("overflows its perplexity" in proc.stderr
                                                         or "is not finite" in proc.stderr)
    assert "optim.lr" in proc.stderr and "Traceback" not in proc.stderr
    # No epoch finished: metrics.csv holds its header alone, which is no run to protect.
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1
    again = _app([], tiny_data, run_dir, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2


class _HugeHeadAtValidation(pl.Callback):
    """Fault injection: the head's weights become huge (finite) before validation, so the val loss
    is finite but far past exp()'s range (train's loss, computed before, is fine)."""

    def on_validation_epoch_start(self, trainer, module):
        with torch.no_grad():
            module.model.head.weight.mul_(1e30)


def test_a_val_loss_past_exps_range_is_a_divergence_not_an_overflow_error(tmp_path):
    vocab = Vocab.build("abcdefgh")
    ids = torch.randint(0, len(vocab), (600,), generator=torch.Generator().manual_seed(0))
    lit = make_lit(make_lm(len(vocab), hidden_size=8), vocab, lr=0.1, divergence_factor=None)
    trainer = pl.Trainer(max_epochs=1, logger=False, callbacks=[_HugeHeadAtValidation()], enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    data = LyricsDataModule(ids, ids[:200], batch_size=4, num_steps=5, eval_batch_size=2)
    with pytest.raises(TrainingDiverged, match=r"validation loss \S+ overflows its perplexity .* at epoch 0"):
        trainer.fit(lit, datamodule=data)


def test_a_metrics_csv_with_its_header_alone_is_no_run(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,train/loss,train/ppl,val/loss,val/ppl\n")
    assert rundir.existing_run(tmp_path) == []
    rundir.check_run_dir(tmp_path, resume=False, overwrite=False)  # not refused
    (tmp_path / "metrics.csv").write_text("epoch,train/loss\n0,3.2\n")
    assert rundir.existing_run(tmp_path) == ["metrics.csv"]


# -- tracebacks that become one line -----------------------------------------------------------
def test_resume_refuses_a_truncated_checkpoint_and_more_epochs_than_max_epochs(tiny_cfg, tiny_data, tmp_path):
    cfg = with_data(tiny_cfg, tiny_data)
    cfg.logger.enabled = False
    train(cfg, tmp_path / "run")  # 2 epochs
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg.train.resume, cfg.trainer.max_epochs = "auto", 1
    with pytest.raises(ValueError, match=r"train.resume='.*last.ckpt' has finished 2 epochs, more than "
                                         r"trainer.max_epochs=1: to train on, raise it above 2"):
        train(cfg, tmp_path / "run")
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 2])  # a copy cut short
    cfg.trainer.max_epochs = 3
    with pytest.raises(ValueError, match=r"checkpoint .*last.ckpt is corrupt or not a torch file"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize("uri", ["bogus://x", "sqlite:///{tmp}/notes.txt", "{tmp}/mlruns"])
def test_an_unusable_tracking_uri_is_one_line_with_the_fix(uri, tmp_path):
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    uri = uri.format(tmp=tmp_path)
    with pytest.raises(store.TrackingError, match=r"cannot use the MLflow tracking store .*sqlite:///<absolute "
                                                  r"path>/mlflow.db.*logger=none") as err:
        store.ensure_experiment(uri, "lyricist")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_answers_help_and_a_bad_argument_without_running(script):
    path = str(ROOT / "benchmarks" / script)
    helped = subprocess.run([sys.executable, path, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert helped.returncode == 0 and helped.stdout.startswith("usage:"), helped.stderr[-1000:]
    bad = subprocess.run([sys.executable, path, "--no-such-option"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and f"{script}: error: " in bad.stderr  # argparse's usage error
    assert "Traceback" not in bad.stderr
