"""Experiment tracking: one MLflow run per stage, injected into stages as a ``logger``.

A stage's ``run(...)`` receives a logger object and never imports MLflow itself, so tests pass a
:class:`RecordingLogger` and assert on what was logged. ``main()`` functions open the real run with
:func:`stage_run`::

    with stage_run("prepare", {"data": data, "prepare": prepare}) as logger:
        run(data, prepare, out, logger)

Each run carries the tags ``stage``, ``git_commit`` and ``pipeline_id``. The pipeline id is shared
by every stage of one ``dvc repro`` (or one Prefect flow run) so the MLflow UI can group them:
``CCVS_PIPELINE_ID`` when set (the Prefect flow and ``ccvs repro`` set it), otherwise derived from
the ``dvc`` process that launched the stage (its pid and start time), otherwise a fresh id.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.uri`` of params.yaml
(``sqlite:///mlflow.db``: MLflow 3 refuses the plain ``./mlruns`` file store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import subprocess
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Protocol

from pipeline.params import TrackingParams, flatten, load_section

log = logging.getLogger(__name__)

# MLflow rejects param values longer than this; longer ones are cut with a marker.
_MAX_PARAM_LEN = 6000


class Logger(Protocol):
    """What a stage may log (the subset of MLflow a stage needs)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metric(self, name: str, value: float, step: int | None = None) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tag(self, key: str, value: Any) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...


class RecordingLogger:
    """A logger that only records calls in memory (tests, dry runs)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int | None, float]]] = defaultdict(list)
        self.artifacts: list[tuple[str, str | None]] = []
        self.tags: dict[str, str] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(flatten(params))

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        self.metrics[name].append((step, float(value)))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            self.log_metric(name, value, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"artifact {path} does not exist")
        self.artifacts.append((str(path), artifact_path))

    def set_tag(self, key: str, value: Any) -> None:
        self.tags[key] = str(value)

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.set_tag(key, value)

    def last(self, name: str) -> float:
        """The last value logged for metric ``name``."""
        return self.metrics[name][-1][1]


class MlflowLogger:
    """Forwards to the active MLflow run. Non-finite metrics are skipped with a warning."""

    def __init__(self, mlflow_module: Any) -> None:
        self._mlflow = mlflow_module

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: _param_value(v) for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow batches at most 100 params per call
            self._mlflow.log_params(dict(items[i : i + 100]))

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            log.warning("metric %s is not finite (%s) at step %s: not logged", name, value, step)
            return
        self._mlflow.log_metric(_metric_name(name), value, step=step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for name, value in metrics.items():
            self.log_metric(name, value, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        self._mlflow.set_tag(key, str(value))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."


def _metric_name(name: str) -> str:
    # MLflow allows alphanumerics, _ - . space / ; keep names like "prediction/ssim_t8".
    return "".join(ch if ch.isalnum() or ch in "_-./ " else "_" for ch in name)


def git_commit(cwd: str | Path | None = None) -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _dvc_ancestor() -> str | None:
    """``dvc-<pid>-<start>`` of the nearest ancestor process running dvc, if any."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with our dependencies
        return None
    try:
        proc = psutil.Process().parent()
        while proc is not None and proc.pid > 1:
            cmd = " ".join(proc.cmdline()).lower()
            if "dvc" in Path(proc.cmdline()[0]).name.lower() or " -m dvc" in cmd or "/dvc " in cmd:
                return f"dvc-{proc.pid}-{int(proc.create_time())}"
            proc = proc.parent()
    except (psutil.Error, IndexError, OSError):
        return None
    return None


def pipeline_id() -> str:
    """The id shared by all stage runs of one ``dvc repro`` / flow run (see module docstring)."""
    env = os.environ.get("CCVS_PIPELINE_ID")
    if env:
        return env
    return _dvc_ancestor() or f"single-{uuid.uuid4().hex[:12]}"


def _tracking_params(params_path: str | Path) -> TrackingParams:
    try:
        return load_section("tracking", params_path)
    except Exception:  # noqa: BLE001 - tracking must not stop a stage that has its own params
        return TrackingParams(uri="sqlite:///mlflow.db", experiment="ccvs")


def peak_rss_mb() -> float:
    """Peak resident memory of this process and of its finished children, in MB (Linux: ru_maxrss
    is in kB; macOS: bytes)."""
    import resource
    import sys

    scale = 1 / 1024**2 if sys.platform == "darwin" else 1 / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) * scale


def report_peak_memory(stage: str, logger: Any) -> None:
    """Print the stage's peak memory and log it as the ``peak_rss_mb`` metric."""
    peak = peak_rss_mb()
    print(f"{stage}: peak memory {peak:.0f} MB", flush=True)
    logger.log_metric("peak_rss_mb", peak)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Any,
    *,
    params_path: str | Path = "params.yaml",
    tags: dict[str, Any] | None = None,
) -> Iterator[Logger]:
    """Open one MLflow run for ``stage``, log its params (flattened, ``prepare.clip_length``)
    and standard tags, and yield a :class:`Logger`. The run is marked FAILED on an exception.

    Set ``CCVS_TRACKING=off`` to run a stage without MLflow (a :class:`RecordingLogger`).
    """
    if isinstance(params, dict):
        flat_params = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                       for k, v in params.items()}
    elif dataclasses.is_dataclass(params):
        flat_params = {stage: dataclasses.asdict(params)}
    else:
        flat_params = {stage: params}
    run_tags = {"stage": stage, "git_commit": git_commit(), "pipeline_id": pipeline_id()}
    run_tags.update(tags or {})

    # Under torchrun only rank 0 records a run; the other ranks log into memory.
    other_rank = os.environ.get("RANK", "0") not in ("", "0")
    if other_rank or os.environ.get("CCVS_TRACKING", "").lower() in ("off", "0", "false", "none"):
        logger = RecordingLogger()
        logger.log_params(flat_params)
        logger.set_tags(run_tags)
        yield logger
        report_peak_memory(stage, logger)
        return

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    cfg = _tracking_params(params_path)
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri)
    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name=f"{stage}", tags=run_tags):
        logger = MlflowLogger(mlflow)
        logger.log_params(flat_params)
        yield logger
        report_peak_memory(stage, logger)
