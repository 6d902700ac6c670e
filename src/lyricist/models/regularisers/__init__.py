"""The regularisers, one file each (as awd-lstm-lm's locked_dropout.py and weight_drop.py; locked_dropout
serves lm.py's three dropouts), and the hooks through which RecurrentLM applies them in train mode. A new
one is its file here (a ``Regulariser``), its field in settings.py (ModelSettings) and its value in
conf/model/. They are found by their modules' names and draw in that order; one that is off is not
built and draws nothing, so a new one leaves the numbers of a run without it as they were.
"""

import importlib
import pkgutil
from collections.abc import Sequence

from torch import Tensor, nn

from lyricist.settings import ModelSettings


class Regulariser:
    """The hooks, no-ops here: a regulariser overrides those it needs. ``draw``: first, before anything
    else draws. ``rows``: x (..., D), the rows of the input table read for ids (...): the embedding's,
    or with one-hot input the first layer's W_ih^T. ``weight_hh``: a layer's W_hh (G*H, H).
    ``penalty``: of the last layer's outputs (B, T, H) raw and dropped, added to the objective."""

    settings: tuple[str, ...] = ()  # the ModelSettings fields that switch it on (any nonzero)

    def __init__(self, config: ModelSettings):
        self.config = config

    def draw(self, model: nn.Module) -> None:  # this chunk's masks, for all its steps and sequences
        pass

    def rows(self, x: Tensor, ids: Tensor) -> Tensor:
        return x

    def weight_hh(self, weight: Tensor, layer: int) -> Tensor:
        return weight

    def penalty(self, raw: Tensor, dropped: Tensor) -> Tensor | None:
        return None


def dropout_mask(shape: Sequence[int], p: float, like: Tensor) -> Tensor:
    """A mask of ``shape`` on ``like``'s dtype and device: 0 with probability ``p``, else 1 / (1 - p), as
    ``nn.Dropout``. Drawn as uniform >= p: ``bernoulli_`` is ~2x slower on CPU, where a (4H, H) mask at
    H = 256 is 262,144 draws."""
    return like.new_empty(shape).uniform_().ge_(p).div_(1.0 - p)


def build(config: ModelSettings) -> list[Regulariser]:
    """Every regulariser of this package that ``config`` switches on, in its modules' name order."""
    for name in sorted(module.name for module in pkgutil.iter_modules(__path__)):
        importlib.import_module(f"{__name__}.{name}")
    kinds = sorted((kind for kind in Regulariser.__subclasses__() if kind.__module__.startswith(__name__ + ".")),
                   key=lambda kind: kind.__module__)
    return [kind(config) for kind in kinds if any(getattr(config, name) for name in kind.settings)]
