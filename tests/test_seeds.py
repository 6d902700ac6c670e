"""`python -m lyricist.seeds`: N seeds trained and scored, mean ± std, the ensemble, MLflow; its
summary written after every seed."""

import json
import math
import statistics
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY, empty_store, gen, project_env
from test_entry_errors import MISTAKES, _override
from lyricist import seeds
from lyricist.cli.config import run
from lyricist.checkpoint import load_checkpoint
from lyricist.decoding import generate
from lyricist.models.ensemble import Ensemble


def test_seeds_are_trained_scored_and_summarised(tiny_data, tmp_path, monkeypatch, _empty_store):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    uri = empty_store(_empty_store, tmp_path / "mlflow.db")
    overrides = [*TINY, f"paths.encoded={tiny_data}", f"logger.tracking_uri={uri}", "logger.log_model=false",
                 "baseline.max_order=3", "evaluate.dynamic_lrs=[1.0]", "evaluate.krause_lrs=[0.002]",
                 "evaluate.dynamic_tune_tokens=null", "evaluate.krause_stat_tokens=null", "train.seed=7"]
    out = tmp_path / "seeds"
    assert seeds.main(["--seeds", "2", "--ensemble", "--log-ensemble", "--out", str(out), *overrides]) == 0
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["seed"] for r in runs] == [7, 8]
    assert runs[0]["val_ppl"] != runs[1]["val_ppl"]  # another seed, another model
    for r in runs:
        assert (out / f"seed{r['seed']}" / "checkpoints" / "best.ckpt").is_file()
        assert r["krause_val_ppl"] <= r["val_ppl"] * (1 + 1e-6) and r["ngram_order"] in (1, 2, 3)
    mean, std = statistics.fmean(r["val_ppl"] for r in runs), statistics.stdev(r["val_ppl"] for r in runs)
    table = (out / "summary.md").read_text()
    assert f"| network | {mean:.1f} ± {std:.1f} |" in table
    # Mixing probabilities: never worse than the members' geometric mean.
    assert summary["ensemble"]["val_ppl"] <= math.sqrt(runs[0]["val_ppl"] * runs[1]["val_ppl"]) * (1 + 1e-9)
    assert f" {summary['ensemble']['val_ppl']:.1f} |" in next(line for line in table.splitlines() if line.startswith("| network |"))
    # One parent run holding the mean and std, the seeds' runs nested under it.
    client = MlflowClient(uri)
    parent, = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id],
                                 filter_string="tags.seeds = 'parent'")
    assert parent.data.metrics["seeds/val_ppl_mean"] == pytest.approx(mean)
    assert parent.data.metrics["seeds/val_ppl_std"] == pytest.approx(std)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 2 and parent.info.status == "FINISHED"
    # The parent's model is the ensemble: it writes what the two checkpoints averaged write.
    mlflow.set_tracking_uri(uri)
    served = mlflow.pyfunc.load_model(f"runs:/{parent.info.run_id}/model")
    request = pd.DataFrame({"prefix": ["分开"], "num_chars": [12], "strategy": ["greedy"], "repetition_penalty": [1.0]})
    ensemble = load_checkpoint([r["checkpoint"] for r in runs])
    assert isinstance(ensemble.model, Ensemble)
    assert served.predict(request)["lyrics"][0] == gen(ensemble.model, ensemble.vocab, "分开", 12)
    # A second run into the same folder is refused before training.
    with pytest.raises(SystemExit):
        seeds.main(["--seeds", "1", "--out", str(out), *overrides])
    assert json.loads((out / "summary.json").read_text()) == summary


def test_a_bad_value_is_refused_before_any_run_or_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError, match=r"^model.hidden_size='abc' is not allowed"):
        seeds.main(["--out", str(tmp_path / "seeds"), f"logger.tracking_uri={uri}", "model.hidden_size=abc"])
    assert not (tmp_path / "seeds").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_typo_is_one_line_as_lyricist_train_gives_it(tmp_path):
    """The same line as `python -m lyricist.train` (not Hydra's five about `+model.hiden_size`), before any
    folder or run exists."""
    proc = subprocess.run([sys.executable, "-m", "lyricist.seeds", "--out", str(tmp_path / "seeds"),
                           f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "model.hiden_size=8"],
                          capture_output=True, text=True, cwd=tmp_path, env=project_env())
    assert proc.returncode == 2 and proc.stderr.splitlines()[0] == (
        "error: model.hiden_size is not a setting: did you mean model.hidden_size? (docs/configuration.md lists them all)"
    ), proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mistake", MISTAKES, ids=str)
def test_every_mistake_lyricist_train_refuses_is_the_same_line_here(mistake, tmp_path, monkeypatch, capsys):
    groups, key, value, line = MISTAKES[mistake]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LYRICIST_ROOT", str(ROOT))
    argv = ["--out", str(tmp_path / "seeds"), *groups, f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            _override(key, value)]
    assert run(lambda: seeds.main(argv)) == 2
    assert capsys.readouterr().err.splitlines()[0] == f"error: {line}"
    assert list(tmp_path.iterdir()) == []


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
