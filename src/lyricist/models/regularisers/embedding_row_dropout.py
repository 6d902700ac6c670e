"""Whole characters dropped (AWD-LSTM's embedded_dropout): for a chunk, each row of the input
table is zeroed with probability p (the others scaled by 1 / (1 - p)), so every occurrence of a
dropped character in the batch reads zeros. The table is the embedding matrix (before
``embedding_dropout``; with ``tie_weights`` the head still sees all of it), or with one-hot input
the first layer's W_ih^T: a dropped character then contributes only ``bias_ih``, the same as
zeroing its one-hot vector."""

from __future__ import annotations

from lyricist.models.regularisers import Regulariser, dropout_mask


class EmbeddingRowDropout(Regulariser):
    def __init__(self, p: float):
        self.p, self.mask = p, None

    @classmethod
    def from_settings(cls, config):
        return cls(config.embedding_row_dropout) if config.embedding_row_dropout > 0 else None

    def draw(self, model):
        self.mask = dropout_mask((model.vocab_size,), self.p, model.head.weight)  # (V,): one scale per character

    def rows(self, x, ids):
        return x * self.mask[ids].unsqueeze(-1)  # (..., D) * (..., 1)
