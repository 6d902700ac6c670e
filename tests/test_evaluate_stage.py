"""The evaluate stage's outputs: reports/metrics.json keeps its keys (the `dvc metrics` and
`dvc exp show` columns), its summary reads the result's fields, and its files are written atomically; a checkpoint of
another vocabulary is refused."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config, encoded_of, params_file, stage, untrained_checkpoint
from lyricist.evaluation.metrics import (DynamicResult, EvaluationResult, InterpolationResult, LyricMetrics,
                                        LyricsResult, Perplexities)

ROOT = Path(__file__).resolve().parents[1]


def _lyrics(m: dict) -> LyricsResult | None:
    """The lyric metrics of reports/metrics.json (absent from files written before them)."""
    if "samples_copy_rate" not in m:
        return None
    fields = LyricMetrics.__dataclass_fields__
    return LyricsResult(LyricMetrics(*(m[f"samples_{f}"] for f in fields)),
                        LyricMetrics(*(m[f"human_test_{f}"] for f in fields)))


def _result(m: dict) -> EvaluationResult:
    """The record of reports/metrics.json's values, field by field."""
    return EvaluationResult(
        neural=Perplexities(m["val_ppl"], m["test_ppl"]), epoch=m["epoch"],
        interpolation=InterpolationResult(
            m["ngram_order"], m["interpolation_weight"], ngram=Perplexities(m["ngram_val_ppl"], m["ngram_test_ppl"]),
            interpolated=Perplexities(m["interpolated_val_ppl"], m["interpolated_test_ppl"])),
        dynamic=DynamicResult(
            m["dynamic_lr"], m["dynamic_interpolation_weight"],
            dynamic=Perplexities(m["dynamic_val_ppl"], m["dynamic_test_ppl"]),
            ngram_adaptive=Perplexities(m["ngram_adaptive_val_ppl"], m["ngram_adaptive_test_ppl"]),
            interpolated=Perplexities(m["dynamic_interpolated_val_ppl"], m["dynamic_interpolated_test_ppl"])),
        krause=DynamicResult(
            m["krause_lr"], m["krause_interpolation_weight"],
            dynamic=Perplexities(m["krause_val_ppl"], m["krause_test_ppl"]),
            ngram_adaptive=Perplexities(m["ngram_adaptive_val_ppl"], m["ngram_adaptive_test_ppl"]),
            interpolated=Perplexities(m["krause_interpolated_val_ppl"], m["krause_interpolated_test_ppl"]))
        if "krause_lr" in m else None,
        lyrics=_lyrics(m))


COMMITTED = json.loads((ROOT / "reports" / "metrics.json").read_text(encoding="utf-8"))
# A run's metrics, frozen here (the committed file changes with every re-run of the pipeline).
EXAMPLE = {"val_ppl": 234.12796313079832, "test_ppl": 258.0671039997056, "epoch": 13, "ngram_order": 5,
           "interpolation_weight": 0.4, "ngram_val_ppl": 175.854520196273, "interpolated_val_ppl": 153.39138947010161,
           "ngram_test_ppl": 197.86274144781783, "interpolated_test_ppl": 177.2029978665961, "dynamic_lr": 1.0,
           "dynamic_interpolation_weight": 0.2, "dynamic_val_ppl": 78.95557780714572,
           "ngram_adaptive_val_ppl": 27.934105567948453, "dynamic_interpolated_val_ppl": 26.197435193618603,
           "dynamic_test_ppl": 129.99138227265468, "ngram_adaptive_test_ppl": 38.67970491001393,
           "dynamic_interpolated_test_ppl": 36.93809705554057}


def test_metrics_json_is_the_committed_file_byte_for_byte():
    text = (ROOT / "reports" / "metrics.json").read_text(encoding="utf-8")
    result = _result(COMMITTED)
    cache = {k: v for k, v in COMMITTED.items() if k.startswith("cache_")}  # the neural cache row, last
    assert list(COMMITTED) == [*result.as_flat_dict(), *cache]
    # same keys, same order, same values, same layout
    assert result.to_json() == json.dumps(result.as_flat_dict(), indent=2) + "\n"
    assert json.dumps({**result.as_flat_dict(), **cache}, indent=2) + "\n" == text


