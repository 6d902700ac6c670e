"""The fast path beside the readable one (cells.py, lm.py import it from here), each piece held to it
by the tests: whole-chunk recurrences with hand-written backward (fused; the LSTM's and GRU's steps
compiled from csrc/ by kernels, with the on/off switches), products on the backend measured fastest
here (matmul, choice), the head fused with cross-entropy (head). Imports nothing else of lyricist;
inside: kernels <- choice <- matmul <- head, fused."""

from lyricist.models.fast.fused import GRUSequence, LSTMSequence, RNNSequence
from lyricist.models.fast.head import linear_cross_entropy
from lyricist.models.fast.matmul import linear
