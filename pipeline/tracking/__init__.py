"""Experiment tracking: one MLflow run per stage, nested under one parent run per pipeline
execution, injected into stages as a ``logger``.

A stage's ``run(...)`` receives a logger object and never imports MLflow itself, so tests pass a
:class:`RecordingLogger` and assert on what was logged. ``pipeline.stage.stage_main`` opens the
real run with :func:`stage_run` and hands the stage's result to :func:`report_result`::

    with stage_run("prepare", {"data": data, "prepare": prepare}) as logger:
        result = run(data, prepare, out, logger)
        report_result("prepare", result, logger, model=None, headline_file=...)

What a stage's run gets, and from which module of this package:

- its parent: the run of the pipeline execution the process belongs to (``ccvs repro``, ``dvc
  repro``, ``dvc exp run``, ``ccvs pipeline``; ``context``), with the params of params.yaml, the
  headline metrics of every stage and links to the runs of the stages DVC skipped (``run_tree``);
  a stage run by hand has no parent;
- the tags ``stage``, ``git_commit``, ``pipeline_id`` and its process (host, pid, start time), so a
  run whose process died is marked ``KILLED`` when the next stage starts, and a resumed training
  continues the curve of the run it resumes (``interruption``);
- its headline metrics as ``<stage>/<name>``, also written to ``metrics/headline/<stage>.json``
  for ``dvc exp show`` (``headline``); its model as an MLflow model (``models``);
- an experiment set up to open on its runs with useful columns (``experiment``).

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.uri`` of params.yaml
(``sqlite:///mlflow.db``: MLflow 3 refuses the plain ``./mlruns`` file store). ``CCVS_TRACKING=off``
runs a stage without MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from pipeline.params import TrackingParams, flatten, load_section
from pipeline.tracking import context
from pipeline.tracking.headline import headline, write_headline
from pipeline.tracking.run_tree import ID_TAG, ROLE_TAG, param_value

log = logging.getLogger(__name__)

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
    """Forwards to the active MLflow run. Non-finite metrics are skipped with a warning.

    ``on_tag(key, value)`` is called after each tag is set (the stage run watches the training
    loop's resume tag, ``pipeline.tracking.interruption``); ``tags`` holds the tags set so far."""

    def __init__(self, mlflow_module: Any, on_tag: Callable[[str, str], None] | None = None
                 ) -> None:
        self._mlflow = mlflow_module
        self._on_tag = on_tag
        self.tags: dict[str, str] = {}
        self.headline: dict[str, float] = {}  # set by report_result

    def log_params(self, params: dict[str, Any]) -> None:
        flat = {k: param_value(v) for k, v in flatten(params).items()}
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
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        text = {k: str(v) for k, v in tags.items()}
        self._mlflow.set_tags(text)
        self.tags.update(text)
        if self._on_tag is not None:
            for key, value in text.items():
                self._on_tag(key, value)


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


def _tracking_params(params_path: str | Path) -> TrackingParams:
    try:
        return load_section("tracking", params_path)
    except Exception:  # noqa: BLE001 - tracking must not stop a stage that has its own params
        return TrackingParams(uri="sqlite:///mlflow.db", experiment="ccvs")


def tracking_off() -> bool:
    return os.environ.get("CCVS_TRACKING", "").lower() in ("off", "0", "false", "none")


def tracking_uri(params_path: str | Path = "params.yaml", root: str | Path = ".") -> str:
    """``MLFLOW_TRACKING_URI``, else params' ``tracking.uri``; a relative sqlite path is taken
    from the DVC project's root (``DVC_ROOT``: ``dvc exp run --temp`` runs stages in a copy whose
    database would be thrown away), else from ``root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or _tracking_params(params_path).uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        base = Path(os.environ.get("DVC_ROOT") or root).resolve()
        uri = prefix + str(base / uri[len(prefix):])
    return uri


def open_tracking(params_path: str | Path = "params.yaml", root: str | Path = ".") -> tuple[Any, str]:
    """(an MlflowClient of the pipeline's store, the pipeline's experiment id), the experiment
    created and set up if needed (``pipeline.tracking.experiment``)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a stage's log
    import mlflow

    from pipeline.tracking.experiment import ensure_experiment

    uri = tracking_uri(params_path, root)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    return client, ensure_experiment(client, _tracking_params(params_path).experiment)


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




def _params_doc(params_path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _warn(what: str, err: BaseException) -> None:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    print(f"tracking: {what} failed ({first}); the stage's own results are unaffected",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled Prefect task, ``kill``) raises KeyboardInterrupt, so the run ends
    KILLED instead of staying RUNNING (the training loop installs its own clean-stop handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"{signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stage_params(stage: str, params: Any) -> dict[str, Any]:
    if isinstance(params, dict):
        return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                for k, v in params.items()}
    if dataclasses.is_dataclass(params):
        return {stage: dataclasses.asdict(params)}
    return {stage: params}


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Any,
    *,
    params_path: str | Path = "params.yaml",
    tags: dict[str, Any] | None = None,
) -> Iterator[Logger]:
    """Open one MLflow run for ``stage`` (nested under its pipeline execution's parent run, see
    the module docstring), log its params (flattened, ``prepare.clip_length``) and standard tags,
    and yield a :class:`Logger`. The run ends ``FINISHED``, ``FAILED`` on an exception, ``KILLED``
    on Ctrl-C / SIGTERM.

    Set ``CCVS_TRACKING=off`` to run a stage without MLflow (a :class:`RecordingLogger`).
    """
    flat_params = _stage_params(stage, params)
    ctx = context.current()
    run_tags = {"stage": stage, "git_commit": git_commit(), ROLE_TAG: "stage"}
    if ctx is not None:
        run_tags[ID_TAG] = ctx.id
    run_tags.update(tags or {})

    # Under torchrun only rank 0 records a run; the other ranks log into memory.
    other_rank = os.environ.get("RANK", "0") not in ("", "0")
    if other_rank or tracking_off():
        logger = RecordingLogger()
        logger.log_params(flat_params)
        logger.set_tags(run_tags)
        yield logger
        report_peak_memory(stage, logger)
        return

    import mlflow

    from pipeline.tracking import interruption, run_tree

    client, experiment_id = open_tracking(params_path)
    parent_id = None
    try:
        interruption.close_dead_runs(client, experiment_id)
        if ctx is not None:
            parent_id = run_tree.open_parent(client, experiment_id, ctx,
                                             _params_doc(params_path),
                                             {"git_commit": run_tags["git_commit"]})
            run_tree.stage_started(client, parent_id, ctx, stage)
    except Exception as err:  # noqa: BLE001 - the stage runs (and logs its own run) regardless
        _warn("finding the pipeline run", err)
    run_tags.update(context.Owner.of().tags())
    mlflow.set_experiment(experiment_id=experiment_id)
    run = mlflow.start_run(run_name=stage, tags=run_tags, parent_run_id=parent_id)
    run_id = run.info.run_id

    def on_tag(key: str, value: str) -> None:
        if not key.startswith("train_loop."):
            return
        from pipeline.training.loop import RESUMED_CHECKPOINT_TAG

        if key == RESUMED_CHECKPOINT_TAG:
            step = int(logger.tags.get("train_loop.resumed_from", "0"))
            try:
                old = interruption.continue_curves(client, run_id, experiment_id, value, step)
            except Exception as err:  # noqa: BLE001 - a tracking hiccup must not stop training
                _warn("linking the resumed run", err)
                return
            if old:
                print(f"{stage}: resumed the training of MLflow run {old} (its curves up to step "
                      f"{step} are copied into run {run_id})", file=sys.stderr, flush=True)

    logger = MlflowLogger(mlflow, on_tag=on_tag)
    status = "FAILED"
    try:
        with _sigterm_as_interrupt():
            logger.log_params(flat_params)
            if parent_id is not None:
                try:
                    run_tree.link_skipped(client, experiment_id, parent_id, ctx.root)
                except Exception as err:  # noqa: BLE001 - see above
                    _warn("linking the skipped stages", err)
            yield logger
            report_peak_memory(stage, logger)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status)
        if parent_id is not None:
            try:
                run_tree.stage_ended(client, experiment_id, parent_id, ctx, stage, run_id,
                                     logger.headline, status)
            except Exception as err:  # noqa: BLE001 - never mask the stage's own outcome
                _warn("updating the pipeline run", err)


