"""Activation regularisation of the last layer's outputs (AWD-LSTM, Merity et al., 2018), added to
what training differentiates; the logged loss and perplexity stay cross-entropy.

AR, alpha * mean(dropped^2), keeps the activations small; TAR, beta * mean((h_t - h_{t-1})^2) of the
raw outputs (dropout's noise is no change of the state), keeps them slowly changing. A chunk of one
step has no step-to-step change: its TAR is 0."""

from lyricist.models.regularisers import Regulariser


class ActivationPenalty(Regulariser):
    settings = ("ar_alpha", "tar_beta")

    def penalty(self, raw, dropped):
        penalty = self.config.ar_alpha * dropped.pow(2).mean()
        if self.config.tar_beta and raw.size(1) > 1:
            penalty = penalty + self.config.tar_beta * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()  # (B, T-1, H) -> ()
        return penalty
