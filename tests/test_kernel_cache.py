"""The compiled LSTM step is built once per machine and found by every copy of the code, from
any shell; a build killed midway leaves nothing that makes another process wait."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from lyricist.models.fast import kernels

pytestmark = pytest.mark.skipif(not kernels.switch.on, reason="LYRICIST_CPP_KERNELS=0")
LOAD = ("from lyricist.models.fast.kernels import step_kernels; "
        "m = step_kernels(); print(m.__file__ if m else 'none')")


def _python(code: str, src, env_extra=None, **kwargs) -> subprocess.Popen:
    """`code` in a fresh interpreter that imports lyricist from `src`, with a bare PATH (no
    venv on it: another ninja, or none, is what the shell would find)."""
    env = {"HOME": os.environ["HOME"], "PATH": "/usr/bin:/bin", "PYTHONPATH": str(src), **(env_extra or {})}
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        env.setdefault("TORCH_EXTENSIONS_DIR", os.environ["TORCH_EXTENSIONS_DIR"])
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _builds(cache) -> int:
    log = cache / kernels.BUILD_LOG
    return len(log.read_text().splitlines()) if log.is_file() else 0


def test_a_copy_of_the_code_from_another_shell_imports_the_built_step(tmp_path):
    assert kernels.step_kernels() is not None  # built at install (or now, once)
    cache = kernels.cache_dir()
    builds = _builds(cache)
    copy = tmp_path / "elsewhere" / "src"
    shutil.copytree(ROOT / "src" / "lyricist", copy / "lyricist",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out, err = _python(LOAD, copy).communicate(timeout=120)
    assert out.strip() == str(cache / f"{kernels.extension_name()}.so"), err
    assert _builds(cache) == builds, "the copy rebuilt the step"


@pytest.mark.slow
def test_a_build_killed_midway_leaves_no_lock_and_the_next_process_builds(tmp_path):
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    cache = tmp_path / "ext" / "lyricist"
    victim = _python(LOAD, ROOT / "src", env, start_new_session=True)
    # The build's first file, however long a busy machine takes to get there (the guard only stops a hang).
    deadline = time.time() + 900
    while not list(cache.glob(".build-*/*.cpp")) and victim.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert list(cache.glob(".build-*")), "the build never started"
    os.killpg(victim.pid, signal.SIGKILL)  # the compiler with it
    victim.wait()
    out, err = _python(LOAD, ROOT / "src", env).communicate(timeout=900)  # a guard: a build under load is slow
    built = cache / f"{kernels.extension_name()}.so"
    assert out.strip().endswith(built.name) and built.is_file() and _builds(cache) == 1, err
    # and the one after that only imports it
    out, err = _python(LOAD, ROOT / "src", env).communicate(timeout=120)
    assert out.strip() == str(built) and _builds(cache) == 1, err
