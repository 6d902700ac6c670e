"""The package's layers (README, Layout): imports point only down, and the hand-written cells
stay hand-written. Read from the source with `ast`, every import counted, those inside
functions too."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src" / "lyricist"
# Lowest first. A module may import its own package and the layers below its own; two
# packages of one layer stay apart (evaluation and tracking know nothing of each other).
LAYERS = [
    ["lyricist.project", "lyricist.data", "lyricist.models.fast", "lyricist.errors", "lyricist.rundir"],
    ["lyricist.settings"],      # the typed settings every layer above takes
    ["lyricist.models"],
    ["lyricist.checkpoint"],
    ["lyricist.generate"],      # its CLI loads a checkpoint
    ["lyricist.evaluation", "lyricist.tracking"],
    ["lyricist.training"],
    ["lyricist.train"],
    ["lyricist.seeds", "lyricist.tune"],  # train and evaluate over seeds; search over settings
]


# The one upward import: lyricist-generate's `--model models:/...` loads from the registry, inside
# its CLI function (the library function generate() stays below tracking).
ENTRY_POINTS_UP = {("lyricist.generate", "lyricist.tracking.serving")}


def unit_of(module: str) -> tuple[int, str]:
    """(layer, unit) of a dotted module name: the longest unit of LAYERS that contains it."""
    matches = [(len(unit), rank, unit) for rank, units in enumerate(LAYERS) for unit in units
               if module == unit or module.startswith(unit + ".")]
    assert matches, f"{module} belongs to no layer: add it to LAYERS (and the README's Layout)"
    _, rank, unit = max(matches)
    return rank, unit


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def lyricist_imports(path: Path) -> set[str]:
    """Every `lyricist...` module the file imports (`from lyricist.x import y` counts as
    lyricist.x.y when that is a module, else lyricist.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "lyricist"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lyricist":
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = any((SRC.parent / candidate.replace(".", "/")).with_suffix(s).exists()
                                for s in (".py", ""))
                found.add(candidate if is_module else node.module)
    return found


SOURCES = sorted(p for p in SRC.rglob("*.py") if p != SRC / "__init__.py")  # the package itself is empty


def test_every_module_belongs_to_a_layer():
    assert len(SOURCES) > 20
    for path in SOURCES:
        unit_of(module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_only_down(path):
    me = module_name(path)
    my_rank, my_unit = unit_of(me)
    for imported in lyricist_imports(path):
        if imported == "lyricist":  # `import lyricist` for its location (serving's code_paths)
            continue
        if (me, imported) in ENTRY_POINTS_UP:
            continue
        rank, unit = unit_of(imported)
        assert rank < my_rank or unit == my_unit, (
            f"{me} (layer {my_rank}, {my_unit}) imports {imported} (layer {rank}, {unit}): "
            "imports may only point down a layer, or stay inside their own package")


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check above can fail: a data module importing the models is caught."""
    assert unit_of("lyricist.data.vocab") == (0, "lyricist.data")
    assert unit_of("lyricist.models.fast.fused") == (0, "lyricist.models.fast")
    assert unit_of("lyricist.models.cells") == (2, "lyricist.models")
    assert unit_of("lyricist.train") == (len(LAYERS) - 2, "lyricist.train")
    assert unit_of("lyricist.training.module") == (len(LAYERS) - 3, "lyricist.training")
    rank_data, _ = unit_of("lyricist.data.batching")
    rank_models, _ = unit_of("lyricist.models.lm")
    assert rank_models > rank_data
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lyricist.models.lm import RecurrentLM\n")
    assert lyricist_imports(bad) == {"lyricist.models.lm"}


def test_nothing_imports_the_stage_scripts():
    for path in SOURCES + sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "pipelines" for n in names), path


BUILTIN_RECURRENT = {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "RNNBase"}


def builtin_recurrent_uses(source: str) -> list[int]:
    """Lines of code (not docstrings) that use torch.nn's recurrent modules or torch's _VF kernels."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (node.attr in BUILTIN_RECURRENT or
                                                (isinstance(node.value, ast.Name) and node.value.id == "_VF")):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
            if any(a.name in BUILTIN_RECURRENT or a.name == "_VF" for a in node.names):
                lines.append(node.lineno)
    return lines


def test_the_cells_are_hand_written():
    """torch.nn's recurrent modules are the tests' oracles, never the library's code."""
    assert builtin_recurrent_uses("import torch\ncell = torch.nn.LSTMCell(3, 4)\n") == [2]
    assert builtin_recurrent_uses("from torch.nn import GRU\n") == [1]
    assert builtin_recurrent_uses('"""like torch.nn.LSTM"""\nclass LSTMCell: pass\n') == []
    for path in SOURCES:
        assert builtin_recurrent_uses(path.read_text(encoding="utf-8")) == [], path


def test_the_models_import_no_circle():
    """models/ and its fast path: imports point one way (fast/choice.py once imported matmul.py
    back); from no module do its imports, followed, lead back to it."""
    graph = {module_name(p): lyricist_imports(p) for p in SOURCES if module_name(p).startswith("lyricist.models")}
    for module in graph:
        seen, todo = set(), [module]
        while todo:
            new = graph.get(todo.pop(), set()) - seen
            seen |= new
            todo += new
        assert module not in seen, f"{module} imports itself back through {sorted(seen & set(graph))}"
