"""The fast path of the models, apart from the readable one (models/cells.py, models/lm.py).

Whole-chunk recurrences with hand-written backward (fused), the products on the backend measured
fastest on this machine (matmul, choice), the head fused with cross-entropy (head), the compiled
LSTM and GRU steps (kernels, csrc/) and the switch that turns the fast path off (switch). Tests hold every piece equal to the readable path.
Imports nothing else of lyricist."""
