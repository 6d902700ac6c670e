"""Issue 33: nothing lost or misreported on the newer surfaces (the registry's champion, a full
disk, the served model's requests, the search's trial folders, DVC's hangs), each through the real
component: a registry in a SQLite store, a filesystem that fills, the pyfunc model as the scoring
server calls it (and `mlflow models serve`), Optuna storages, `dvc exp run`."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import pytorch_lightning as pl
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY, compose_config, train, write_encoded, with_data
from lyricist.checkpoint import load_checkpoint
from test_pipeline import project  # noqa: F401 (a fixture: the project copied into a git repository)

# Ten characters over and over: a model learns it in an epoch (val ppl near 1, below any lyric's).
EASY = "分开不分开我不能再想\n" * 120


@pytest.mark.slow
def test_a_model_of_other_data_never_takes_the_champion(tiny_cfg, tiny_data, tmp_path, capsys):
    """As the hostile run: data.raw_path left at its default, paths.encoded another text. The
    champion's identity is the data read, so the better number on other data does not move it."""
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "lyrics")
    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    first = client.get_model_version_by_alias("lyricist", "champion")
    other = write_encoded(tmp_path / "other", EASY, val_fraction=0.2, test_fraction=0.1)
    capsys.readouterr()
    train(with_data(tiny_cfg, other), output_dir=tmp_path / "other-run")
    second = client.get_model_version("lyricist", "2")
    assert float(second.tags["val_ppl"]) < float(first.tags["val_ppl"])  # better, on other data
    assert second.tags["data_md5"] == first.tags["data_md5"]  # the same raw_path: DVC's hash alone cannot tell
    assert client.get_model_version_by_alias("lyricist", "champion").version == first.version
    assert "champion stays (version 1 was trained on other data (encoded_md5))" in capsys.readouterr().out

    # The champion's version deleted while an older one remains: the next version takes the free
    # alias, and the line says so rather than "(the first)".
    client.delete_model_version("lyricist", "1")
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "again")
    line = capsys.readouterr().out
    assert "registered lyricist version 3: champion is now this version (no version held it" in line
    assert "earlier versions 2 remain" in line and "(the first)" not in line


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs: a real filesystem that fills (root only: elsewhere the test is skipped)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): run as root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


class FillTheDisk(pl.Callback):
    """At the start of epoch `epoch`, fills the disk but for 16 KiB (a checkpoint here is ~48 KiB)."""

    def __init__(self, disk: Path, epoch: int) -> None:
        self.disk, self.epoch = disk, epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with open(self.disk / "filler", "wb") as f:
                f.write(b"\0" * (shutil.disk_usage(self.disk).free - 16 * 1024))


@pytest.mark.parametrize("full_at", [0, 1])
def test_a_full_disk_leaves_no_partial_checkpoint_and_keeps_the_last_good_one(small_disk, tiny_data, full_at):
    """Full before the first checkpoint: none is left (main left a truncated best.ckpt, written in
    /tmp and copied over). Full before the second: the first stays whole, as the only one (a write
    beside it needs room for both)."""
    run = small_disk / "run"
    cfg = with_data(compose_config(TINY + ["logger=none"]), tiny_data)
    with pytest.raises(OSError) as err:  # errors.NoSpace: one line from the CLI
        train(cfg, output_dir=run, callbacks=[FillTheDisk(small_disk, full_at)])
    message = str(err.value)
    assert message.startswith(f"no space left in {run / 'checkpoints'} to write ") and "\n" not in message
    assert "MiB are free (the previous" in message and "train.resume=auto" in message
    left = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert left == ([] if full_at == 0 else ["best.ckpt", "last.ckpt"])  # no partial file
    for name in left:  # epoch 0's, whole
        assert load_checkpoint(run / "checkpoints" / name).meta["epoch"] == 0


def _refusal(model, records: list[dict]) -> str:
    with pytest.raises(mlflow.exceptions.MlflowException) as err:
        model.predict(pd.DataFrame(records))
    assert err.value.get_http_status_code() == 400
    return err.value.message


