"""The logged pyfunc model's code (MLflow's "models from code"): MLflow copies this file into the model and
runs it at load time, instead of unpickling an object; the class and its files are serving's."""

from mlflow.models import set_model

from lyricist.tracking.serving import LyricsModel

set_model(LyricsModel())
