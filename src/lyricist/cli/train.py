"""`python -m lyricist.train [overrides]`: the Hydra app that trains one model, or a sweep (-m).

    python -m lyricist.train model=rnn data.sampling=random
    python -m lyricist.train -m model=rnn,lstm data.sampling=random,consecutive
"""

from __future__ import annotations

import math
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write

from lyricist import errors, rundir
from lyricist.cli import sweep
from lyricist.cli.config import check_overrides, compose, settings_of
from lyricist.project import project_root
from lyricist.training.run import train


class RunDirGuard(Callback):
    """`hydra.callbacks.run_dir_guard` (conf/config.yaml): refuses bad settings and a run directory that
    holds another run or is in use, before Hydra writes `.hydra/` into it. Hydra swallows an exception
    raised in a callback (a warning, then the run goes on): a refusal exits (SystemExit), in one line."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if rundir.is_ddp_child():
            return
        run_dir = _pin(config, "run")
        _refuse_or_continue(lambda: (_check_dir(config, Path(run_dir)), rundir.lock_run_dir(run_dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Each job checks its settings and locks its own directory; here only the sweep's
        # directory, whose job folders would be reused (hydra.sweep.dir given twice).
        sweep_dir = Path(_pin(config, "sweep"))
        jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if sweep_dir.is_dir() else []
        _refuse_or_continue(lambda: [_check_dir(config, job) for job in jobs])


def _pin(cfg: DictConfig, mode: str) -> str:
    """hydra.<mode>.dir resolved once and written back, so `${now:...}` cannot name another
    second's folder when Hydra resolves it again to create it."""
    HydraConfig.instance().set_config(cfg)  # as run_job does first: `${hydra:...}` resolves
    resolved = str(cfg.hydra[mode].dir)
    with read_write(cfg.hydra[mode]):
        cfg.hydra[mode].dir = resolved
    return resolved


def _check_dir(cfg: DictConfig, run_dir: Path) -> None:
    s = settings_of(cfg)  # every value checked first
    rundir.check_run_dir(run_dir, bool(s.train.resume), s.train.overwrite)


def _refuse_or_continue(check) -> None:
    try:
        check()
    except errors.USER_ERRORS as err:
        raise SystemExit(errors.report(err)) from None
    except Exception:
        traceback.print_exc()
        raise SystemExit(1) from None


def _hydra_job(cfg: DictConfig) -> float:
    try:
        metrics = train(settings_of(cfg), output_dir=HydraConfig.get().runtime.output_dir,
                        parent_run_id=sweep.parent_run_id_for_current_job())
    except errors.USER_ERRORS as err:
        # A single run: one line and status 2 (SystemExit passes Hydra's traceback printer).
        # A sweep's job fails as a job, so the others run and the sweep callback records it.
        if HydraConfig.get().mode == RunMode.MULTIRUN or errors.full_error():
            raise
        raise SystemExit(errors.report(err)) from None
    return metrics.get("val/ppl", math.inf)  # what an optimising sweeper minimises ({} on DDP rank > 0)


def main() -> None:
    argv = sys.argv[1:]
    if {"-m", "--multirun"} & set(argv):  # a sweep's lists compose job by job
        _refuse_or_continue(lambda: check_overrides(argv, project_root() / "conf"))
    else:  # composed once here, so that a mistake Hydra finds is one line too
        _refuse_or_continue(lambda: compose([a for a in argv if "=" in a and not a.startswith(("-", "hydra"))]))
    hydra.main(version_base="1.3", config_path=str(project_root() / "conf"), config_name="config")(_hydra_job)()