@pytest.mark.slow
def test_the_served_model_refuses_what_it_does_not_understand(tiny_cfg, tiny_data, tmp_path, capsys):
    """Through the pyfunc model as the scoring server calls it (MLflow's schema enforcement first)."""
    from lyricist.cli import generate

    tiny_cfg.logger.serve_max_num_chars = 20
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    mlflow.set_tracking_uri(tiny_cfg.logger.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/lyricist@champion")
    ckpt = str(tmp_path / "run/checkpoints/best.ckpt")

    # A misspelt or unknown field: refused by name with the known ones (MLflow drops such a column).
    message = _refusal(model, [{"prefix": "分开", "temprature": 0.01, "colour": "red"}])
    assert message.startswith("unknown request fields colour, temprature (did you mean temperature?): a row takes "
                              "prefix, num_chars, strategy, temperature")
    assert message.endswith(", seed, allow_unknown") and "\n" not in message

    # Characters the vocabulary lacks: one rule, one message, the CLI's and the server's.
    served = _refusal(model, [{"prefix": "分开"}, {"prefix": "分开λ"}])
    assert served.startswith("row 1: prefix '分开λ' has characters not in the vocabulary: 'λ'; remove them")
    capsys.readouterr()
    assert generate.main(["--checkpoint", ckpt, "--prefix", "分开λ"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {served.removeprefix('row 1: ')}\n")
    allowed = model.predict(pd.DataFrame([{"prefix": "分开λ", "num_chars": 3, "allow_unknown": True}]))
    assert allowed["lyrics"][0].startswith("分开λ")
    assert generate.main(["--checkpoint", ckpt, "--prefix", "分开λ", "--allow-unknown", "--num-chars", "3"]) == 0

    # The two caps on num_chars, told in the same words.
    served = _refusal(model, [{"prefix": "分开", "num_chars": 21}])
    assert generate.main(["--checkpoint", ckpt, "--prefix", "分开", "--num-chars", "1000001"]) == 2
    cli = capsys.readouterr().err
    assert served.startswith("row 0: num_chars=21 is not allowed: use at most 20 (tokens predicted after the prefix;")
    assert "lyricist-generate's is 1000000" in served
    assert "num_chars=1000001 is not allowed: use a value <= 1000000 (tokens predicted after the prefix)" in cli


@pytest.mark.slow
def test_a_new_study_never_writes_into_an_earlier_studys_trial_folders(tiny_data, tmp_path, monkeypatch):
    """Two fresh storages, one study name, the default output folder: each study its own folder
    (main: the second study's trial 0 met the first's trial_0000 and failed, hinting train.* keys)."""
    from lyricist.cli import tune

    root = tmp_path / "project"  # paths.root: the default folder is <root>/outputs/tune/<study>/
    root.mkdir()
    (root / "conf").symlink_to(ROOT / "conf")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))

    def search(storage: str) -> int:
        return tune.main([*TINY, f"paths.encoded={tiny_data}", f"paths.root={root}", "logger=none",
                          f"tune.storage=sqlite:///{tmp_path / storage}", "tune.preset=null", "tune.space=null",
                          "tune.space={optim.lr: {low: 0.001, high: 0.03, log: true}}", "tune.timeout=null",
                          "tune.n_trials=1"])

    assert search("first.db") == 0
    [first] = (root / "outputs/tune/jaychou").rglob("trial_0000")
    kept = (first / "checkpoints/best.ckpt").read_bytes()
    assert search("second.db") == 0
    trials = sorted((root / "outputs/tune/jaychou").rglob("trial_0000"))
    assert len(trials) == 2 and first in trials and (first / "checkpoints/best.ckpt").read_bytes() == kept
    for folder in (t.parent for t in trials):  # each study's report beside its trials
        assert json.loads((folder / "summary.json").read_text())["trials"] == 1


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


def test_the_unclear_messages_name_the_problem_and_the_fix(tmp_path, monkeypatch, capsys):
    """Each old line was unclear or false (issue 33); each new one names the problem and the fix."""
    from lyricist.cli import generate
    from lyricist.data.corpus import CorpusError, read_raw_text
    from lyricist.errors import run_cli
    from test_hostile_input import stage

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
