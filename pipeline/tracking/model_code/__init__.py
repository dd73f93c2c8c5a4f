"""The code MLflow logs for each of our pyfunc models ("models from code": loading a model runs
its file, which builds the model class of ``pipeline.tracking.models``; nothing is unpickled)."""
