"""Test session setup: offline, isolated Prefect/MLflow homes, small thread pools; an empty
MLflow store per test (``mlflow_uri``)."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_session_tmp = Path(tempfile.mkdtemp(prefix="ccvs-tests-"))
os.environ["PREFECT_HOME"] = str(_session_tmp / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("CCVS_OFFLINE", "1")  # never try to download weights in tests
os.environ.setdefault("OMP_NUM_THREADS", "2")

try:
    import torch

    torch.set_num_threads(2)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory) -> Path:
    """An empty, migrated MLflow sqlite store (creating one takes seconds: tests copy it)."""
    import mlflow

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(_mlflow_template, tmp_path, monkeypatch) -> str:
    """A fresh MLflow store for this test, as MLFLOW_TRACKING_URI; the test runs in tmp_path (so
    artifacts land there), outside any pipeline execution, with tracking on."""
    db = tmp_path / "mlflow.db"
    shutil.copy(_mlflow_template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for key in ("CCVS_TRACKING", "CCVS_PIPELINE_ID", "CCVS_PIPELINE_OWNER", "DVC_STAGE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    return uri
