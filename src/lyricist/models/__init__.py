"""Hand-written recurrent cells and the character-level language model built from them."""

from lyricist.models.cells import CELL_KINDS, GRUCell, LSTMCell, RecurrentCell, RNNCell, make_cell
from lyricist.models.lm import RecurrentLM, eval_mode

__all__ = ["CELL_KINDS", "GRUCell", "LSTMCell", "RNNCell", "RecurrentCell", "RecurrentLM", "eval_mode", "make_cell"]
