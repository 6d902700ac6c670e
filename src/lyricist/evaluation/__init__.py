"""Held-out numbers of a checkpoint, all run by one evaluator (evaluate.py) from its list of rows."""
