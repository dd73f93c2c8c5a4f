"""Interrupted runs: a run whose process died is closed, and a resumed training continues its curve.

A process killed with SIGKILL (or by the OOM killer, or a reboot) cannot end its MLflow run,
which would stay ``RUNNING`` forever. Every run records its process (``pipeline.tracking.context
.Owner``); :func:`close_dead_runs`, called whenever a stage starts and when a wrapper ends,
marks the ``RUNNING`` runs of this host whose process is gone as ``KILLED``, with the tag
``ccvs.ended`` saying so. A stage stopped by Ctrl-C / SIGTERM ends its own run as ``KILLED``.

The training loop (``pipeline.training.loop.fit``) tags the checkpoint it writes
(``CHECKPOINT_TAG``) and the one it resumes from (``RESUMED_CHECKPOINT_TAG``).
:func:`continue_curves` finds the run that wrote the checkpoint a new run resumes from, copies its
metric history up to the resumed step into the new run, and links the two by tags
(``ccvs.resumes`` / ``ccvs.resumed_by``): the new run holds the whole curve, as one curve.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.tracking.context import TAG_HOST, Owner

ENDED_TAG = "ccvs.ended"
RESUMES_TAG, RESUMED_BY_TAG = "ccvs.resumes", "ccvs.resumed_by"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def close_dead_runs(client: Any, experiment_id: str, host: str | None = None) -> list[str]:
    """Mark ``KILLED`` the RUNNING runs of ``experiment_id`` recorded on this host whose process
    is gone; returns their ids."""
    host = host or Owner.of().host
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = {_quote(host)}",
        max_results=500)
    closed = []
    for run in runs:
        owner = Owner.from_tags(run.data.tags)
        if owner is None or owner.alive() is not False:
            continue
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        client.set_tag(run.info.run_id, ENDED_TAG,
                       f"process {owner.pid} on {owner.host} died without ending the run "
                       f"(killed?); marked KILLED at {when}")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    return closed


def _writer_of(client: Any, experiment_id: str, checkpoint: str, exclude: str) -> Any | None:
    from pipeline.training.loop import CHECKPOINT_TAG  # torch: imported by training stages only

    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{CHECKPOINT_TAG}` = {_quote(checkpoint)}",
        order_by=["attributes.start_time DESC"], max_results=5)
    return next((r for r in runs if r.info.run_id != exclude), None)


def continue_curves(client: Any, run_id: str, experiment_id: str, checkpoint: str,
                    step: int) -> str | None:
    """Run ``run_id`` resumed from ``checkpoint`` at ``step``: copy the metric history (steps ≤
    ``step``) of the run that wrote that checkpoint into it and tag both; returns that run's id
    (None when no run recorded the checkpoint: tracking was off, or another store)."""
    from mlflow.entities import Metric

    old = _writer_of(client, experiment_id, checkpoint, exclude=run_id)
    if old is None:
        return None
    history: list[Any] = []
    for key in old.data.metrics:
        history += [Metric(m.key, m.value, m.timestamp, m.step)
                    for m in client.get_metric_history(old.info.run_id, key) if m.step <= step]
    for i in range(0, len(history), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=history[i:i + 1000])
    client.set_tag(run_id, RESUMES_TAG, old.info.run_id)
    client.set_tag(run_id, "ccvs.resumed_from_step", str(step))
    client.set_tag(old.info.run_id, RESUMED_BY_TAG, run_id)
    return old.info.run_id
