"""The fast path of the models, apart from the readable one (models/cells.py, models/lm.py), and
its one face: what those two use is imported from here.

Whole-chunk recurrences with hand-written backward (fused), the products on the backend measured
fastest on this machine (matmul; the measurement and the backends in choice), the head fused with
cross-entropy (head), the compiled LSTM and GRU steps (kernels, csrc/) and the switch that turns
a piece off (switch). Tests hold every piece equal to the readable path. Imports nothing else of
lyricist; inside, imports point one way: switch <- kernels <- choice <- matmul <- head, fused."""

from lyricist.models.fast.fused import GRUSequence, LSTMSequence, RNNSequence
from lyricist.models.fast.head import linear_cross_entropy
from lyricist.models.fast.matmul import linear

__all__ = ["GRUSequence", "LSTMSequence", "RNNSequence", "linear", "linear_cross_entropy"]
