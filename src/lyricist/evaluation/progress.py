"""Progress lines for the long loops of a stage: one line at most every `every` seconds.

A stage's log is read after the fact as often as live (`dvc repro` keeps it), so a line per
interval ("    rate 0.3, tuning on val: 12,000 / 20,000 tokens in 31 s, ~21 s left") says more there than a redrawn
bar. A loop that ends sooner than the interval prints nothing, and its part's total is the
line its caller reports at the end (lyricist.evaluation.evaluate).
"""

from __future__ import annotations

import time
from collections.abc import Callable

# What a loop calls as it goes: (what it is doing, units done, units in all).
Tick = Callable[[str, int, int], None]


class Progress:
    """A `Tick` that passes a line to `report` when `every` seconds have gone since its last line
    (or its start): the label, how far, the seconds since that label's first tick and an
    estimate of the seconds left at that pace."""

    def __init__(self, report: Callable[[str], None], every: float = 30.0, unit: str = "tokens",
                 clock: Callable[[], float] = time.perf_counter):
        if every <= 0:
            raise ValueError(f"the progress interval must be positive seconds, got {every}.")
        self.report, self.every, self.unit, self.clock = report, every, unit, clock
        self.last = clock()
        self.label, self.label_start = None, self.last

    def __call__(self, label: str, done: int, total: int) -> None:
        now = self.clock()
        if label != self.label:  # a new loop: its time counts from here (and it has nothing to say yet)
            self.label, self.label_start = label, now
        elif now - self.last >= self.every:
            self.last = now
            spent = now - self.label_start
            left = f", ~{spent * (total - done) / done:.0f} s left" if 0 < done < total else ""
            self.report(f"    {label}: {done:,} / {total:,} {self.unit} in {spent:.0f} s{left}")
