"""Lines of Lightning and torch that a lyricist user cannot act on, silenced one by one, each with
the reason (the rest of their output stays: "GPU available", the model summary, real warnings)."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

RANK_ZERO = logging.getLogger("pytorch_lightning.utilities.rank_zero")  # Lightning's info lines


def _no_litlogger_tip(record: logging.LogRecord) -> bool:
    # Lightning 2.6 advertises litlogger on every Trainer without it; its only fix is installing that package.
    return "try installing [litlogger]" not in record.getMessage()


def silence_known_noise() -> None:
    RANK_ZERO.addFilter(_no_litlogger_tip)  # added once however often called: logging keeps no duplicate
    # Lightning 2.6's utilities/_pytree.py builds torch 2.13's deprecated LeafSpec: gone when Lightning updates.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Lightning warns about every IterableDataset with a length, in case several workers each yield all of
    # it: lyricist's batch streams are read in the main process (num_workers=0), where it is exact.
    warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")


@contextlib.contextmanager
def quiet_probe() -> Iterator[None]:
    """A Trainer built only to check the settings prints nothing (its "GPU available" lines would come twice)."""
    level = RANK_ZERO.level
    RANK_ZERO.setLevel(logging.WARNING)
    try:
        yield
    finally:
        RANK_ZERO.setLevel(level)
