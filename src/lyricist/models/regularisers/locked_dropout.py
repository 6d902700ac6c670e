"""Locked (variational) dropout: one mask per sequence, the same units dropped at every step.
``nn.Dropout``'s fresh mask at every step lets every unit through most of the time, and the noise
averages out; a unit dropped for the whole chunk (Gal & Ghahramani, 2016; AWD-LSTM) regularises a
small corpus harder. RecurrentLM uses it at its three dropout places when ``model.locked_dropout``."""

from torch import Tensor, nn


class LockedDropout(nn.Module):
    """``nn.Dropout`` with rate ``p`` whose mask is shared along dimension ``time_dim``."""

    def __init__(self, p: float = 0.5, time_dim: int = 0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.p, self.time_dim = p, time_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.time_dim] = 1  # e.g. (T, B, D) -> (1, B, D): one mask per sequence, broadcast over T
        # bernoulli_, not dropout_mask's faster draw: locked runs keep the numbers they had.
        return x * x.new_empty(shape).bernoulli_(1.0 - self.p).div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, time_dim={self.time_dim}"
