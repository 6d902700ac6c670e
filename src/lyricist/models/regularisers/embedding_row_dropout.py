"""Whole characters dropped (AWD-LSTM's embedded_dropout): for a chunk, each row of the input table
is zeroed with probability p (the others scaled by 1 / (1 - p)), so every occurrence of a dropped
character in the batch reads zeros. The table is the embedding (before ``embedding_dropout``;
with ``tie_weights`` the head still sees all of it), or with one-hot input the first layer's
W_ih^T: a dropped character then gives only ``bias_ih``, as a zeroed one-hot vector would."""

from lyricist.models.regularisers import Regulariser, dropout_mask


class EmbeddingRowDropout(Regulariser):
    settings = ("embedding_row_dropout",)

    def draw(self, model):
        self.mask = dropout_mask((model.vocab_size,), self.config.embedding_row_dropout, model.head.weight)  # (V,)

    def rows(self, x, ids):
        return x * self.mask[ids].unsqueeze(-1)  # (..., D) * (..., 1)
