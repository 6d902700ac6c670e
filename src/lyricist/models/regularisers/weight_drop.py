"""DropConnect on the recurrent weights (Wan et al., 2013; AWD-LSTM's WeightDrop): each layer's
W_hh masked once per chunk, one copy per layer (not per step) that every step and every sequence
multiplies by; autograd takes the gradient back through the mask to the parameter. The cells,
the fused path and the compiled steps simply receive the copy."""

from __future__ import annotations

from lyricist.models.regularisers import Regulariser, dropout_mask


class WeightDrop(Regulariser):
    def __init__(self, p: float):
        self.p, self.masks = p, []

    @classmethod
    def from_settings(cls, config):
        return cls(config.weight_drop) if config.weight_drop > 0 else None

    def draw(self, model):
        self.masks = [dropout_mask(cell.weight_hh.shape, self.p, cell.weight_hh) for cell in model.cells]  # (G*H, H) each

    def weight_hh(self, weight, layer):
        return weight * self.masks[layer]
