"""The trained model as an MLflow pyfunc model: predict, serve (refusing what it does not understand),
its pinned requirements, register the best of a sweep; the champion moves only on the same data."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from conftest import ROOT, TINY, empty_store, free_port, gen, make_lm, project_env, serving, train, with_data, write_encoded
from lyricist.settings import Decoding
from lyricist.models.fast import kernels
from lyricist.tracking.serving import RequestError, request_options


@pytest.fixture
def trained_run(tiny_cfg, tiny_data, tmp_path):
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    return tiny_cfg.logger.tracking_uri, run.info.run_id


def test_pyfunc_model_turns_prefixes_into_lyrics(trained_run, monkeypatch):
    uri, run_id = trained_run
    mlflow.set_tracking_uri(uri)
    # Models from code: a file and plain artifacts, loaded with MLflow's pickle loading refused.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    flavor = model.metadata.flavors["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor  # no pickle file
    assert {Path(a.path).name for a in MlflowClient(uri).list_artifacts(run_id, "model/artifacts")} == {
        "model_arguments.json", "vocab.json", "weights.npz", "decoding.json"}
    assert [c.name for c in model.metadata.get_input_schema().inputs][0] == "prefix"
    table = pd.DataFrame({"prefix": ["分开", "不分开", "分开", "分开"], "num_chars": [5, 8, 6, 6],
                          "strategy": ["greedy", "greedy", "sample", "sample"],
                          "temperature": [1.0, 1.0, 0.7, 0.7], "top_k": [0, 0, 5, 5], "seed": [0, 0, 3, 3]})
    lyrics = model.predict(table)["lyrics"].tolist()
    assert lyrics[0].startswith("分开") and lyrics[1].startswith("不分开")
    assert lyrics[2] == lyrics[3] and lyrics[2].startswith("分开")  # same seed, same sample
    only_prefix = model.predict(pd.DataFrame({"prefix": ["战争中部队"]}))["lyrics"][0]
    assert only_prefix.startswith("战争中部队") and len(only_prefix) > len("战争中部队")


def test_the_champion_alias_moves_only_to_a_better_model_on_the_same_data(trained_run, monkeypatch, capsys):
    from lyricist.cli import generate
    from lyricist.tracking import registry

    uri, run_id = trained_run
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("lyricist", "champion")  # the first version: champion
    assert champion.run_id == run_id and champion.tags["data_md5"] == client.get_run(run_id).data.tags["data_md5"]
    first_ppl = float(champion.tags["val_ppl"])
    assert first_ppl == pytest.approx(client.get_run(run_id).data.metrics["best/val_ppl"])
    model = client.get_logged_model(client.get_run(run_id).outputs.model_outputs[0].model_id)

    def register(ppl: float) -> int:
        return registry.register(uri, "lyricist", model.model_uri, model.model_id, run_id, ppl)

    worse, better = register(first_ppl + 1), register(first_ppl - 1)
    assert client.get_model_version_by_alias("lyricist", "champion").version == better != worse
    client.set_tag(run_id, "data_md5", "another-corpus")  # a better number on other data does not compare
    other = register(first_ppl - 5)
    assert client.get_model_version_by_alias("lyricist", "champion").version == better
    assert f"registered lyricist version {other}: champion stays (version {better} was trained on other data" in (
        capsys.readouterr().out)

    # The registry's model generates from the command line.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert generate.main(["--model", "models:/lyricist@champion", "--prefix", "分开", "--num-chars", "5"]) == 0
    assert capsys.readouterr().out.startswith("分开")
    assert generate.main(["--model", "models:/lyricist@nobody", "--prefix", "分开"]) == 2
    assert "cannot load the MLflow model models:/lyricist@nobody" in capsys.readouterr().err


@pytest.mark.parametrize("records, message", [
    ([{"prefix": None}], 'row 0: prefix: null is not allowed: use a non-empty string, e.g. "分开"'),
    ([{"prefix": ""}], "row 0: prefix: '' is not allowed: use a non-empty string"),
    ([{"prefix": "分开"}, {"prefix": 3}], "row 1: prefix: 3 is not allowed"),
    ([{"prefix": "分开", "num_chars": 10**7}], "row 0: num_chars=10000000 is not allowed: use a value <= 1000000"),
    ([{"prefix": "分开", "num_chars": 600}], "row 0: num_chars=600 is not allowed: use at most 500"),
    ([{"prefix": "分开", "num_chars": 0}], "num_chars=0 is not allowed: use a value >= 1"),
    ([{"prefix": "分开", "temperature": float("nan")}], "row 0: temperature: null is not allowed: leave the field out"),
    ([{"prefix": "分开", "temperature": float("inf")}], "temperature=inf is not allowed: use a finite number"),
    ([{"prefix": "分开", "strategy": "beam"}], "strategy='beam' is not allowed: use 'greedy' or 'sample'"),
    ([{"prefix": "分开", "top_k": -1}], "top_k=-1 is not allowed: use a value >= 1"),
    ([{"prefix": "分开", "top_p": 1.5}], "top_p=1.5 is not allowed: use a value <= 1"),
    ([{"prefix": "分开", "repetition_penalty": 0.5}], "repetition_penalty=0.5 is not allowed: use a value >= 1"),
])
def test_a_bad_request_field_is_refused_by_name(records, message):
    with pytest.raises(RequestError) as err:
        request_options(pd.DataFrame(records), max_num_chars=500, base=Decoding())
    assert message in err.value.message
    assert err.value.get_http_status_code() == 400


def test_a_value_some_rows_leave_out_takes_the_models_own():
    base = Decoding(strategy="sample", temperature=0.85, top_p=0.95, num_chars=50)
    rows = request_options(pd.DataFrame([{"prefix": "分开", "temperature": 0.5, "top_k": 0, "top_p": 1.0},
                                         {"prefix": "不分开"}]), 500, base)
    assert [r.temperature for _, r in rows] == [0.5, 0.85]
    assert rows[0][1].top_k is None and rows[0][1].top_p is None  # the signature's "no cut" values
    assert rows[1][1] == base and [prefix for prefix, _ in rows] == ["分开", "不分开"]


def test_the_served_model_caps_num_chars_as_configured(tiny_cfg, tiny_data, tmp_path):
    tiny_cfg.logger.serve_max_num_chars = 20
    train(with_data(tiny_cfg, tiny_data), output_dir=tmp_path / "run")
    client = MlflowClient(tiny_cfg.logger.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id])
    mlflow.set_tracking_uri(tiny_cfg.logger.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    lyrics = model.predict(pd.DataFrame({"prefix": ["分开"], "num_chars": [20]}))["lyrics"][0]
    assert len(lyrics.replace("<unk>", "?")) == 22  # the prefix and 20 tokens, <unk> one of them
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"num_chars=21 is not allowed: use at most 20"):
        model.predict(pd.DataFrame({"prefix": ["分开"], "num_chars": [21]}))


def _builds() -> int:
    log = kernels.cache_dir() / kernels.BUILD_LOG
    return len(log.read_text().splitlines()) if log.is_file() else 0


@pytest.mark.slow
def test_served_model_answers_a_request(trained_run, tmp_path):
    """The registry's champion (the run's model, the first version), served from the SQLite store."""
    uri, run_id = trained_run
    assert kernels.step_kernels() is not None or not kernels.switch.on
    builds_before = _builds()
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
               "models:/lyricist@champion", "-p", str(port), "--host", "127.0.0.1", "--env-manager", "local"]
    with serving(command, f"http://127.0.0.1:{port}/ping", cwd=tmp_path,
                 env=dict(os.environ, MLFLOW_TRACKING_URI=uri,  # mlflow starts the venv's uvicorn
                           PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")):
        reply = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                              json={"dataframe_records": [{"prefix": "分开", "num_chars": 10}]})
        refused = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                                json={"dataframe_records": [{"prefix": None, "num_chars": 10}]})
        too_long = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                                 json={"dataframe_records": [{"prefix": "分开", "num_chars": 10**7}]})
        # Issue 33: a misspelt field and a character the vocabulary lacks, refused by name (were 200).
        misspelt = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                                 json={"dataframe_records": [{"prefix": "分开", "temprature": 0.01}]})
        unknown_char = requests.post(f"http://127.0.0.1:{port}/invocations", timeout=60,
                                     json={"dataframe_records": [{"prefix": "分开λ"}]})
    assert refused.status_code == 400 and "prefix: null is not allowed" in refused.json()["message"]
    assert too_long.status_code == 400 and "num_chars=10000000 is not allowed" in too_long.json()["message"]
    assert misspelt.status_code == 400 and ("unknown request field temprature (did you mean temperature?): a row "
                                            "takes prefix, ") in misspelt.json()["message"]
    assert unknown_char.status_code == 400 and "characters not in the vocabulary: 'λ'" in unknown_char.json()["message"]
    assert reply.status_code == 200, reply.text
    [prediction] = reply.json()["predictions"]
    assert prediction["lyrics"].startswith("分开")
    # The model's code/ copy of lyricist found the compiled LSTM step built at install.
    assert _builds() == builds_before, "serving the model rebuilt the compiled LSTM step"


@pytest.mark.slow
def test_sweep_registers_its_best_model_under_an_alias(tiny_data, tmp_path, _empty_store):
    uri = empty_store(_empty_store, tmp_path / "mlflow.db")
    proc = subprocess.run(
        [sys.executable, "-m", "lyricist.train", "-m", *TINY, "trainer.max_epochs=1",
         f"paths.encoded={tiny_data}", f"logger.tracking_uri={uri}",
         "logger.registered_model_name=lyricist-tiny", f"hydra.sweep.dir={tmp_path / 'multirun'}",
         "model=rnn,gru"], capture_output=True, text=True, cwd=tmp_path, env=project_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("lyricist-tiny", "best")
    [parent] = client.search_runs([client.get_experiment_by_name("lyricist").experiment_id],
                                  filter_string="tags.sweep = 'parent'")
    assert version.run_id == parent.data.tags["best_child_run_id"]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/lyricist-tiny@best")
    assert model.predict(pd.DataFrame({"prefix": ["分开"]}))["lyrics"][0].startswith("分开")


def test_a_request_running_past_its_time_limit_is_stopped_with_429():
    """The worker stops generating at the limit instead of running on for a client that has gone."""
    import time

    from lyricist.checkpoint import LoadedModel
    from lyricist.data.vocab import Vocab
    from lyricist.decoding import generate
    from lyricist.models import RecurrentLM
    from lyricist.tracking.serving import LyricsModel

    vocab = Vocab.build("分开不分开我不能再想")
    model = make_lm(len(vocab), cell="lstm", hidden_size=8, embedding_size=4).eval()
    with pytest.raises(TimeoutError, match="after 0 of 5 tokens"):
        gen(model, vocab, "分开", 5, deadline=time.monotonic() - 1)
    served = LyricsModel()
    served.loaded, served.max_num_chars = LoadedModel(model, vocab), 100
    served.max_seconds = 30.0
    assert served.predict(None, pd.DataFrame({"prefix": ["分开"], "num_chars": [5]}))["lyrics"][0].startswith("分开")
    served.max_seconds = 1e-9
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"time limit of 1e-09 s .*logger.serve_max_seconds") as err:
        served.predict(None, pd.DataFrame({"prefix": ["分开"], "num_chars": [100]}))
    assert err.value.get_http_status_code() == 429


def test_torch_is_pinned_once_and_the_served_model_carries_the_pins():
    """pyproject.toml pins the stack; the Makefile and the MLflow model take it from there."""
    import re

    from lyricist.tracking.serving import pinned_requirements

    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    [torch_pin] = re.findall(r'"(torch==[\d.]+)"', pyproject)
    assert "torch==" not in (ROOT / "Makefile").read_text(encoding="utf-8")
    assert not [p for p in (ROOT / "src").rglob("*.py") if "torch==" in p.read_text(encoding="utf-8")]
    requirements = pinned_requirements()
    assert requirements[0] == torch_pin and all("==" in r for r in requirements)
    assert {r.split("==")[0] for r in requirements} == {"torch", "numpy", "pandas", "pytorch-lightning"}


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