def test_without_a_test_split_there_are_no_test_keys():
    val_only = EvaluationResult(
        Perplexities(1.5), 3, InterpolationResult(2, 0.5, Perplexities(2.5), Perplexities(1.25)))
    assert list(val_only.as_flat_dict()) == ["val_ppl", "epoch", "ngram_order", "interpolation_weight",
                                             "ngram_val_ppl", "interpolated_val_ppl"]


LYRICS = {"samples_copy_rate": 0.0, "samples_repeated_lines": 0.0, "samples_distinct_1": 0.6,
          "samples_distinct_2": 0.947, "samples_line_length_mean": 7.05, "samples_line_length_std": 3.19,
          "human_test_copy_rate": 0.0, "human_test_repeated_lines": 0.033, "human_test_distinct_1": 0.552,
          "human_test_distinct_2": 0.873, "human_test_line_length_mean": 13.23, "human_test_line_length_std": 4.44}


def test_the_lyric_metrics_come_after_the_existing_keys(tmp_path, monkeypatch, capsys):
    with_lyrics = {**EXAMPLE, **LYRICS}
    assert list(_result(with_lyrics).as_flat_dict()) == list(with_lyrics)  # the old keys first, unchanged
    _stage(monkeypatch, _result(with_lyrics)).main(_args(tmp_path))
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == with_lyrics
    printed = capsys.readouterr().out
    assert "  samples           0.000           0.000       0.600       0.947    7.0 ± 3.2\n" in printed
    assert "  human test        0.000           0.033       0.552       0.873   13.2 ± 4.4\n" in printed


def _stage(monkeypatch, result: EvaluationResult):
    """pipelines/evaluate.py, its evaluate_checkpoint answering `result` at once."""
    spec = importlib.util.spec_from_file_location("evaluate_stage", ROOT / "pipelines" / "evaluate.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr(stage, "evaluate_checkpoint", lambda *args, **kwargs: (result, f"# {result.epoch}\n"))
    return stage


def _args(tmp_path: Path) -> list[str]:
    params = tmp_path / "params.yaml"
    OmegaConf.save(compose_config(["logger=none", "evaluate.cache_size=null", "train.eval_batch_size=2", "data.num_steps=8", "data.prefixes=[a]",
                                   "baseline.max_order=3", "evaluate.dynamic_lrs=[1.0]", "evaluate.krause_lrs=[0.002]"]),
                   params, resolve=True)
    return ["--checkpoint", "unused.ckpt", "--data-dir", str(tmp_path), "--params", str(params),
            "--metrics", str(tmp_path / "reports" / "metrics.json"),
            "--samples", str(tmp_path / "reports" / "samples.md")]


def test_the_summary_is_read_from_the_fields(tmp_path, monkeypatch, capsys):
    _stage(monkeypatch, _result(EXAMPLE)).main(_args(tmp_path))
    printed = capsys.readouterr().out
    for line in ["evaluate (checkpoint of epoch 13, ", "  neural        val    234.13  test    258.07",
                 "  kn5           val    175.85  test    197.86",
                 "  interpolated  val    153.39  test    177.20",
                 "  dynamic       val     78.96  test    129.99",
                 "  kn5 adaptive  val     27.93  test     38.68",
                 "  dynamic+kn    val     26.20  test     36.94",
                 "  (interpolated: 0.4 x neural + 0.6 x kn5, ", "one SGD step at lr 1 after each segment",
                 "mixed 0.2 x dynamic"]:
        assert line in printed
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text()) == EXAMPLE

    _stage(monkeypatch, EvaluationResult(Perplexities(5.0), 1)).main(_args(tmp_path))
    printed = capsys.readouterr().out
    assert "  neural        val      5.00\n" in printed and "kn" not in printed


