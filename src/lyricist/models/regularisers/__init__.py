"""The regularisers, one file each beside the cells (as awd-lstm-lm keeps locked_dropout.py and
weight_drop.py), and the hooks through which RecurrentLM applies them.

A regulariser is a ``Regulariser`` in a module of this package. RecurrentLM builds every one its
settings switch on (``from_settings``) and, in train mode only, calls their hooks at fixed points
of each forward call (one (B, T) chunk): ``draw`` first, before anything else draws; ``rows`` on
the vectors read from the input table; ``weight_hh`` on each layer's recurrent weight; ``penalty``
on the last layer's outputs, added to what training differentiates. A new regulariser is its file
here, its field in settings.py (ModelSettings) and its value in conf/model/.

They are found by their modules' names and draw in that order. One that is off is not built and
draws nothing, so a new file leaves every other mask, and the numbers of a run without it, as they
were. (locked_dropout.py is the module of lm.py's three dropout places, not a hook.)
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence

from torch import Tensor, nn

from lyricist.settings import ModelSettings


class Regulariser:
    """The hooks, each a no-op here: a regulariser overrides those it needs."""

    @classmethod
    def from_settings(cls, config: ModelSettings) -> Regulariser | None:
        """The regulariser as ``config`` sets it; None where it is off."""
        raise NotImplementedError

    def draw(self, model: nn.Module) -> None:
        """This chunk's masks: once per forward call, the same for all its steps and sequences."""

    def rows(self, x: Tensor, ids: Tensor) -> Tensor:
        """x (..., D): the rows of the input table read for ids (...): the embedding's, or with
        one-hot input the first layer's W_ih^T (its row ``id`` is what the one-hot vector picks)."""
        return x

    def weight_hh(self, weight: Tensor, layer: int) -> Tensor:
        """The W_hh (G*H, H) that layer ``layer`` multiplies by at every step of this chunk."""
        return weight

    def penalty(self, raw: Tensor, dropped: Tensor) -> Tensor | None:
        """Added to the objective, not to the logged loss. raw: the last layer's outputs (B, T, H);
        dropped: the same after output dropout, what the head reads."""
        return None


def dropout_mask(shape: Sequence[int], p: float, like: Tensor) -> Tensor:
    """A mask of ``shape`` with ``like``'s dtype and device: 0 with probability ``p``, else
    1 / (1 - p) (inverted scaling, as ``nn.Dropout``, so the expected value is unchanged).

    Drawn as uniform >= p rather than ``bernoulli_``, which is ~2x slower on CPU: a (4H, H)
    DropConnect mask is 262,144 draws per layer and batch at H = 256."""
    return like.new_empty(shape).uniform_().ge_(p).div_(1.0 - p)


def build(config: ModelSettings) -> list[Regulariser]:
    """Every regulariser of this package that ``config`` switches on, in its modules' name order."""
    for name in sorted(module.name for module in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{name}")
    kinds = sorted((kind for kind in Regulariser.__subclasses__() if kind.__module__.startswith(f"{__name__}.")),
                   key=lambda kind: kind.__module__)
    return [regulariser for kind in kinds if (regulariser := kind.from_settings(config)) is not None]
