"""dvc.yaml, read as DVC reads it: every stage depends on all the code it runs, reads its paths
from the `paths:` block, and the `vocab` stage lists every key the prepared-with record holds."""

import re
import subprocess
import sys

import yaml

from conftest import ROOT, compose_config
from lyricist.data.prepared import PREPARATION_KEYS

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
STAGES = DVC["stages"]


def _script(stage: dict) -> str:
    [script] = re.findall(r"\bpipelines/\w+\.py\b", stage["cmd"])
    return script


def test_every_stage_depends_on_its_script_and_the_whole_library():
    """A stage script may import any module of src/lyricist (and they import each other), so
    each stage depends on the package as a whole: a change in corpus.py re-runs training too."""
    assert set(STAGES) == {"unzip", "preprocess", "vocab", "baseline", "check", "train", "evaluate"}
    for name, stage in STAGES.items():
        assert _script(stage) in stage["deps"], name
        assert "src/lyricist" in stage["deps"], name
        assert not [d for d in stage["deps"] if str(d).startswith("src/lyricist/")], (
            f"{name}: list src/lyricist as a whole, not module by module")


def test_bytecode_caches_do_not_change_the_library_dependency():
    caches = ["src/lyricist/__pycache__/train.cpython-311.pyc",
              "src/lyricist/data/__pycache__/vocab.cpython-311.pyc"]
    ignored = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", *caches, "src/lyricist/train.py"],
                             cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == caches


def test_stage_paths_come_from_the_paths_block():
    """No data or output path is written out in dvc.yaml: they are ${paths.*} (or the raw
    corpus, ${data.raw_path}), so conf/config.yaml holds each once."""
    paths = compose_config().paths
    for name, stage in STAGES.items():
        entries = [*stage.get("deps", []), *stage.get("outs", []), *stage.get("metrics", []),
                   *stage.get("plots", [])]
        for entry in entries:
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            assert path.startswith(("${paths.", "${data.raw_path}", "pipelines/", "src/lyricist")), (
                f"{name}: {path} is written out; use a key of the paths: block")
            key = re.match(r"\$\{paths\.(\w+)\}", path)
            assert key is None or key.group(1) in paths, f"{name}: no paths.{key.group(1)}"
        for written in re.findall(r"\bdata/(?:interim|processed|encoded)\b|\bmodels/|\breports/",
                                  stage["cmd"]):
            raise AssertionError(f"{name}: the command writes out {written}; use ${{paths.*}}")


def test_vocab_stage_lists_every_key_of_the_prepared_with_record():
    params = set(STAGES["vocab"]["params"])
    assert {f"data.{key}" for key in (*PREPARATION_KEYS, "tokenizer", "max_vocab_size")} <= params


def test_the_evaluate_stage_reuses_the_baseline_stages_model():
    assert STAGES["baseline"]["outs"] == ["${paths.ngram}"]
    assert "${paths.ngram}" in STAGES["evaluate"]["deps"]
    assert "--ngram ${paths.ngram}" in STAGES["evaluate"]["cmd"]


def test_the_evaluate_stage_lists_exactly_the_params_it_reads():
    """evaluation_settings reads the stage's params and nothing else (dvc.yaml's evaluate: params)."""
    from pydantic import BaseModel

    from lyricist.cli.config import settings_of
    from lyricist.evaluation.perplexity import evaluation_settings

    seen = set()

    class Reads:  # records the settings read through it: a section handed on whole counts whole
        def __init__(self, obj, path=""):
            self.obj, self.path = obj, path

        def __getattr__(self, name):
            value, path = getattr(self.obj, name), f"{self.path}.{name}".lstrip(".")
            if isinstance(value, BaseModel):
                return Reads(value, path)
            seen.add(path)
            return value

    for value in evaluation_settings(Reads(settings_of(ROOT / "params.yaml"))).values():
        if isinstance(value, Reads):
            seen.add(value.path)
    assert seen == {key for key in STAGES["evaluate"]["params"] if isinstance(key, str)}


def test_the_check_stage_reads_the_train_stages_params_and_runs_before_it():
    assert STAGES["check"]["params"] == STAGES["train"]["params"]
    [record] = [next(iter(out)) for out in STAGES["check"]["outs"]]
    assert record in STAGES["train"]["deps"]