def test_a_run_killed_while_writing_leaves_the_previous_reports(tmp_path, monkeypatch):
    _stage(monkeypatch, _result(COMMITTED)).main(_args(tmp_path))
    reports = tmp_path / "reports"
    before = {p.name: p.read_text() for p in reports.iterdir()}
    assert set(before) == {"metrics.json", "samples.md"}

    def killed_before_the_rename(src, dst):
        raise KeyboardInterrupt  # the new file is complete but not in place yet

    monkeypatch.setattr(os, "replace", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        _stage(monkeypatch, EvaluationResult(Perplexities(5.0), 1)).main(_args(tmp_path))
    assert {p.name: p.read_text() for p in reports.iterdir()} == before  # and no temporary file left


def test_the_results_go_into_the_run_that_trained_the_checkpoint(tiny_cfg, tiny_data, tmp_path, capsys):
    import mlflow
    from mlflow.tracking import MlflowClient

    from conftest import evaluate_stage, with_data
    from conftest import train

    cfg = with_data(tiny_cfg, tiny_data)
    cfg.evaluate.dynamic_lrs, cfg.evaluate.krause_lrs, cfg.baseline.max_order = [1.0], [], 3
    train(cfg, output_dir=tmp_path / "run")
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    metrics = evaluate_stage(tmp_path, cfg, checkpoint)
    client = MlflowClient(cfg.logger.tracking_uri)
    experiment = client.get_experiment_by_name("lyricist").experiment_id
    [run] = client.search_runs([experiment])
    logged = run.data.metrics
    assert logged["test/ppl"] == pytest.approx(metrics["test_ppl"])
    assert logged["kn/test_ppl"] == pytest.approx(metrics["ngram_test_ppl"]) and logged["kn/order"] <= 3
    assert logged["mixed/test_ppl"] == pytest.approx(metrics["interpolated_test_ppl"])
    assert logged["dynamic/test_ppl"] == pytest.approx(metrics["dynamic_test_ppl"])
    assert logged["ratio/network_to_kn_val"] == pytest.approx(metrics["val_ppl"] / metrics["ngram_val_ppl"])
    assert logged["human_test/distinct_1"] == pytest.approx(metrics["human_test_distinct_1"])
    assert not [k for k in logged if k.startswith("evaluate/")]  # every key has its name
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")} == {
        "evaluation/metrics.json", "evaluation/samples.md"}
    assert f"results logged to MLflow run {run.info.run_id}" in capsys.readouterr().out
    # The logged model carries them: search_logged_models ranks by test perplexity.
    [model] = mlflow.search_logged_models(experiment_ids=[experiment], output_format="list",
                                          order_by=[{"field_name": "metrics.test/ppl", "ascending": True}])
    assert {m.key: m.value for m in model.metrics}["test/ppl"] == pytest.approx(metrics["test_ppl"])

    # Again on the same checkpoint: the same run, one value at the checkpoint's epoch per evaluation.
    evaluate_stage(tmp_path, cfg, checkpoint)
    [again] = client.search_runs([experiment])
    assert again.info.run_id == run.info.run_id
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test/ppl")] == [metrics["epoch"]] * 2

    # Tracking off: the files still, nothing logged.
    cfg.logger.enabled = False
    (tmp_path / "reports" / "metrics.json").unlink()
    evaluate_stage(tmp_path, cfg, checkpoint)
    assert (tmp_path / "reports" / "metrics.json").is_file()
    assert len(client.get_metric_history(run.info.run_id, "test/ppl")) == 2

    # A store that is not there (the checkpoint pulled without mlflow.db): one line, no empty store made.
    cfg.logger.enabled, cfg.logger.tracking_uri = True, f"sqlite:///{tmp_path / 'elsewhere.db'}"
    capsys.readouterr()
    evaluate_stage(tmp_path, cfg, checkpoint)
    assert f"results not logged to MLflow run {run.info.run_id} in sqlite:///" in capsys.readouterr().out
    assert not (tmp_path / "elsewhere.db").exists()


def test_evaluate_refuses_a_checkpoint_of_another_vocabulary_naming_both(tmp_path):
    ckpt = untrained_checkpoint(tmp_path / "a.ckpt", "abcdefgh" * 20)
    data = encoded_of(tmp_path / "encoded", "abcdefgx" * 20)  # one letter differs: same size, other ids
    metrics = tmp_path / "metrics.json"
    with pytest.raises(ValueError, match=r"checkpoint .*a.ckpt was trained with another vocabulary than "
                                         r".*encoded/vocab.json \(9 char tokens against 9 char tokens; id 8 is 'h' "
                                         r"in the first, 'x' in the second\)"):
        stage("evaluate").main(["--checkpoint", str(ckpt), "--data-dir", str(data), "--metrics", str(metrics),
                                "--samples", str(tmp_path / "samples.md"), "--params", str(params_file(tmp_path))])
    assert not metrics.exists()
