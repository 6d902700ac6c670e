"""Lightning around the plain models: the DataModule that batches (datamodule), the
LightningModule that trains (module), and the recorders of a run (callbacks)."""
