"""The commands a user types: the Hydra app (single run and multirun) and the generator, whose
mistakes (another vocabulary, a bad number, a folder for a file) are one line naming the fix."""

import gzip
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import LYRICS, TINY, empty_store, encoded_of, gen, make_lm, project_env, stage, train, untrained_checkpoint, with_data
from lyricist.cli import generate as generate_cli
from lyricist.checkpoint import load_checkpoint
from lyricist.data.vocab import Vocab
from lyricist.models import RecurrentLM


def _hydra(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # Run outside the project: $LYRICIST_ROOT says where it is (conf/, the default MLflow store).
    return subprocess.run([sys.executable, "-m", "lyricist.train", *args], cwd=cwd,
                          capture_output=True, text=True, env=project_env())


@pytest.mark.slow
def test_hydra_single_run_and_multirun_log_to_one_store(tiny_data, tmp_path, _empty_store):
    uri = empty_store(_empty_store, tmp_path / "mlflow.db")
    # What this test reads is the runs' params, status and nesting: no logged model (test_serving's).
    common = TINY + [f"logger.tracking_uri={uri}", "logger.log_model=false", "trainer.max_epochs=1",
                     f"paths.encoded={tiny_data}", f"hydra.run.dir={tmp_path}/single",
                     f"hydra.sweep.dir={tmp_path}/multi"]
    single = _hydra(["model=rnn", "data.sampling=random", *common], tmp_path)
    assert single.returncode == 0, single.stderr
    assert (tmp_path / "single" / "checkpoints" / "best.ckpt").is_file()

    multi = _hydra(["-m", "model=rnn,gru", *common], tmp_path)
    assert multi.returncode == 0, multi.stderr
    assert sorted(p.name for p in (tmp_path / "multi").iterdir() if p.is_dir()) == ["0", "1"]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    jobs = [r for r in runs if r.data.tags.get("sweep") != "parent"]
    assert sorted(r.data.params["model.cell"] for r in jobs) == ["gru", "rnn", "rnn"]
    assert all(r.info.status == "FINISHED" for r in runs)
    [parent] = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert sum(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in jobs) == 2


def test_generate_cli_prints_lyrics_and_rejects_bad_input(tiny_cfg, tiny_data, tmp_path, capsys):
    tiny_cfg.logger.enabled = False
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    ckpt = str(tmp_path / "run" / "checkpoints" / "best.ckpt")
    capsys.readouterr()  # drop the trainer's own output

    assert generate_cli.main(["--checkpoint", ckpt, "--prefix", "分开", "--prefix", "不分开",
                              "--num-chars", "7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("分开") and any(line.startswith("不分开") for line in lines)

    sampled = [generate_cli.main(["--checkpoint", ckpt, "--prefix", "分开", "--strategy", "sample",
                                  "--temperature", "0.8", "--top-k", "5", "--seed", "3"])
               for _ in range(2)]
    out = capsys.readouterr().out
    half = len(out) // 2
    assert sampled == [0, 0] and out.startswith("分开") and out[:half] == out[half:]  # same seed

    # The decoding options users expect, each a flag; a flag left out keeps the run's generate.*.
    args = ["--checkpoint", ckpt, "--prefix", "分开", "--num-chars", "12", "--seed", "2"]
    nucleus = ["--top-p", "0.9", "--repetition-penalty", "1.3", "--repetition-window", "5", "--no-repeat-ngram", "3"]
    assert generate_cli.main(args + ["--strategy", "sample", "--temperature", "0.85", *nucleus]) == 0
    loaded = load_checkpoint(ckpt)
    assert capsys.readouterr().out == gen(
        loaded.model, loaded.vocab, "分开", 12, strategy="sample", temperature=0.85, seed=2, top_p=0.9,
        repetition_penalty=1.3, repetition_window=5, no_repeat_ngram=3) + "\n"
    assert generate_cli.main(args + ["--prefix", "不分开"]) == 0
    defaults = {k: v for k, v in loaded.decoding.model_dump().items() if k not in ("num_chars", "seed")}
    assert defaults["strategy"] == "sample" and capsys.readouterr().out == "".join(
        gen(loaded.model, loaded.vocab, prefix, 12, seed=seed, **defaults) + "\n"
        for prefix, seed in [("分开", 2), ("不分开", 3)])  # the next prefix, the next seed

    # A bad option is named before the checkpoint is read (a missing one would say so first).
    for bad, message in [(["--prefix", "分开"], "does not exist"),
                         (["--prefix", "分开", "--num-chars", "0"], "num_chars"),
                         (["--prefix", "分开", "--temperature", "0"], "temperature"),
                         (["--prefix", "分开", "--temperature", "nan"], "temperature=nan is not allowed"),
                         (["--prefix", "分开", "--top-p", "1.5"], "top_p=1.5 is not allowed: use a value <= 1 "
                                                               "(sample: the nucleus"),
                         (["--prefix", "分开", "--repetition-penalty", "0.5"], "repetition_penalty=0.5"),
                         (["--prefix", "分开", "--no-repeat-ngram", "0"], "no_repeat_ngram=0"),
                         (["--prefix", ""], "empty"),
                         (["--prefix", "分开λ"], "'λ'")]:
        # top_p: a missing checkpoint too, and the option is what is named
        path = str(tmp_path / "missing.ckpt") if message.startswith(("does not exist", "top_p")) else ckpt
        assert generate_cli.main(["--checkpoint", path, *bad]) == 2
        assert message in capsys.readouterr().err
    assert generate_cli.main(["--checkpoint", ckpt, "--prefix", "分开λ", "--allow-unknown",
                              "--num-chars", "3"]) == 0
    assert capsys.readouterr().out.startswith("分开λ")


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert generate_cli.main(["--checkpoint", str(bad), "--prefix", "分开"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_generate_leaves_a_training_model_training_when_it_fails(monkeypatch):
    vocab = Vocab.build(LYRICS)
    model = make_lm(len(vocab), cell="lstm", hidden_size=4, dropout=0.5).train()
    modes = []

    def forward_that_fails_on_the_third_token(ids, state=None):
        modes.append(model.training)
        if len(modes) == 3:
            raise KeyboardInterrupt  # e.g. Ctrl-C half-way through a sample
        return RecurrentLM.forward(model, ids, state)

    monkeypatch.setattr(model, "forward", forward_that_fails_on_the_third_token)
    with pytest.raises(KeyboardInterrupt):
        gen(model, vocab, "分开", 5)
    assert modes == [False] * 3 and model.training  # no dropout while writing, training again after


def test_generate_and_the_ensemble_refuse_another_vocabulary(tmp_path, capsys):
    ckpt = untrained_checkpoint(tmp_path / "a.ckpt", "abcdefgh" * 20)
    other = untrained_checkpoint(tmp_path / "b.ckpt", "abcdefg" * 20)
    data = encoded_of(tmp_path / "encoded", "abcdefgx" * 20)
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
    ckpt = untrained_checkpoint(tmp_path / "a.ckpt", "abcdefgh" * 20)
    assert generate_cli.main(["--checkpoint", str(ckpt), "--prefix", "ab", "--num-chars", "10000000"]) == 2
    assert capsys.readouterr().err.startswith("error: num_chars=10000000 is not allowed: use a value <= 1000000")
    clock = iter(range(0, 1000, 4))  # 4 s a token, as a slow machine would take
    lines = generate_cli.ProgressLines("prefix 1", every=10, clock=lambda: next(clock))
    for done in range(1, 11):
        lines(done, 10)
    assert capsys.readouterr().err.splitlines() == [
        "generate: prefix 1: 3 / 10 tokens in 12 s, ~28 s left", "generate: prefix 1: 6 / 10 tokens in 24 s, ~16 s left",
        "generate: prefix 1: 9 / 10 tokens in 36 s, ~4 s left"]


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_generate_cli_refuses_a_temperature_that_is_not_finite(value, tmp_path, capsys):
    from lyricist.cli import generate as generate_cli

    argv = ["--checkpoint", str(tmp_path / "none.ckpt"), "--prefix", "分开", "--temperature", value]
    assert generate_cli.main(argv) == 2  # before the checkpoint is even looked for
    err = capsys.readouterr().err
    assert err.startswith(f"error: temperature={value} is not allowed: use a ") and "Traceback" not in err


def test_the_unclear_messages_name_the_problem_and_the_fix(tmp_path, monkeypatch, capsys):
    """Each old line was unclear or false (issue 33); each new one names the problem and the fix."""
    from lyricist.cli import generate
    from lyricist.data.corpus import CorpusError, read_raw_text
    from lyricist.errors import run_cli
    def refused(argv: list[str]) -> str:
        assert generate.main(argv) == 2
        return capsys.readouterr().err

    # A folder as --checkpoint (was "does not exist").
    (tmp_path / "run").mkdir()
    (tmp_path / "run/best.ckpt").write_bytes(b"")
    assert f"checkpoint {tmp_path / 'run'} is a folder (best.ckpt in it): give the .ckpt file itself, e.g. " \
           f"{tmp_path / 'run/best.ckpt'}" in refused(["--checkpoint", str(tmp_path / "run"), "--prefix", "分开"])
    # --num-chars 1e7 (was "invalid <lambda> value"): read as the number it is, then bounded.
    assert "num_chars=10000000 is not allowed: use a value <= 1000000" in refused(
        ["--checkpoint", "x.ckpt", "--prefix", "分开", "--num-chars", "1e7"])
    with pytest.raises(SystemExit):
        generate.main(["--checkpoint", "x.ckpt", "--prefix", "分开", "--num-chars", "1.5"])
    assert "argument --num-chars/--num-tokens: '1.5' is not a whole number, e.g. 200" in capsys.readouterr().err
    # A stage script's missing input (was a bare "[Errno 2] No such file or directory").
    missing = tmp_path / "interim.txt"
    assert run_cli(lambda: stage("preprocess").main(["--input", str(missing), "--out-dir", str(tmp_path / "p")])) == 2
    assert capsys.readouterr().err.startswith(f"error: {missing} does not exist: check the path (a DVC stage's "
                                              "input is written by the stages before it: `dvc repro <stage>`")
    # A cp1252 or gzip file of one's own (was told to `dvc pull --force` a .dvc file that does not exist).
    cp1252, gz = tmp_path / "mine.txt", tmp_path / "mine.txt.gz"
    cp1252.write_bytes("café\n".encode("cp1252"))
    gz.write_bytes(gzip.compress("分开\n".encode()))
    with pytest.raises(CorpusError) as err:
        read_raw_text(cp1252)
    assert "iconv -f <its encoding, e.g. CP1252 or GB18030> -t UTF-8" in str(err.value)
    assert "dvc pull" not in str(err.value)
    (tmp_path / "mine.txt.dvc").write_text("outs: []\n")  # a DVC-tracked file may be re-fetched
    with pytest.raises(CorpusError, match=r"or re-fetch it with `dvc pull --force .*mine.txt.dvc`"):
        read_raw_text(cp1252)
    with pytest.raises(CorpusError, match=r"mine.txt.gz is gzip-compressed, not text: `gunzip` it"):
        read_raw_text(gz)
    # --model against no store (an empty mlflow.db was created).
    store = tmp_path / "none" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    assert f"no MLflow store at {store} to load models:/lyricist@champion from: train one first" in refused(
        ["--model", "models:/lyricist@champion", "--prefix", "分开"])
    assert not store.exists()
