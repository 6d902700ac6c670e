"""The LSTM's time loop compiled from ``csrc/lstm_step.cpp``, where a C++ compiler is.

Why: see the .cpp file -- one pass over (B, H) per step instead of ~8 torch calls, whose
dispatch costs more than their arithmetic at this project's sizes, and no Python between
steps. The matrix products are the same oneDNN ones as in matmul.py.

Built on first use by ``torch.utils.cpp_extension`` (ninja and the system's C++ compiler;
~25 s once, then loaded from the cache, ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``).
``-march=native``: the build is for the machine it runs on.

When the build fails (a warning says why) or ``LYRICIST_CPP_KERNELS=0`` is set, ``lstm_kernels()``
is None and fused.py runs the same math as torch ops; the tests hold the two paths equal.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from types import ModuleType

from lyricist.models.fast.switch import Switch

SOURCE = Path(__file__).with_name("csrc") / "lstm_step.cpp"
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp-simd"]  # fast-math: glibc's vector exp/tanh

_module: ModuleType | None = None
_tried = False
switch = Switch(os.environ.get("LYRICIST_CPP_KERNELS", "1") != "0")


def lstm_kernels() -> ModuleType | None:
    """The compiled module (functions ``lstm_forward``, ``lstm_backward``), built on
    the first call; None when switched off or when it cannot be built."""
    global _module, _tried
    if not switch.on:
        return None
    if not _tried:
        _tried = True
        try:
            from torch.utils.cpp_extension import load

            _module = load(name="lyricist_lstm_step", sources=[str(SOURCE)], extra_cflags=FLAGS, verbose=False)
        except Exception as error:  # no compiler, no ninja, no headers: the torch-ops path still works
            warnings.warn(f"lyricist: the C++ LSTM step could not be built, using torch ops instead "
                          f"(slower, same results): {str(error).strip()[-500:]}", RuntimeWarning, stacklevel=2)
    return _module


def cpp_kernels(enabled: bool) -> contextlib.AbstractContextManager:
    """Use the compiled step (``True``, if it builds) or the torch-ops path (``False``) inside
    the block; for the tests and the benchmark."""
    return switch.set(enabled)
