"""Character-level recurrent language model built from the hand-written cells.

Shapes: B batch, T time steps, V vocabulary, E embedding, H hidden, L layers, G gates per cell. Ids
come in batch-first (B, T) and logits go out (B, T, V), as the batches and the loss have them;
inside, everything is time-major (T, B, ...), as the recurrence walks T. The state is torch.nn's:
``num_states`` tensors (L, B, H). Two equal paths, held to each other by the tests: ``forward``
(every step's input projection in one product, each layer's recurrence in one fused Function, the
head over all steps in one product) and ``forward_reference`` (literal, as the seeds).
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
    """`model` in eval mode (dropout off) inside the block, back in its own mode after, even on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class RecurrentLM(nn.Module):
    """Embedding (or one-hot, as the seeds) -> ``num_layers`` stacked cells -> linear head, with
    dropout (nn.Dropout or LockedDropout) on the embedding output, between layers and before the
    head, and the other regularisers' hooks. Each setting: settings.ModelSettings."""

    def __init__(self, config: ModelSettings, vocab_size: int):
        super().__init__()
        self.config = config  # stored in checkpoints (model_dump), what RecurrentLM(config, V) rebuilds from
        self.vocab_size, self.hidden_size, self.num_layers = vocab_size, config.hidden_size, config.num_layers
        init, scale, dropout = config.init, config.init_scale, config.dropout
        self.embedding = None if config.embedding_size is None else nn.Embedding(vocab_size, config.embedding_size)
        input_size = config.embedding_size or vocab_size  # one-hot input: V wide
        cell_kwargs = dict(init=init, init_scale=scale)
        if config.forget_bias is not None:
            cell_kwargs["forget_bias"] = config.forget_bias
        self.cells = nn.ModuleList(make_cell(config.cell, input_size if layer == 0 else self.hidden_size,
                                             self.hidden_size, **cell_kwargs) for layer in range(self.num_layers))
        self.num_states = self.cells[0].num_states  # 1: (h,), 2: the LSTM's (h, c)
        # Time is dim 0 of the embedding and of a layer's outputs (T, B, .), dim 1 of the
        # head's input (B, T, H); nn.Dropout ignores it.
        def make_dropout(rate: float | None, time_dim: int) -> nn.Module:
            rate = dropout if rate is None else rate
            return LockedDropout(rate, time_dim) if config.locked_dropout else nn.Dropout(rate)

        self.embedding_dropout = make_dropout(config.embedding_dropout, time_dim=0)
        self.dropout = make_dropout(dropout, time_dim=0)  # between layers
        self.output_dropout = make_dropout(config.output_dropout, time_dim=1)
        self.head = nn.Linear(self.hidden_size, vocab_size)
        # The seeds draw the output layer like the recurrent weights (N(0, 0.01^2), zero bias),
        # so the head follows `init`; "torch" keeps nn.Linear's own default.
        with torch.no_grad():
            if init == "normal":
                self.head.weight.normal_(0.0, scale)
                self.head.bias.zero_()
            elif init == "uniform":
                self.head.weight.uniform_(-scale, scale)
                self.head.bias.uniform_(-scale, scale)
                if self.embedding is not None:
                    # word_language_model's scheme; otherwise the embedding keeps nn.Embedding's N(0, 1).
                    self.embedding.weight.uniform_(-scale, scale)
        if config.tie_weights:
            # One Parameter under both names: drawn as the head is, trained by both uses, stored under both keys.
            self.embedding.weight = self.head.weight
        self.regularisers = regularisers.build(config)  # no weights of their own: no state_dict keys

    def begin_state(self, batch_size: int, device=None, dtype=None) -> State:
        """All-zero state: ``num_states`` tensors of shape (L, B, H)."""
        return tuple(self.head.weight.new_zeros(self.num_layers, batch_size, self.hidden_size, device=device,
                                                dtype=dtype) for _ in range(self.num_states))

    def draw(self) -> tuple[list[Regulariser], list[Tensor]]:
        """The regularisers at work (none in eval mode), their masks drawn for this chunk, and each
        layer's W_hh for it (the parameter or their copy). Both paths draw this first, so a test can too."""
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
        # one_hot(ids) @ W_ih^T picks row `id` of W_ih^T: gathering those rows gives the same numbers
        # without a (T, B, V) tensor of zeros and a V-wide matmul.
        picked = F.embedding(ids, first.weight_ih.t())  # weight_ih.t(): (V, G*H) -> (..., G*H)
        return self._hook(active, "rows", picked, ids) + first.bias_ih

    def forward(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> logits (B, T, V) and the final state (each (L, B, H))."""
        hidden, state = self.features(ids, state)  # (B, T, H)
        return linear(hidden, self.head.weight, self.head.bias), state  # self.head(hidden), on oneDNN where faster

    def loss(self, ids: Tensor, targets: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``F.cross_entropy(forward(ids, state)[0], targets)``, head and loss fused, and the final state."""
        loss, _, state = self.objective(ids, targets, state)
        return loss, state

    def objective(self, ids: Tensor, targets: Tensor, state: State | None = None) -> tuple[Tensor, Tensor, State]:
        """(``loss``, what training differentiates: the loss plus the penalties in train mode, the final state)."""
        raw, state = self.raw_features(ids, state)  # (B, T, H)
        hidden = self.output_dropout(raw)  # (B, T, H)
        loss = objective = linear_cross_entropy(hidden, self.head.weight, self.head.bias, targets)
        for regulariser in self.regularisers if self.training else []:
            penalty = regulariser.penalty(raw, hidden)
            objective = objective if penalty is None else objective + penalty
        return loss, objective, state

    def features(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """ids (B, T) -> what the head reads (B, T, H): the last layer's outputs after output dropout."""
        raw, state = self.raw_features(ids, state)  # (B, T, H)
        return self.output_dropout(raw), state

    def raw_features(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """`features` before the output dropout (B, T, H), what TAR penalises (regularisers/ar_tar.py)."""
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

        # Back to batch-first so the logits come out contiguous (B, T, V); L states (h[, c]) -> each (L, B, H).
        return layer_output.transpose(0, 1), tuple(map(torch.stack, zip(*final_states)))  # (B, T, H)

    def forward_reference(self, ids: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``forward`` computed literally, as the seeds do: each step's one-hot (or embedding) through
        ``cell.forward`` layer after layer, then the head. Slow: the tests check ``forward`` against it."""
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
        return torch.stack(logits, dim=1), tuple(map(torch.stack, zip(*layer_states)))  # (B, T, V), each (L, B, H)
