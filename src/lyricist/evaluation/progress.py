"""Progress lines for the long loops of a stage, one at most every `every` seconds: a stage's log
is read after the fact as often as live (`dvc repro` keeps it), where a line per interval says
more than a redrawn bar. A loop that ends sooner prints nothing: its caller reports its total."""

from __future__ import annotations

import time
from collections.abc import Callable

# What a loop calls as it goes: (what it is doing, units done, units in all).
Tick = Callable[[str, int, int], None]


class Progress:
    """A `Tick` passing `report` "    <label>: 12,000 / 20,000 tokens in 31 s, ~21 s left" when `every`
    seconds have gone since its last line (or its start); a label's time counts from its first tick."""

    def __init__(self, report: Callable[[str], None], every: float = 30.0,
                 clock: Callable[[], float] = time.perf_counter):
        if every <= 0:
            raise ValueError(f"the progress interval must be positive seconds, got {every}.")
        self.report, self.every, self.clock = report, every, clock
        self.last, self.label = clock(), None  # a label's start: its first tick

    def __call__(self, label: str, done: int, total: int) -> None:
        now = self.clock()
        if label != self.label:  # a new loop: its time counts from here (and it has nothing to say yet)
            self.label, self.label_start = label, now
        elif now - self.last >= self.every:
            self.last = now
            spent = now - self.label_start
            left = f", ~{spent * (total - done) / done:.0f} s left" if 0 < done < total else ""
            self.report(f"    {label}: {done:,} / {total:,} tokens in {spent:.0f} s{left}")
