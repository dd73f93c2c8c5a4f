"""One MLflow parent run per pipeline execution, with a child run per stage that ran.

The parent is created by the first stage process of an execution that needs it (a file lock
serializes parallel branches of the Prefect flow) and found again by the others through its tag
``pipeline_id`` (``pipeline.tracking.context``). It carries:

- the params that define the pipeline: every key of params.yaml, flattened (``prepare.clip_length``);
- the headline metrics of every stage (``<stage>/<name>``, ``pipeline.tracking.headline``): those
  of the stages that ran, and those of the run that produced the outputs of each stage DVC
  skipped, which is linked by the tag ``ccvs.skipped.<stage>`` (its run id), so every parent is
  complete and two parents compare as two rows;
- ``ccvs.stage.<stage>``: the child run of each stage that ran; a Markdown table in its description
  (``mlflow.note.content``) with a link per stage.

Which run produced a skipped stage's outputs: DVC records the hashes of each stage's outputs in
``dvc.lock`` after the stage's command exits. :func:`record_outputs` gives the newest finished
stage run of each stage the signature of its ``dvc.lock`` entry (tag ``ccvs.outs``) once the lock
was written after it ended; a skipped stage's producer is then the run whose ``ccvs.outs`` is the
current lock entry's (also when DVC restored the outputs from its run cache).

Status: a wrapper (``ccvs repro``, the flow) ends the parent itself (:func:`finish`). Under a plain
``dvc repro`` nobody outlives the last stage, so each stage process ends the parent when it ends
(``FINISHED``; ``FAILED``/``KILLED`` when the stage failed or was stopped) and the next stage of
the same execution sets it back to ``RUNNING``: after the last stage the parent is ``FINISHED``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.dag import outs_signature, read_lock, stage_names
from pipeline.params import flatten
from pipeline.tracking.context import PipelineContext
from pipeline.tracking.experiment import run_url
from pipeline.tracking.headline import round_significant

ROLE_TAG, KIND_TAG, STAGE_TAG, ID_TAG = "ccvs.role", "ccvs.kind", "stage", "pipeline_id"
OUTS_TAG = "ccvs.outs"
SKIPPED_PREFIX, CHILD_PREFIX = "ccvs.skipped.", "ccvs.stage."
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"
NO_PRODUCER = "none recorded"  # a skipped stage whose outputs no tracked run produced
_MAX_PARAM_LEN = 6000


def _q(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


@contextlib.contextmanager
def _lock(key: str) -> Iterator[None]:
    """A lock shared by the processes of this machine, one per ``key``."""
    folder = Path(tempfile.gettempdir()) / "ccvs-mlflow-locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha1(key.encode()).hexdigest()[:16] + ".lock")
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def find_parent(client: Any, experiment_id: str, pipeline_id: str) -> Any | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{ROLE_TAG}` = 'pipeline' and tags.{ID_TAG} = {_q(pipeline_id)}",
        max_results=1)
    return runs[0] if runs else None


def flat_params(doc: Mapping[str, Any]) -> dict[str, str]:
    """A params.yaml document → ``{"section.key": "value"}`` (lists kept whole)."""
    return {key: param_value(value) for key, value in flatten(dict(doc)).items()}


def param_value(value: Any) -> str:
    """``value`` as an MLflow param (longer values than MLflow accepts are cut with a marker)."""
    text = str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."


def open_parent(client: Any, experiment_id: str, ctx: PipelineContext,
                params_doc: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """The id of the parent run of ``ctx`` (created, with the params, on first use)."""
    from mlflow.entities import Param

    with _lock(f"{client.tracking_uri}|{experiment_id}|{ctx.id}"):
        found = find_parent(client, experiment_id, ctx.id)
        if found is not None:
            return found.info.run_id
        all_tags = {ROLE_TAG: "pipeline", KIND_TAG: ctx.kind, ID_TAG: ctx.id,
                    "mlflow.runName": ctx.name, **dict(tags)}
        if ctx.owner is not None:
            all_tags.update(ctx.owner.tags())
        run = client.create_run(experiment_id, run_name=ctx.name, tags=all_tags)
        params = [Param(k, v) for k, v in sorted(flat_params(params_doc).items())]
        for i in range(0, len(params), 100):  # MLflow's batch limit for params
            client.log_batch(run.info.run_id, params=params[i:i + 100])
        return run.info.run_id


def stage_started(client: Any, parent_id: str, ctx: PipelineContext, stage: str) -> None:
    """A stage of the execution starts: the parent runs (again) and no longer links the stage as
    skipped."""
    parent = client.get_run(parent_id)
    if not ctx.wrapped and parent.info.status != "RUNNING":
        client.update_run(parent_id, status="RUNNING")
    if SKIPPED_PREFIX + stage in parent.data.tags:
        client.delete_tag(parent_id, SKIPPED_PREFIX + stage)


def log_headline(client: Any, run_id: str, stage: str, metrics: Mapping[str, float]) -> None:
    """``stage``'s headline metrics on ``run_id`` as ``<stage>/<name>`` (latest value wins)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(f"{stage}/{name}", round_significant(value), now, 0)
             for name, value in sorted(metrics.items())]
    for i in range(0, len(batch), 1000):
        client.log_batch(run_id, metrics=batch[i:i + 1000])


