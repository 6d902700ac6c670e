"""The fast path beside the readable one (docs/speed.md: two paths, held equal): fused recurrences,
their compiled steps (kernels), measured products (matmul, choice), the fused head. Imports nothing
else of lyricist; inside: kernels <- choice <- matmul <- head, fused."""

from lyricist.models.fast.fused import GRUSequence, LSTMSequence, RNNSequence
from lyricist.models.fast.head import linear_cross_entropy
from lyricist.models.fast.matmul import linear
