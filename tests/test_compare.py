"""`python -m lyricist.tracking.compare` over a real (temporary) SQLite MLflow store."""

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from mlflow.tracking import MlflowClient

from lyricist.tracking.compare import main

T0 = 1_700_000_000_000  # ms; fixed start times make the durations exact

# name: (params, val/ppl per epoch, train/ppl per epoch, seconds it ran)
RUNS = {
    "rnn-consecutive": ({"model.cell": "rnn", "data.sampling": "consecutive", "model.hidden_size": 64},
                        [50.0, 30.0, 35.0], [60.0, 25.0, 20.0], 65),
    "lstm-random": ({"model.cell": "lstm", "data.sampling": "random", "model.hidden_size": 128},
                    [40.0, 20.0, 12.0, 15.0], [45.0, 18.0, 10.0, 8.0], 3725),
}
CHILD = ("gru-random", {"model.cell": "gru", "data.sampling": "random", "model.hidden_size": 256},
         [30.0, 9.0], [35.0, 7.0], 12)


def log_run(client, experiment_id, name, params, val, train, seconds, tags=None):
    run = client.create_run(experiment_id, start_time=T0, run_name=name, tags=tags or {})
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for epoch, (v, t) in enumerate(zip(val, train)):
        client.log_metric(run_id, "val/ppl", v, step=epoch)
        client.log_metric(run_id, "train/ppl", t, step=epoch)
    client.log_metric(run_id, "best/val_ppl", min(val))
    client.set_terminated(run_id, end_time=T0 + seconds * 1000)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two plain runs, and a sweep: a parent (no per-epoch metrics, as lyricist.tracking.sweep
    logs it) with one child."""
    tmp = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("lyricist-test", artifact_location=tmp.as_uri() + "/art")
    for name, spec in RUNS.items():
        log_run(client, exp, name, *spec)
    parent = client.create_run(exp, start_time=T0, run_name="sweep model=gru",
                               tags={"sweep": "parent"}).info.run_id
    client.log_metric(parent, "best/val_ppl", 9.0)  # a sweep parent has the best, no curve
    client.set_terminated(parent, end_time=T0 + 20_000)
    child = log_run(client, exp, *CHILD, tags={"mlflow.parentRunId": parent})
    return {"uri": uri, "parent": parent, "child": child}


def run_compare(store, tmp_path, *args):
    png, md = tmp_path / "out" / "compare.png", tmp_path / "out" / "compare.md"
    rc = main(["--tracking-uri", store["uri"], "--experiment", "lyricist-test",
               "--out-png", str(png), "--out-md", str(md), *args])
    return rc, png, md


def table_rows(md: Path) -> list[dict[str, str]]:
    lines = [line for line in md.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]  # cells[1] is the |---| rule
    return [dict(zip(header, row)) for row in body]


def test_plot_and_table_best_first(store, tmp_path):
    rc, png, md = run_compare(store, tmp_path, "--train")
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = plt.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
    assert image.std() > 0.01  # something was drawn, not a blank canvas

    rows = table_rows(md)
    # The sweep parent has no val/ppl curve, so it is not a row.
    assert [r["run name"] for r in rows] == ["gru-random", "lstm-random", "rnn-consecutive"]
    assert [float(r["best val/ppl"]) for r in rows] == [9.0, 12.0, 30.0]
    assert [r["epoch of best"] for r in rows] == ["1", "2", "1"]
    assert [r["final train/ppl"] for r in rows] == ["7.00", "8.00", "20.00"]
    assert [r["epochs"] for r in rows] == ["2", "4", "3"]
    assert [r["duration"] for r in rows] == ["0m12s", "1h02m05s", "1m05s"]
    assert [r["model.cell"] for r in rows] == ["gru", "lstm", "rnn"]
    assert [r["data.sampling"] for r in rows] == ["random", "random", "consecutive"]
    assert [r["model.hidden_size"] for r in rows] == ["256", "128", "64"]
    assert rows[0]["run id"] == store["child"][:8]


@pytest.mark.parametrize("killed_at", ["compare.png", "compare.md"])
def test_a_run_killed_while_writing_leaves_the_previous_file(store, tmp_path, monkeypatch, killed_at):
    rc, png, md = run_compare(store, tmp_path)
    assert rc == 0
    before = {p.name: p.read_bytes() for p in png.parent.iterdir()}
    assert set(before) == {"compare.png", "compare.md"}
    real_replace = os.replace

    def killed_before_the_rename(src, dst):
        if Path(dst).name == killed_at:
            raise KeyboardInterrupt  # the new file is complete but not in place yet
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        run_compare(store, tmp_path, "--max-runs", "1", "--train")  # another table and image
    after = {p.name: p.read_bytes() for p in png.parent.iterdir()}
    assert set(after) == set(before)  # no temporary file left
    assert after[killed_at] == before[killed_at]


def test_parent_run_id_selects_the_sweep_children(store, tmp_path):
    rc, _, md = run_compare(store, tmp_path, "--parent-run-id", store["parent"])
    assert rc == 0
    assert [r["run name"] for r in table_rows(md)] == ["gru-random"]


def test_filter_and_max_runs(store, tmp_path):
    rc, _, md = run_compare(store, tmp_path, "--filter", "params.model.cell = 'lstm'")
    assert rc == 0
    assert [r["run name"] for r in table_rows(md)] == ["lstm-random"]

    rc, _, md = run_compare(store, tmp_path, "--filter", "params.data.sampling = 'random'",
                            "--max-runs", "1")
    assert rc == 0
    assert [r["run name"] for r in table_rows(md)] == ["gru-random"]


def test_no_matching_runs_is_an_error(store, tmp_path, capsys):
    rc, png, _ = run_compare(store, tmp_path, "--filter", "params.model.cell = 'lstm'",
                             "--parent-run-id", store["parent"])
    assert rc == 2 and not png.exists()
    assert "no runs" in capsys.readouterr().err


def test_bad_filter_is_an_error(store, tmp_path, capsys):
    rc, _, _ = run_compare(store, tmp_path, "--filter", "params.model.cell ~ lstm")
    assert rc == 2
    assert "error" in capsys.readouterr().err


def test_unknown_experiment_lists_the_existing_ones(store, tmp_path, capsys):
    rc = main(["--tracking-uri", store["uri"], "--experiment", "nope",
               "--out-png", str(tmp_path / "c.png"), "--out-md", str(tmp_path / "c.md")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'nope'" in err and "'lyricist-test'" in err and "'Default'" in err


def test_missing_store_is_an_error_and_not_created(tmp_path, capsys):
    db = tmp_path / "absent" / "mlflow.db"
    rc = main(["--tracking-uri", f"sqlite:///{db}", "--out-png", str(tmp_path / "c.png"),
               "--out-md", str(tmp_path / "c.md")])
    assert rc == 2 and not db.exists()
    assert str(db) in capsys.readouterr().err


def test_a_file_that_is_not_a_store_is_an_error(tmp_path, capsys):
    junk = tmp_path / "mlflow.db"
    junk.write_text("not a database")
    rc = main(["--tracking-uri", f"sqlite:///{junk}", "--out-png", str(tmp_path / "c.png"),
               "--out-md", str(tmp_path / "c.md")])
    assert rc == 2 and "not a database" in capsys.readouterr().err