def stage_ended(client: Any, experiment_id: str, parent_id: str, ctx: PipelineContext,
                stage: str, run_id: str, headline: Mapping[str, float], status: str) -> None:
    """A stage's run ended: its headline metrics and run id go to the parent, the skipped stages
    are linked, and (without a wrapper) the parent ends with the stage's status."""
    if headline:
        log_headline(client, parent_id, stage, headline)
    client.set_tag(parent_id, CHILD_PREFIX + stage, run_id)
    link_skipped(client, experiment_id, parent_id, ctx.root)
    if not ctx.wrapped:
        client.set_terminated(parent_id, status)


def children(client: Any, experiment_id: str, parent_id: str) -> dict[str, Any]:
    """stage → its newest child run under ``parent_id``."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = {_q(parent_id)}",
                              order_by=["attributes.start_time ASC"], max_results=1000)
    return {r.data.tags.get(STAGE_TAG, r.info.run_name): r for r in runs}


def record_outputs(client: Any, experiment_id: str, root: Path) -> None:
    """Tag the newest finished run of each stage of an execution with the signature of its
    ``dvc.lock`` entry, when the lock was written after the run ended (see the module docstring)."""
    lock = read_lock(root)
    for stage, entry in lock.stages.items():
        sig = outs_signature(entry)
        if sig is None:
            continue
        runs = client.search_runs(
            [experiment_id],
            filter_string=(f"tags.{STAGE_TAG} = {_q(stage)} and tags.`{ROLE_TAG}` = 'stage' "
                           f"and attributes.status = 'FINISHED'"),
            order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            continue
        run = runs[0]
        if (ID_TAG in run.data.tags and OUTS_TAG not in run.data.tags
                and run.info.end_time and run.info.end_time <= lock.mtime * 1000):
            client.set_tag(run.info.run_id, OUTS_TAG, sig)


def producer(client: Any, experiment_id: str, stage: str, signature: str | None) -> Any | None:
    """The newest finished run of ``stage`` that produced the outputs with ``signature``."""
    return None if signature is None else stage_run_of(client, experiment_id, stage, OUTS_TAG,
                                                         signature)


def link_skipped(client: Any, experiment_id: str, parent_id: str, root: Path) -> None:
    """Link every stage of dvc.yaml that has no child under ``parent_id`` to the run that produced
    its current outputs (tag ``ccvs.skipped.<stage>`` + its headline metrics), then rewrite the
    parent's description."""
    record_outputs(client, experiment_id, root)
    lock = read_lock(root)
    parent = client.get_run(parent_id)
    ran = children(client, experiment_id, parent_id)
    for stage in stage_names(root):
        if stage in ran:
            continue
        found = producer(client, experiment_id, stage, outs_signature(lock.stages.get(stage, {})))
        value = found.info.run_id if found is not None else NO_PRODUCER
        if parent.data.tags.get(SKIPPED_PREFIX + stage) == value:
            continue
        client.set_tag(parent_id, SKIPPED_PREFIX + stage, value)
        if found is not None:
            prefix = f"{stage}/"
            log_headline(client, parent_id, stage,
                         {k[len(prefix):]: v for k, v in found.data.metrics.items()
                          if k.startswith(prefix)})
    describe(client, experiment_id, parent_id, root)


def describe(client: Any, experiment_id: str, parent_id: str, root: Path) -> None:
    """The parent's description: a Markdown table, one row per stage, with a link to its run."""
    parent = client.get_run(parent_id)
    ran = children(client, experiment_id, parent_id)
    rows = ["| stage | | run | headline metrics |", "|---|---|---|---|"]
    metrics = parent.data.metrics
    for stage in stage_names(root) or sorted(ran):
        if stage in ran:
            run = ran[stage]
            what = {"FINISHED": "ran", "RUNNING": "running"}.get(run.info.status,
                                                                  run.info.status.lower())
            link = f"[{run.info.run_id[:8]}]({run_url(experiment_id, run.info.run_id)})"
        else:
            skipped = parent.data.tags.get(SKIPPED_PREFIX + stage)
            if skipped is None:
                what, link = "not run yet", ""
            elif skipped == NO_PRODUCER:
                what, link = "skipped by DVC", NO_PRODUCER
            else:
                what = "skipped by DVC"
                link = f"[{skipped[:8]}]({run_url(experiment_id, skipped)}) (produced its outputs)"
        prefix = f"{stage}/"
        shown = ", ".join(f"{k[len(prefix):]} {v:.4g}" for k, v in sorted(metrics.items())
                          if k.startswith(prefix))
        rows.append(f"| {stage} | {what} | {link} | {shown} |")
    kind = parent.data.tags.get(KIND_TAG, "pipeline")
    note = f"**{kind}** `{parent.data.tags.get(ID_TAG, '')}`\n\n" + "\n".join(rows) + "\n"
    if parent.data.tags.get(NOTE_TAG) != note:
        client.set_tag(parent_id, NOTE_TAG, note)


def finish(client: Any, experiment_id: str, ctx: PipelineContext, status: str) -> str | None:
    """A wrapper's end: link the stages that did not run, end the parent with ``status``; returns
    its id (None when no stage opened one: nothing ran, or tracking was off)."""
    parent = find_parent(client, experiment_id, ctx.id)
    if parent is None:
        return None
    link_skipped(client, experiment_id, parent.info.run_id, ctx.root)
    client.set_terminated(parent.info.run_id, status)
    return parent.info.run_id


def stage_run_of(client: Any, experiment_id: str, stage: str, tag: str, value: str
                 ) -> Any | None:
    """The newest finished run of ``stage`` with tag ``tag`` = ``value``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.{STAGE_TAG} = {_q(stage)} and tags.`{tag}` = {_q(value)} "
                       f"and attributes.status = 'FINISHED'"),
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None

