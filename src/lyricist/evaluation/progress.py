"""Progress lines for the long loops of a stage: one line at most every `every` seconds.

A stage's log is read after the fact as often as live (`dvc repro` keeps it), so a line per
interval ("    rate 0.3 on val: 12,000 / 20,000 tokens, 31 s") says more there than a redrawn
bar; a loop that ends sooner than the interval prints nothing, and its part's total is the
line its caller reports at the end (lyricist.evaluation.perplexity).
"""

from __future__ import annotations

import time
from collections.abc import Callable

# What a loop calls as it goes: (what it is doing, units done, units in all).
Tick = Callable[[str, int, int], None]


class Progress:
    """A `Tick` that passes a line to `report` when `every` seconds have gone since its last line
    (or its start): the label, how far, and the seconds since the start."""

    def __init__(self, report: Callable[[str], None], every: float = 30.0, unit: str = "tokens",
                 clock: Callable[[], float] = time.perf_counter):
        if every <= 0:
            raise ValueError(f"the progress interval must be positive seconds, got {every}.")
        self.report, self.every, self.unit, self.clock = report, every, unit, clock
        self.start = self.last = clock()

    def __call__(self, label: str, done: int, total: int) -> None:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self.report(f"    {label}: {done:,} / {total:,} {self.unit}, {now - self.start:.0f} s")
