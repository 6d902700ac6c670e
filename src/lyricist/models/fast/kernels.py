"""The LSTM's and the GRU's time loops compiled from ``csrc/steps.cpp`` (why: see the .cpp file) where a
C++ compiler is: built once per machine (``make install``) and found by every copy of the code
(docs/speed.md: the compiled LSTM step). Without a build (a warning says why) or with
``LYRICIST_CPP_KERNELS=0``, ``step_kernels()`` is None and fused.py runs the same math as torch ops."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Iterator

SOURCE = Path(__file__).with_name("csrc") / "steps.cpp"
# -ffast-math vectorises the gate math, -fno-finite-math-only keeps NaN meaningful (the divergence guard),
# -D__FAST_MATH__ lets glibc declare its vector exp/tanh (why, and the timings: docs/speed.md, Flags).
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-D__FAST_MATH__", "-fopenmp-simd"]
BUILD_LOG = "builds.log"  # one line per build, for the tests and for a curious user


class Switch:
    """A setting that a ``with`` block can change for its duration (the compiled steps on or off here,
    matmul.py's private products and its backend): the benchmark and the tests compare both sides."""

    def __init__(self, on):
        self.on = on

    @contextlib.contextmanager
    def set(self, on) -> Iterator[None]:
        previous, self.on = self.on, on
        try:
            yield
        finally:
            self.on = previous


_module: ModuleType | None = None
_tried = False
switch = Switch(os.environ.get("LYRICIST_CPP_KERNELS", "1") != "0")
cpp_kernels = switch.set  # cpp_kernels(False): the torch-ops path inside the block (tests, benchmark)


def cache_dir() -> Path:
    """Where the built binaries live: $TORCH_EXTENSIONS_DIR/lyricist (~/.cache/torch_extensions)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / "lyricist"


def _first_line_of(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "none"


def _cpu() -> str:
    """The CPU's model and instruction sets (-march=native builds for exactly these)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(next((l for l in lines if l.startswith(k)), "") for k in ("model name", "flags"))
    except OSError:
        return platform.processor()


def extension_name() -> str:
    """lyricist_steps_<hash of everything the binary depends on>."""
    import torch

    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (FLAGS, torch.__version__, sys.implementation.cache_tag, platform.machine(),
                 _first_line_of([os.environ.get("CXX", "c++"), "--version"]), _cpu()):
        digest.update(f"\0{part}".encode())
    return f"lyricist_steps_{digest.hexdigest()[:16]}"


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str, target: Path) -> ModuleType:
    """Compile into a fresh folder beside `target`, then move the binary into place."""
    from torch.utils.cpp_extension import load

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as folder:
        source = Path(folder) / SOURCE.name
        shutil.copyfile(SOURCE, source)
        module = load(name=name, sources=[str(source)], build_directory=folder, extra_cflags=FLAGS, verbose=False)
        os.replace(Path(folder) / f"{name}.so", target)  # atomic: readers see all of it or none
    with open(target.parent / BUILD_LOG, "a") as log:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name} pid {os.getpid()}\n")
    return module


def step_kernels() -> ModuleType | None:
    """The compiled module (``lstm_forward``, ``lstm_backward``, ``gru_forward``, ``gru_backward``) from
    the cache or built at the first call; None when switched off or when it cannot be built."""
    global _module, _tried
    if not switch.on:
        return None
    if not _tried:
        _tried = True
        try:
            name = extension_name()
            built = cache_dir() / f"{name}.so"
            _module = _import(name, built) if built.is_file() else _build(name, built)
        except Exception as error:  # no compiler, no ninja, no headers: the torch-ops path still works
            warnings.warn(f"lyricist: the C++ LSTM step could not be built, using torch ops instead "
                          f"(slower, same results): {str(error).strip()[-500:]}", RuntimeWarning, stacklevel=2)
    return _module
