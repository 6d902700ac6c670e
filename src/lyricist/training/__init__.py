"""Lightning around the plain models: one training run (run), its data, module and recorders (README's Layout)."""
