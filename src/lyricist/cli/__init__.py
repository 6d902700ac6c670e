"""The entry layer: the commands (train, tune, seeds, generate, settings; the DVC stage scripts use
config.py) and the only code that composes conf/ (Hydra), reads a DictConfig or parses arguments."""
