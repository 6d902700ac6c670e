"""A run directory that protects itself (docs/reliability.md): a fresh run into one that holds a run
(`checkpoints/` non-empty, or a `metrics.csv` with a row) is refused unless it resumes or overwrites,
and one process at a time holds it by `fcntl.flock` on `<dir>/.lyricist.lock` (released however it exits).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

RUN_FILES = ("checkpoints", "metrics.csv")  # what a run leaves; `.hydra/` alone is not a run
_held: dict[Path, int] = {}  # resolved directory -> the locked file descriptor, for this process


class RunDirError(ValueError):
    """The run directory holds another run, or another process is writing to it."""


def is_ddp_child() -> bool:
    """A process Lightning started for DDP rank > 0: it shares the run directory of rank 0,
    which holds the lock, so it must not claim it again."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def existing_run(run_dir: Path) -> list[str]:
    """The files of an earlier run in `run_dir` (empty when there is none)."""
    paths = {name: run_dir / name for name in RUN_FILES}
    return [name for name, path in paths.items() if (path.is_file() and _has_rows(path)) or (path.is_dir() and any(path.iterdir()))]


def _has_rows(path: Path) -> bool:
    """Whether a file holds more than one line: metrics.csv's header alone is no epoch."""
    with open(path, "rb") as f:
        return len(f.read(1 << 16).splitlines()) > 1


def check_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run into a directory that already holds one (reads only, writes nothing)."""
    if is_ddp_child():  # rank 0 checked it, and may have started metrics.csv since
        return
    found = existing_run(Path(run_dir))
    if found and not resume and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a run ({', '.join(found)}); a new run would overwrite it. "
            "Continue it with train.resume=auto, replace it with train.overwrite=true, or train "
            "into another directory (e.g. hydra.run.dir=outputs/my-run)")


def lock_run_dir(run_dir: str | Path) -> bool:
    """Hold `run_dir` for this process until it exits or releases it; refuse when another
    process holds it. True when newly taken, False when this process held it already (the
    Hydra app locks the directory before train() does)."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _held:
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lyricist.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another run (process {holder}); two runs in one "
                          "directory would interleave their epochs. Wait for it to finish, or train "
                          "into another directory (e.g. hydra.run.dir=outputs/my-run)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for the message above
    _held[run_dir] = fd
    return True


def claim_run_dir(run_dir: str | Path, resume: bool, overwrite: bool) -> bool:
    """Check, then lock `run_dir` (True when this call took the lock); with `overwrite`, remove
    the earlier run's files, only once the lock is held (a live writer's files are never removed)."""
    if is_ddp_child():
        return False
    check_run_dir(run_dir, resume, overwrite)
    taken = lock_run_dir(run_dir)
    if overwrite and not resume:
        for name in existing_run(Path(run_dir)):
            path = Path(run_dir) / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return taken


def release_run_dir(run_dir: str | Path) -> None:
    """Give the lock back before the process exits (tests, several runs in one process)."""
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the only descriptor releases the flock
