"""The DVC pipeline for real, in a temporary copy of the project, with a tiny config."""

import csv
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import PIPELINE_TINY, compose_params, run
from lyricist.data.vocab import Vocab, load_ids

pytestmark = pytest.mark.slow


def test_dvc_pull_repro_then_nothing_to_do_then_only_train_and_evaluate(reproduced, tmp_path):
    # The remote holds the raw corpora only (pipeline outputs live in the local cache): the
    # session's one `dvc pull` of both and `dvc repro` (conftest.reproduced), checked here.
    project, out = reproduced.project, reproduced.output
    assert (project / "data/raw/jaychou_lyrics.txt.zip").stat().st_size == 52607

    for stage in ("unzip", "preprocess", "vocab", "baseline", "train", "evaluate"):
        assert f"Running stage '{stage}'" in out
    for path in ["data/interim/jaychou.txt", "data/processed/jaychou/train.txt",
                 "data/processed/jaychou/val.txt", "data/processed/jaychou/test.txt",
                 "data/encoded/jaychou/vocab.json", "data/encoded/jaychou/train.npy",
                 "models/checkpoints/best.ckpt", "models/checkpoints/last.ckpt",
                 "models/metrics.csv", "reports/metrics.json", "reports/samples.md",
                 "reports/baseline.json", "dvc.lock"]:
        assert (project / path).is_file(), path
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["val_ppl"] > 1 and metrics["test_ppl"] > 1
    assert "## 战争中部队" in (project / "reports/samples.md").read_text(encoding="utf-8")
    client = MlflowClient(reproduced.store)
    [run_info] = client.search_runs(client.get_experiment_by_name("lyricist").experiment_id)
    assert run_info.data.tags["data_md5"] == "8a12a520f603e35039e7df0c2b41c839"
    # The evaluate stage's numbers in the run that trained the checkpoint; its model registered.
    assert run_info.data.metrics["test/ppl"] == pytest.approx(metrics["test_ppl"])
    [version] = client.search_model_versions("name = 'lyricist'")
    assert version.run_id == run_info.info.run_id
    assert client.get_model_version_by_alias("lyricist", "champion").version == version.version

    assert "Data and pipelines are up to date" in run(["dvc", "repro"], project)
    assert len(client.search_model_versions("name = 'lyricist'")) == 1  # nothing ran: nothing registered

    assert "val_ppl" in run(["dvc", "metrics", "show"], project)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], project)
    assert (tmp_path / "plots" / "index.html").is_file()

    # A model parameter re-runs train and evaluate only.
    compose_params(project, PIPELINE_TINY + ["model.hidden_size=12", "model.embedding_size=12",
                                             f"logger.tracking_uri={reproduced.store}"])
    status = run(["dvc", "status"], project)
    assert "train:" in status and "evaluate:" not in status.split("train:")[0]
    for stage in ("unzip", "preprocess", "vocab", "baseline"):
        assert f"{stage}:" not in status
    out = run(["dvc", "repro"], project)
    assert "Running stage 'train'" in out and "Running stage 'evaluate'" in out
    for stage in ("unzip", "preprocess", "vocab", "baseline"):
        assert f"Running stage '{stage}'" not in out

    # A failed stage: the raw corpus turns corrupt. The error names the problem and the fix,
    # the later stages' outputs and the DVC cache stay as they were, and once the corpus is
    # back, `dvc repro` re-runs only the failed stage.
    cache = lambda: sorted(str(p.relative_to(project)) for p in (project / ".dvc/cache").rglob("*")
                           if p.is_file())
    cached, metrics_before = cache(), (project / "reports/metrics.json").read_bytes()
    raw = project / "data/raw/jaychou_lyrics.txt.zip"
    good = raw.read_bytes()
    raw.write_bytes(b"PK\x03\x04 truncated")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    failed = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert failed.returncode != 0
    assert "corrupt" in failed.stderr + failed.stdout and "dvc pull" in failed.stderr + failed.stdout
    assert set(cached) <= set(cache()), "the failed stage lost cached data"
    assert (project / "reports/metrics.json").read_bytes() == metrics_before
    assert (project / "models/checkpoints/best.ckpt").is_file()
    raw.write_bytes(good)  # the user re-pulls the corpus
    out = run(["dvc", "repro"], project)  # unzip again gives the same text: nothing else re-runs
    assert "Running stage 'train'" not in out and "Running stage 'preprocess'" not in out


def test_dvc_exp_run_composes_params_from_conf(reproduced, tmp_path):
    # After a repro (conftest.reproduced): the experiments re-run train and evaluate, not the data stages.
    project, uri = reproduced.project, reproduced.store
    # What this test reads is DVC's: no logged model and no dynamic-evaluation grids in these three runs.
    quick = PIPELINE_TINY + [f"logger.tracking_uri={uri}", "logger.log_model=false", "evaluate.dynamic_lrs=[]",
                             "evaluate.krause_lrs=[]"]
    args = ["dvc", "exp", "run", "-S", "model=rnn"]
    for override in quick:
        args += ["-S", override]
    run(args, project)
    params = (project / "params.yaml").read_text(encoding="utf-8")
    assert "cell: rnn" in params  # params.yaml was rewritten from conf/ with the override

    # A queued grid, run by DVC's queue worker.
    queued = ["dvc", "exp", "run", "--queue"]
    for override in quick + ["train.seed=1,2"]:
        queued += ["-S", override]
    run(queued, project)
    run(["dvc", "queue", "start"], project)
    deadline = time.time() + 400
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], project)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, status

    rows = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], project))))
    experiments = [r for r in rows if r["Experiment"]]
    assert len(experiments) == 3
    assert all(float(r["val_ppl"]) > 1 for r in experiments)
    assert sorted(r["train.seed"] for r in experiments) == ["1", "2", "42"]
    names = [r["Experiment"] for r in experiments]
    run(["dvc", "plots", "diff", *names, "-o", str(tmp_path / "diff")], project)
    assert (tmp_path / "diff" / "index.html").is_file()


