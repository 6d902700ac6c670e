"""Experiments over many trainings, on typed settings: a search (search), one recipe over seeds (seeds)."""
