"""Held-out numbers: perplexity of a checkpoint, count-based baselines (ngram), neural + n-gram
interpolation, and dynamic evaluation. The results travel as small dataclasses (metrics)."""
