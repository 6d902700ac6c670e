"""dvc.yaml, read as DVC reads it: every stage depends on exactly the code it runs, reads its paths
from the `paths:` block, and the `vocab` stage lists every key the prepared-with record holds."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import yaml

from conftest import ROOT, compose_config
from lyricist.data.prepared import PREPARATION_KEYS

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
STAGES = DVC["stages"]
SRC = ROOT / "src"


def _script(stage: dict) -> str:
    [script] = re.findall(r"\bpipelines/\w+\.py\b", stage["cmd"])
    return script


def _module_file(name: str) -> Path | None:
    base = SRC / name.replace(".", "/")
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """The lyricist modules a file imports, those inside functions too (read with ast)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lyricist"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lyricist":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if _module_file(f"{node.module}.{a.name}")}
    return found


def import_closure(script: Path) -> set[Path]:
    """Every file of src/lyricist the script runs: its imports, theirs, each package's
    __init__.py on the way, every module of a package that imports them all by name (pkgutil:
    models/regularisers), and the C++ sources of the compiled steps (built at run time)."""
    seen: set[Path] = set()
    todo = list(_imports(script))
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:i]))
            if path and path not in seen:
                seen.add(path)
                todo += _imports(path)
                if path.name == "__init__.py" and "iter_modules(__path__)" in path.read_text(encoding="utf-8"):
                    todo += [f"{'.'.join(parts[:i])}.{module.stem}" for module in path.parent.glob("*.py")]
                if path.name == "kernels.py":
                    seen |= set(path.parent.glob("csrc/*"))
    return seen


def covered(deps: list) -> set[Path]:
    """The source files a stage's deps name: a file, or every file under a folder."""
    files = set()
    for dep in deps:
        path = ROOT / str(dep)
        if str(dep).startswith("src/") and path.is_dir():
            files |= {p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
        elif str(dep).startswith("src/"):
            files.add(path)
    return files


def smallest_cover(files: set[Path]) -> list[str]:
    """The deps to write for `files`: a folder where all of it is needed, else its files."""
    def whole(folder: Path) -> bool:
        return all(p in files for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)

    out = []
    for path in sorted(files):
        folder = path.parent
        while folder != SRC and whole(folder.parent) and folder.parent != SRC:
            folder = folder.parent
        entry = folder if folder != SRC and whole(folder) else path
        rel = str(entry.relative_to(ROOT))
        if rel not in out:
            out.append(rel)
    return out


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_depends_on_exactly_the_code_it_runs(name):
    """DVC's example-get-started: a stage depends on its script and the modules it imports, so
    an edit of the model's code re-runs check, train and evaluate, never the data stages."""
    stage = STAGES[name]
    script = ROOT / _script(stage)
    assert _script(stage) in stage["deps"], name
    wanted = import_closure(script)
    assert covered(stage["deps"]) == wanted, (
        f"{name}: dvc.yaml's src deps should be exactly {smallest_cover(wanted)}")


def test_the_model_code_reruns_no_data_stage():
    cells = SRC / "lyricist" / "models" / "cells.py"
    rerun = {name for name, stage in STAGES.items() if cells in covered(stage["deps"])}
    assert rerun == {"check", "train", "evaluate"} or rerun == {"train", "evaluate"}, rerun


def test_the_closure_follows_imports_inside_functions(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("def main():\n    from lyricist.data import corpus\n")
    found = {str(p.relative_to(SRC)) for p in import_closure(script)}
    assert {"lyricist/__init__.py", "lyricist/data/__init__.py", "lyricist/data/corpus.py"} <= found
    assert not any(f.startswith("lyricist/models") for f in found)


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
            assert path.startswith(("${paths.", "${data.raw_path}", "pipelines/", "src/lyricist/")), (
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
    from lyricist.evaluation.evaluate import evaluation_settings

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
