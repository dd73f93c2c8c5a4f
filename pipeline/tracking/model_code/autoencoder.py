"""The autoencoder's MLflow model: tokens → frames (``pipeline.tracking.models.AutoencoderModel``)."""

from mlflow.models import set_model

from pipeline.tracking.models import AutoencoderModel

set_model(AutoencoderModel())
