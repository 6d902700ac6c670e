"""DropConnect on the recurrent weights (Wan et al., 2013; AWD-LSTM's WeightDrop): each layer's
W_hh masked once per chunk, one copy per layer (not per step) that every step and sequence
multiplies by; autograd takes the gradient back through the mask to the parameter. The cells,
the fused path and the compiled steps simply receive the copy."""

from lyricist.models.regularisers import Regulariser, dropout_mask


class WeightDrop(Regulariser):
    settings = ("weight_drop",)

    def draw(self, model):
        self.masks = [dropout_mask(cell.weight_hh.shape, self.config.weight_drop, cell.weight_hh)
                      for cell in model.cells]  # per layer, (G*H, H)

    def weight_hh(self, weight, layer):
        return weight * self.masks[layer]