def report_result(stage: str, result: Any, logger: Any, *, model: str | Path | None = None,
                  headline_file: str | Path | None = None) -> dict[str, float]:
    """After a successful ``run``: the stage's headline metrics (``pipeline.tracking.headline``) go
    to ``headline_file`` (the DVC metric) and, under MLflow, to the run as ``<stage>/<name>``
    (the parent gets them when the run ends); the ``model`` file is logged
    (``pipeline.tracking.models``). Returns the headline metrics."""
    metrics = headline(stage, result)
    if headline_file is not None and os.environ.get("RANK", "0") in ("", "0"):
        write_headline(headline_file, stage, metrics)
    if not isinstance(logger, MlflowLogger):
        return metrics
    logger.headline = metrics
    import mlflow

    from pipeline.tracking.run_tree import log_headline

    run = mlflow.active_run()
    if run is None:
        return metrics
    client = mlflow.MlflowClient()
    log_headline(client, run.info.run_id, stage, metrics)
    if model is not None and Path(model).is_file():
        from pipeline.tracking.models import log_stage_model

        try:
            log_stage_model(stage, model, run.info.experiment_id, logger.tags.get(
                "git_commit", git_commit()))
        except Exception as err:  # noqa: BLE001 - the model file itself is written and fine
            _warn(f"logging {model} to MLflow", err)
            logger.set_tag("ccvs.model_error", str(err).strip().splitlines()[0][:500])
    return metrics


def finish_pipeline(env: dict[str, str], status: str, root: str | Path = "."
                    ) -> tuple[str, str | None] | None:
    """A wrapper (``ccvs repro``, the flow) ends the execution it started with ``env``
    (``context.wrapper_env``): the stages that did not run are linked, dead runs closed, the parent
    ended with ``status``. Returns (experiment id, parent run id or None), or None when tracking
    is off."""
    if tracking_off():
        return None
    from pipeline.tracking import interruption, run_tree

    ctx = context.current(env, root)
    uri = tracking_uri(Path(root) / "params.yaml", root)
    if ctx is None or (uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists()):
        return None  # no stage logged anything (a project without our stages, or nothing ran)
    try:
        client, experiment_id = open_tracking(Path(root) / "params.yaml", root)
        interruption.close_dead_runs(client, experiment_id)
        return experiment_id, run_tree.finish(client, experiment_id, ctx, status)
    except Exception as err:  # noqa: BLE001 - the pipeline's outcome stands
        _warn("closing the pipeline run", err)
        return None
