"""What one training run holds in MLflow besides its curves: the corpus as a dataset input, the
machine's system metrics, an experiment that opens on its runs; and a quiet output. A store that
cannot be used is one line before training; a locked SQLite store is retried."""

import json
import logging
import time
import warnings

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import SlowEpochs, train, with_data
from lyricist.tracking.store import EXPERIMENT_TAGS
from lyricist.tracking import store


def test_a_run_holds_its_corpus_and_system_metrics_and_prints_no_noise(tiny_cfg, tiny_data, tmp_path,
                                                                       monkeypatch, capfd, caplog):
    caplog.set_level(logging.INFO)  # Lightning's lines are log records: under pytest, caught here
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # MLflow's 10 s outlasts a tiny run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Each epoch held 1.5 s: the sampler (every second here) gets its samples however fast the machine.
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run", callbacks=[SlowEpochs(1.5)])
    printed = "".join(capfd.readouterr()) + caplog.text
    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name("lyricist")
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_TAGS["mlflow.experimentKind"]
    [run] = client.search_runs([experiment.experiment_id])

    [used] = run.inputs.dataset_inputs
    assert used.dataset.name == "jaychou" and used.dataset.digest == run.data.tags["data_md5"]
    assert json.loads(used.dataset.source)["uri"].endswith("data/raw/jaychou_lyrics.txt.zip")
    sizes = {split: len(np.load(tiny_data / f"{split}.npy")) for split in ("train", "val", "test")}
    assert json.loads(used.dataset.profile) == {**{f"{s}_tokens": n for s, n in sizes.items()},
                                                "vocab_size": len(json.loads((tiny_data / "vocab.json").read_text())["itos"]),
                                                "tokenizer": "char"}
    assert {t.key: t.value for t in used.tags} == {"mlflow.data.context": "training"}

    assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0

    assert printed.count("GPU available") == 1 and "litlogger" not in printed
    noise = ("LeafSpec", "IterableDataset", "CloudPickle", "cloudpickle")
    assert not [str(w.message) for w in caught if any(n in str(w.message) for n in noise)]
    assert not [line for line in printed.splitlines() if any(n in line for n in noise)]


def test_system_metrics_can_be_turned_off(tiny_cfg, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    tiny_cfg.logger.system_metrics = False
    tiny_cfg.logger.log_model = False  # and with no model, nothing registered
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    assert not [k for k in run.data.metrics if k.startswith("system/")]
    assert client.search_registered_models() == []


@pytest.mark.parametrize("uri", ["bogus://x", "sqlite:///{tmp}/notes.txt", "{tmp}/mlruns"])
def test_an_unusable_tracking_uri_is_one_line_with_the_fix(uri, tmp_path):
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    uri = uri.format(tmp=tmp_path)
    with pytest.raises(store.TrackingError, match=r"cannot use the MLflow tracking store .*sqlite:///<absolute "
                                                  r"path>/mlflow.db.*logger=none") as err:
        store.ensure_experiment(uri, "lyricist")
    assert "\n" not in str(err.value)


def test_unreachable_tracking_server_fails_before_training(tiny_cfg, tiny_data, tmp_path):
    tiny_cfg.logger.tracking_uri = "http://127.0.0.1:9"  # nothing listens on the discard port
    started = time.time()
    with pytest.raises(RuntimeError, match="cannot reach the MLflow tracking server"):
        train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    assert time.time() - started < 30
    assert not (tmp_path / "run").exists(), "nothing may be written before tracking works"


def test_locked_sqlite_is_retried_and_other_errors_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert store.with_retry(flaky, delay=0.01) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        store.with_retry(lambda: (_ for _ in ()).throw(ValueError("other")), delay=0.01)
