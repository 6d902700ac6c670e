"""MLflow: where runs go and how the store is used (store), one parent run per sweep (sweep),
the model as a pyfunc (serving), and runs -> plots and tables (compare)."""
