"""Hand-written recurrent cells (cells.py) and the character-level language model built from them."""

from lyricist.models.lm import RecurrentLM, eval_mode

__all__ = ["RecurrentLM", "eval_mode"]
