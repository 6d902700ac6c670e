"""Which library runs matmul.py's products on this machine (``Backend``): measured, not read off the
CPU's vendor (the winner depends on the CPU, the torch build and the threads, and a private op can
vanish in any torch release); kept in ``cache_file()``, each loop shape measured at its first use.
How and why: docs/speed.md (the products' backend). ``LYRICIST_PRODUCTS=public``: torch's products only.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lyricist.models.fast import kernels


class Backend(NamedTuple):
    dense: str  # "torch" or "onednn"
    loop: str  # "torch", "mkl" or "onednn"


def private_op(namespace: str, name: str):
    """torch.ops.<namespace>.<name>, or None where this torch build lacks it."""
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None

PUBLIC = Backend(dense="torch", loop="torch")
MARGIN = 0.95  # a private op must take <= 95 % of torch's time
# (rows, in, out) of the products measured: a loop's forward and backward steps at 1 x 256, B 32 and
# at 2 x 512, B 64; the head of 1 x 256 over 2,493 characters and a 2 x 512 layer's input projection
# (forward, then its input gradient, whose weight is a transposed view).
LOOP_SHAPES = [(32, 256, 1024), (32, 1024, 256), (64, 512, 2048), (64, 2048, 512)]
DENSE_SHAPES = [(1120, 256, 2493), (1024, 512, 2048), (1024, 2048, 512)]
REPEATS = {"loop": 25, "dense": 9}  # timed calls of each candidate per shape


def cache_file() -> Path:
    return kernels.cache_dir() / f"{kernels.extension_name()}.products-{torch.get_num_threads()}t.json"


def _loop_candidates(rows: int, inputs: int, outputs: int, generator) -> tuple[Tensor, dict[str, Callable], Tensor]:
    """x (rows, I), name -> x |-> x W^T as the compiled step calls it (packing done here), torch's x W^T."""
    x = torch.randn(rows, inputs, generator=generator)
    weight = torch.randn(outputs, inputs, generator=generator)  # (O, I)
    out = weight.new_empty(rows, outputs)
    candidates = {"torch": lambda x: torch.mm(x, weight.t(), out=out)}
    mkl_linear, mkl_reorder = private_op("mkl", "_mkl_linear"), private_op("mkl", "_mkl_reorder_linear_weight")
    if mkl_linear is not None and mkl_reorder is not None and torch.backends.mkl.is_available():
        packed = mkl_reorder(weight, rows)
        candidates["mkl"] = lambda x: mkl_linear(x, packed, weight, None, rows)
    onednn, onednn_reorder = private_op("mkldnn", "_linear_pointwise"), private_op("mkldnn", "_reorder_linear_weight")
    if onednn is not None and onednn_reorder is not None and torch.backends.mkldnn.is_available():
        packed_dnn = onednn_reorder(weight, rows)
        candidates["onednn"] = lambda x: onednn(x, packed_dnn, None, "none", [], "")
    return x, candidates, x @ weight.t()


def _dense_candidates(rows: int, inputs: int, outputs: int, generator) -> tuple[Tensor, dict[str, Callable], Tensor]:
    """As the model calls them: forward with a bias (F.linear copies it into the output first, oneDNN
    adds it on the way); the input gradient (inputs > outputs) by a transposed view of the weight, no bias."""
    x = torch.randn(rows, inputs, generator=generator)
    transposed = inputs > outputs
    weight = torch.randn(*((inputs, outputs) if transposed else (outputs, inputs)), generator=generator)
    bias = None if transposed else torch.randn(outputs, generator=generator)
    w = weight.t() if transposed else weight  # (O, I), a view of (I, O) for the input gradient
    candidates = {"torch": lambda x: F.linear(x, w, bias)}
    onednn = private_op("mkldnn", "_linear_pointwise")
    if onednn is not None and torch.backends.mkldnn.is_available():
        candidates["onednn"] = lambda x: onednn(x, w, bias, "none", [], "")
    return x, candidates, x @ weight if transposed else torch.addmm(bias, x, weight.t())


def _working(candidates: dict[str, Callable], x: Tensor, expected: Tensor) -> dict[str, Callable]:
    """The candidates that run and give torch's result (float32 rounding aside)."""
    kept = {}
    for name, product in candidates.items():
        try:
            # float32 rounding grows with the sum's length: the tolerance is relative to the largest entry
            torch.testing.assert_close(product(x), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))
            kept[name] = product
        except Exception as error:  # a private op missing a kernel, changed, or wrong: not used
            warnings.warn(f"lyricist: the {name} product failed its check and is not used "
                          f"({type(error).__name__}: {str(error).strip()[:200]})", RuntimeWarning, stacklevel=3)
    return kept


