"""MLflow: where runs go and how the store is used (store), the model as a pyfunc from code
(serving, model_files, pyfunc_model), the registry and its `champion` alias (registry), the
corpus and system metrics of a run (inputs), the evaluate stage's results (results), and runs ->
plots and tables (compare)."""

import os

# The artifacts live on local disk (mlartifacts/ beside mlflow.db): a copy takes milliseconds, and
# MLflow's progress bar for each (three when a model is logged) is noise. Set it to true to see them.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
