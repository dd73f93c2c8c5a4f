"""The transformer's MLflow model: controls → tokens (``pipeline.tracking.models.TransformerModel``)."""

from mlflow.models import set_model

from pipeline.tracking.models import TransformerModel

set_model(TransformerModel())