@torch.no_grad()
def _relative_times(shapes, make, repeats: int) -> dict[str, float]:
    """name -> sum over shapes of (its fastest time / torch's), for those working at every shape. The
    fastest of alternated calls, not the median: other processes only ever add time."""
    generator = torch.Generator().manual_seed(0)
    scores: dict[str, float] = {}
    alive: set[str] | None = None
    for rows, inputs, outputs in shapes:
        x, candidates, expected = make(rows, inputs, outputs, generator)
        candidates = _working(candidates, x, expected)
        alive = set(candidates) if alive is None else alive & set(candidates)
        fastest = dict.fromkeys(candidates, math.inf)
        for repeat in range(repeats + 2):
            for name, product in candidates.items():  # alternated: a slow patch hits every candidate
                start = time.perf_counter()
                product(x)
                if repeat >= 2:  # two untimed calls first
                    fastest[name] = min(fastest[name], time.perf_counter() - start)
        for name, seconds in fastest.items():
            scores[name] = scores.get(name, 0.0) + seconds / fastest["torch"]
    return {name: round(score, 3) for name, score in scores.items() if name in alive}


def _pick(scores: dict[str, float]) -> str:
    best = min(scores, key=scores.get)
    return best if scores[best] <= MARGIN * scores["torch"] else "torch"


def load_per_cpu() -> float:
    """Runnable threads per core over the last minute: above 1, a measurement's times say little."""
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this system: taken as quiet
        return 0.0


def measure() -> dict:
    """Time every working candidate (a second or two); the choice and the numbers."""
    loop = _relative_times(LOOP_SHAPES, _loop_candidates, REPEATS["loop"])
    dense = _relative_times(DENSE_SHAPES, _dense_candidates, REPEATS["dense"])
    return {"dense": _pick(dense), "loop": _pick(loop), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_per_cpu": round(load_per_cpu(), 2), "relative_time": {"dense": dense, "loop": loop},
            "note": "each: summed fastest time relative to torch's over the shapes measured; lower is faster"}


def _write(path: Path, result: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(temporary, path)  # atomic: a reader sees all of it or none
    except OSError as error:  # a read-only cache: measured again next time, nothing lost
        warnings.warn(f"lyricist: could not cache the product choice in {path}: {error}", RuntimeWarning, stacklevel=3)


def _read(path: Path) -> dict | None:
    """The cached measurement, or None (measure again): no file, an unreadable one, or one measured
    on a busy machine (or without its load) that is quiet now."""
    try:
        found = json.loads(path.read_text())
        Backend(found["dense"], found["loop"])
        measured_under = float(found.get("load_per_cpu", math.inf))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if measured_under > 1.0 and load_per_cpu() <= 1.0 else found


def choose() -> Backend:
    """The cached choice, or a new measurement written to the cache."""
    if os.environ.get("LYRICIST_PRODUCTS", "auto") == "public":
        return PUBLIC
    path = cache_file()
    found = _read(path)
    if found is None:  # the old measurement's per-shape loop choices, if any, go with it
        found = measure()
        _write(path, found)
    return Backend(found["dense"], found["loop"])


_by_shape: dict[str, str] = {}  # "rows x in x out" -> loop backend, this process's copy of the file's


def loop_for(rows: int, outputs: int, inputs: int) -> str:
    """The loop backend for T products of (rows, inputs) by a weight (outputs, inputs), measured on this shape
    at its first use (milliseconds) and kept in the file: one choice for all shapes was not the best for each."""
    if os.environ.get("LYRICIST_PRODUCTS", "auto") == "public":
        return "torch"
    key = f"{rows}x{inputs}x{outputs}"
    if key not in _by_shape:
        path = cache_file()
        found = _read(path) or {**measure(), "loop_by_shape": {}}
        if key not in found.get("loop_by_shape", {}):
            scores = _relative_times([(rows, inputs, outputs)], _loop_candidates, REPEATS["loop"])
            found = _read(path) or found  # another process may have written meanwhile: keep its shapes
            found.setdefault("loop_by_shape", {})[key] = _pick(scores)
            _write(path, found)
        _by_shape.update(found["loop_by_shape"])
    return _by_shape[key]
