"""MLflow: the store, what a run records, the logged model, the registry, results, runs compared (README's Layout)."""

import os

# The artifacts live on local disk (mlartifacts/ beside mlflow.db): a copy takes milliseconds, and
# MLflow's progress bar for each (three when a model is logged) is noise. Set it to true to see them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
