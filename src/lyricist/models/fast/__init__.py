"""The fast path of the models beside the readable one (models/cells.py, models/lm.py), which import
it from here: whole-chunk recurrences with hand-written backward (fused; the LSTM's and GRU's steps
compiled from csrc/ by kernels), products on the backend measured fastest here (matmul, choice),
the head fused with cross-entropy (head), on/off switches (switch). Tests hold every piece to the
readable path. Imports nothing else of lyricist; inside: switch <- kernels <- choice <- matmul."""

from lyricist.models.fast.fused import GRUSequence, LSTMSequence, RNNSequence
from lyricist.models.fast.head import linear_cross_entropy
from lyricist.models.fast.matmul import linear