USER_TEXT = ("the time traveller smiled at us and the time machine stood in the corner\n"
             "we sat and looked at the little machine on the table\n") * 40


def test_a_user_corpus_through_data_custom(project, tmp_path):
    """conf/data/custom.yaml as its comments say: the file at data/raw/custom.txt (not `dvc add`ed),
    `dvc exp run -S data=custom vocab`; then a zip, `dvc add`ed, word-level; then the Hydra app."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    prepare = ["dvc", "exp", "run", "-S", "data=custom", "vocab"]

    # No file yet: the run stops before any stage, naming the missing file.
    failed = subprocess.run(prepare, cwd=project, env=env, capture_output=True, text=True)
    # (DVC checks the dependency before the stage runs: "failed to reproduce 'unzip': ... custom.txt")
    assert failed.returncode != 0 and "data/raw/custom.txt" in failed.stdout + failed.stderr
    assert "unzip" in failed.stdout + failed.stderr
    assert not (project / "data/encoded/custom").exists()

    (project / "data/raw/custom.txt").write_text(USER_TEXT, encoding="utf-8")
    out = run(prepare, project)
    for stage in ("unzip", "preprocess", "vocab"):
        assert f"Running stage '{stage}'" in out
    assert "Running stage 'train'" not in out
    encoded = project / "data/encoded/custom"
    vocab = Vocab.load(encoded / "vocab.json")
    train_text = (project / "data/processed/custom/train.txt").read_text(encoding="utf-8")
    assert vocab.tokenizer == "char" and train_text == USER_TEXT[:len(train_text)]
    assert vocab.decode(load_ids(encoded / "train.npy").tolist()) == train_text
    assert "data/raw/custom.txt" in (project / "dvc.lock").read_text()  # its md5 is recorded

    # A zip, tracked with `dvc add`, read word by word.
    with zipfile.ZipFile(project / "data/raw/custom.zip", "w") as archive:
        archive.writestr("mine.txt", USER_TEXT)
    run(["dvc", "add", "data/raw/custom.zip"], project)
    out = run(prepare[:-1] + ["-S", "data.raw_path=data/raw/custom.zip", "-S", "data.tokenizer=word",
                              "vocab"], project)
    assert "Running stage 'unzip'" in out and "Running stage 'vocab'" in out
    vocab = Vocab.load(encoded / "vocab.json")
    assert vocab.tokenizer == "word" and vocab.decode(load_ids(encoded / "train.npy").tolist()) == \
        vocab.decode(vocab.encode(train_text))
    assert json.loads((encoded / "prepared_with.json").read_text())["tokenizer"] == "word"

    # The Hydra app trains on it with the same overrides; other ones are refused.
    train_cmd = [sys.executable, "-m", "lyricist.train", "data=custom", f"paths.encoded={encoded}",
                 "data.raw_path=data/raw/custom.zip", "data.batch_size=4", "data.num_steps=8",
                 "model.hidden_size=16", "model.embedding_size=16", "trainer.max_epochs=1",
                 "trainer.enable_progress_bar=false", "train.eval_batch_size=2", "logger=none",
                 f"hydra.run.dir={tmp_path / 'run'}"]
    refused = subprocess.run(train_cmd, cwd=project, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "data.tokenizer: prepared 'word', asked 'char'" in refused.stderr
    run(train_cmd + ["data.tokenizer=word"], project)
    assert (tmp_path / "run/checkpoints/best.ckpt").is_file()


# -- dvc repro: a refused setting loses nothing ------------------------------------------------
@pytest.mark.slow
def test_dvc_repro_refuses_a_bad_train_setting_before_removing_the_last_runs_outputs(reproduced):
    # The last run: the session's `dvc repro` (conftest.reproduced), which ran check and train.
    project, out = reproduced.project, reproduced.output
    uri = f"logger.tracking_uri={reproduced.store}"
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


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["a FIFO (named pipe)", "a character device"])
def test_dvc_exp_run_refuses_a_raw_path_it_would_hang_on(project, kind):
    """DVC hashes unzip's dependencies before running it: a FIFO blocks it, /dev/zero never ends
    (main hung). The check stage runs first and refuses them from `stat`. A hard timeout: a hang
    fails the test instead of hanging the suite."""
    raw = project / "data/raw/hostile.txt"
    os.mkfifo(raw) if "FIFO" in kind else raw.symlink_to("/dev/zero")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    try:
        proc = subprocess.run(["dvc", "exp", "run", "-S", "data.raw_path=data/raw/hostile.txt"], cwd=project,
                              env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("dvc exp run hung on the raw path")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"data/raw/hostile.txt{' (a symlink to /dev/zero)' * ('FIFO' not in kind)} " \
                                    f"is {kind}, not a regular file" in out
    assert "Running stage 'unzip'" not in out
    assert "(dvc exp run: params.yaml keeps this experiment's values; `git checkout params.yaml`" in out
