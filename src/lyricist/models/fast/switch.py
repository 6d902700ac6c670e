"""An on/off setting that a ``with`` block can change for its duration (matmul.py's private
products, kernels.py's compiled steps): the benchmark and the tests compare both sides."""

from __future__ import annotations

import contextlib
from typing import Iterator


class Switch:
    def __init__(self, on: bool):
        self.on = on

    @contextlib.contextmanager
    def set(self, on: bool) -> Iterator[None]:
        previous, self.on = self.on, on
        try:
            yield
        finally:
            self.on = previous
