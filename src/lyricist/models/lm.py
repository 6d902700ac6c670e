"""Character-level recurrent language model built from the hand-written cells.

Shapes: B batch, T time steps, V vocabulary, E embedding, H hidden, L layers,
G gates per cell. Ids come in batch-first (B, T) and logits go out (B, T, V),
because that is what the batch iterators yield and what the loss wants;
inside, everything is time-major (T, B, ...) because the recurrence walks
over T.

The state follows torch.nn's layout: a tuple of ``num_states`` tensors, each
(L, B, H) -- ``(h,)`` for rnn/gru, ``(h, c)`` for lstm.

Two equal paths: ``forward`` (fast: the input projection of all steps in one product, the
recurrence of each layer in one fused autograd Function, the head over all steps in one product)
and ``forward_reference`` (literal, as the seeds). The tests hold one to the other.

The regularisers beyond dropout (models/regularisers/) work through hooks at fixed points of
both paths, in train mode only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lyricist.models import regularisers
from lyricist.models.cells import RecurrentCell, State, make_cell
from lyricist.models.fast import linear, linear_cross_entropy
from lyricist.models.regularisers import Regulariser
from lyricist.models.regularisers.locked_dropout import LockedDropout
from lyricist.settings import ModelSettings


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode (dropout off) inside the block, and back in the mode it was in after,
    even when the block raises: a caller training the model must not find dropout switched off."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class RecurrentLM(nn.Module):
    """Embedding (or one-hot, as the seeds) -> ``num_layers`` stacked cells -> linear head, with
    dropout (nn.Dropout or LockedDropout: no-ops in eval mode) on the embedding output, between
    layers and before the head, and the other regularisers' hooks (``self.regularisers``). What
    each setting means: settings.ModelSettings; the cells' init: ``RecurrentCell.reset_parameters``."""

    def __init__(self, config: ModelSettings, vocab_size: int):
        super().__init__()
        assert vocab_size >= 1, vocab_size  # the settings were checked by lyricist.settings
        self.config = config  # stored in checkpoints (model_dump), what RecurrentLM(config, V) rebuilds from
        cell, hidden_size, num_layers = config.cell, config.hidden_size, config.num_layers
        embedding_size, init, init_scale = config.embedding_size, config.init, config.init_scale
        dropout = config.dropout
        embedding_dropout = dropout if config.embedding_dropout is None else config.embedding_dropout
        output_dropout = dropout if config.output_dropout is None else config.output_dropout
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, hidden_size, num_layers

        self.embedding = None if embedding_size is None else nn.Embedding(vocab_size, embedding_size)
        input_size = vocab_size if embedding_size is None else embedding_size
        cell_kwargs = dict(init=init, init_scale=init_scale)
        if config.forget_bias is not None:
            cell_kwargs["forget_bias"] = config.forget_bias
        self.cells = nn.ModuleList(
            make_cell(cell, input_size if layer == 0 else hidden_size, hidden_size, **cell_kwargs)
            for layer in range(num_layers)
        )
        # Time is dim 0 of the embedding and of a layer's outputs (T, B, .), dim 1 of the
        # head's input (B, T, H); nn.Dropout ignores it.
        def make_dropout(rate: float, time_dim: int) -> nn.Module:
            return LockedDropout(rate, time_dim) if config.locked_dropout else nn.Dropout(rate)

        self.embedding_dropout = make_dropout(embedding_dropout, time_dim=0)
        self.dropout = make_dropout(dropout, time_dim=0)  # between layers
        self.output_dropout = make_dropout(output_dropout, time_dim=1)
        self.head = nn.Linear(hidden_size, vocab_size)
        # The seeds draw the output layer like the recurrent weights (N(0, 0.01^2), zero bias),
        # so the head follows `init`; "torch" keeps nn.Linear's own default.
        with torch.no_grad():
            if init == "normal":
                self.head.weight.normal_(0.0, init_scale)
                self.head.bias.zero_()
            elif init == "uniform":
                self.head.weight.uniform_(-init_scale, init_scale)
                self.head.bias.uniform_(-init_scale, init_scale)
                if self.embedding is not None:
                    # word_language_model's scheme; otherwise the embedding keeps nn.Embedding's N(0, 1).
                    self.embedding.weight.uniform_(-init_scale, init_scale)
        if config.tie_weights:
            # One Parameter under both names: it is drawn as the head is (small, like the
            # seeds' output layer), trained by both uses, and stored under both keys.
            self.embedding.weight = self.head.weight
        self.regularisers = regularisers.build(config)  # no weights of their own: no state_dict keys

    @property
    def num_states(self) -> int:
        return self.cells[0].num_states

    def begin_state(self, batch_size: int, device=None, dtype=None) -> State:
        """All-zero state: ``num_states`` tensors of shape (L, B, H)."""
        return tuple(self.head.weight.new_zeros(self.num_layers, batch_size, self.hidden_size, device=device,
                                                dtype=dtype) for _ in range(self.num_states))

    def draw(self) -> tuple[list[Regulariser], list[Tensor]]:
        """The regularisers at work in this forward call (none in eval mode), this chunk's masks
        drawn, and each layer's W_hh for the chunk: the parameter or the regularisers' copy of it.
        Both paths call it before drawing anything else: under one seed a test can too."""
        active = self.regularisers if self.training else []
        for regulariser in active:
            regulariser.draw(self)
        return active, [self._hook(active, "weight_hh", cell.weight_hh, layer) for layer, cell in enumerate(self.cells)]

    @staticmethod
    def _hook(active: list[Regulariser], hook: str, x: Tensor, *where) -> Tensor:
        """x through every active regulariser's ``hook``."""
        for regulariser in active:
            x = getattr(regulariser, hook)(x, *where)
        return x

    def _project_first_layer(self, ids: Tensor, active: list[Regulariser] = ()) -> Tensor:
        """First layer's input projection for any shape of ids: (...) -> (..., G*H)."""
        first: RecurrentCell = self.cells[0]
        if self.embedding is not None:
            return first.project_input(self.embedding_dropout(self._hook(active, "rows", self.embedding(ids), ids)))
        # one_hot(ids) @ W_ih^T just picks row `id` of W_ih^T, so gathering those rows
        # (an embedding lookup with W_ih^T as the table) gives the same numbers without
        # building a (T, B, V) tensor of zeros or spending a V-wide matmul on it.
        picked = F.embedding(ids, first.weight_ih.t())  # weight_ih.t(): (V, G*H) -> (..., G*H)
        return self._hook(active, "rows", picked, ids) + first.bias_ih

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> logits (B, T, V) and the final state (each (L, B, H))."""
        hidden, state = self.features(ids, state)  # (B, T, H)
        return linear(hidden, self.head.weight, self.head.bias), state  # self.head(hidden), on oneDNN where faster

    def loss(self, ids: Tensor, targets: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Mean cross-entropy of predicting targets (B, T) from ids (B, T), and the final state:
        ``F.cross_entropy(forward(ids, state)[0], targets)`` with the head and the loss fused (head.py)."""
        loss, _, state = self.objective(ids, targets, state)
        return loss, state

    def objective(self, ids: Tensor, targets: Tensor, state: State | None = None) -> tuple[Tensor, Tensor, State]:
        """(``loss``, what training differentiates, the final state): the loss plus the regularisers'
        penalties (AR/TAR) in train mode, the loss itself where there are none."""
        raw, state = self.raw_features(ids, state)  # (B, T, H)
        hidden = self.output_dropout(raw)  # (B, T, H)
        loss = objective = linear_cross_entropy(hidden, self.head.weight, self.head.bias, targets)
        for regulariser in self.regularisers if self.training else []:
            penalty = regulariser.penalty(raw, hidden)
            objective = objective if penalty is None else objective + penalty
        return loss, objective, state

    def features(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> the last layer's outputs after output dropout (B, T, H), what the head
        reads, and the final state."""
        raw, state = self.raw_features(ids, state)  # (B, T, H)
        return self.output_dropout(raw), state

    def raw_features(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """`features` before the output dropout: the last layer's outputs themselves (B, T, H),
        which temporal activation regularisation (regularisers/ar_tar.py) penalises."""
        state = self.begin_state(ids.size(0), device=ids.device) if state is None else state
        active, weights_hh = self.draw()
        layer_input_proj = self._project_first_layer(ids.t(), active)  # (T, B, G*H)
        final_states = []
        for layer, cell in enumerate(self.cells):
            if layer > 0:
                # The input half of every step of this layer in one matmul.
                layer_input_proj = cell.project_input(self.dropout(layer_output))  # (T, B, G*H)
            layer_state = tuple(s[layer] for s in state)  # each (B, H)
            # The projection is this loop's own: the cell may write its gates over it (fused.py).
            layer_output, layer_state = cell.sequence(layer_input_proj, layer_state, weights_hh[layer],
                                                      overwrite=True)  # (T, B, H)
            final_states.append(layer_state)

        # Back to batch-first so the logits come out contiguous (B, T, V).
        return layer_output.transpose(0, 1), self._stack_layers(final_states)  # (B, T, H)

    def forward_reference(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Same result as ``forward``, computed literally as the seeds do: for every step,
        an explicit one-hot (or embedding) through ``cell.forward`` layer after layer, then
        the head. Slow; it exists to check ``forward`` against."""
        if self.training and self.config.locked_dropout:
            # Step by step there is no sequence to share a mask over.
            raise ValueError("forward_reference cannot apply locked dropout step by step: "
                             "call model.eval() first or build the model with locked_dropout=False")
        state = self.begin_state(ids.size(0), device=ids.device) if state is None else state
        active, weights_hh = self.draw()  # once for the chunk, as in `features`
        layer_states = [tuple(s[layer] for s in state) for layer in range(self.num_layers)]  # L x (each (B, H))
        logits = []
        for t in range(ids.size(1)):
            if self.embedding is None:
                x = self._hook(active, "rows", F.one_hot(ids[:, t], self.vocab_size).to(self.head.weight.dtype),
                               ids[:, t])  # (B, V)
            else:
                x = self.embedding_dropout(self._hook(active, "rows", self.embedding(ids[:, t]), ids[:, t]))  # (B, E)
            for layer, cell in enumerate(self.cells):
                if layer > 0:
                    x = self.dropout(x)
                layer_states[layer] = cell(x, layer_states[layer], weights_hh[layer])
                x = layer_states[layer][0]  # (B, H)
            logits.append(self.head(self.output_dropout(x)))  # (B, V)
        return torch.stack(logits, dim=1), self._stack_layers(layer_states)  # (B, T, V)

    def _stack_layers(self, per_layer: list[State]) -> State:
        """L tuples of (B, H) -> ``num_states`` tensors of (L, B, H)."""
        return tuple(torch.stack(states) for states in zip(*per_layer))
