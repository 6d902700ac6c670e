"""Activation regularisation on the last layer's outputs (AWD-LSTM, Merity et al., 2018), added to
the objective training differentiates; the logged loss and perplexity stay cross-entropy.

AR, alpha * mean(dropped^2), keeps the activations small; TAR, beta * mean((h_t - h_{t-1})^2) on the
raw outputs (dropout's noise is no change of the state), keeps them slowly changing. A chunk of one
step has no step-to-step change: its TAR is 0."""

from __future__ import annotations

from lyricist.models.regularisers import Regulariser


class ActivationPenalty(Regulariser):
    def __init__(self, ar_alpha: float, tar_beta: float):
        self.ar_alpha, self.tar_beta = ar_alpha, tar_beta

    @classmethod
    def from_settings(cls, config):
        return cls(config.ar_alpha, config.tar_beta) if config.ar_alpha or config.tar_beta else None

    def penalty(self, raw, dropped):
        penalty = self.ar_alpha * dropped.pow(2).mean()
        if self.tar_beta and raw.size(1) > 1:
            penalty = penalty + self.tar_beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()  # (B, T-1, H) -> ()
        return penalty
