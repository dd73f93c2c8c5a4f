"""The MLflow experiment the pipeline logs to, set up so its UI opens on the training runs.

MLflow 3's UI opens an experiment on the GenAI overview ("Traces: 0") unless it knows the
experiment is about model training. Two settings say so, and :func:`ensure_experiment` writes
both when it creates or first touches the experiment:

- the experiment tag ``mlflow.experimentKind = custom_model_development`` ("Machine learning" in
  the UI's experiment-kind selector, which writes the same tag): MLflow 3 UIs that read the kind
  from the experiment open it on its runs;
- the UI of MLflow ≥ 3.9 takes the kind from a per-browser switch (GenAI / Machine learning,
  default GenAI) that the URL parameter ``workflowType=machine_learning`` sets. The pipeline
  therefore prints :func:`runs_url`, the experiment's runs page with that parameter and with a
  shared view (``viewStateShareKey``) whose columns are the headline metrics of
  ``pipeline.tracking.headline``: the UI's own "share view" mechanism, an experiment tag
  ``mlflow.sharedViewState.<key>`` holding the view as JSON.

The experiment's description (``mlflow.note.content``) says how its runs are organized.
"""

from __future__ import annotations

import json
from typing import Any

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
VIEW_KEY = "ccvs-pipelines"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
NOTE_TAG = "mlflow.note.content"

# The runs table's default columns: one row per pipeline execution (its stages nested below),
# the numbers two executions are compared by (pipeline.tracking.headline), and where it came from
# (metrics first: the UI puts attribute columns such as Duration before them, off a laptop screen).
DEFAULT_COLUMNS = [
    "metrics.`autoencoder/psnr`",
    "metrics.`autoencoder/psnr_objects`",
    "metrics.`transformer/perplexity`",
    "metrics.`evaluate/prediction/ssim`",
    "metrics.`evaluate/prediction/fvd`",
    "metrics.`evaluate/prediction/fvd_untrained_i3d`",
    "metrics.`evaluate/point_to_point/end_ssim`",
    "metrics.`evaluate/state/trajectory_error_px`",
    "metrics.`positions/error_px`",
    "tags.`ccvs.kind`",
    "tags.`git_commit`",
]

DESCRIPTION = """\
Runs of the CCVS pipeline (dvc.yaml). One **parent run per pipeline execution** (`ccvs repro`,
`dvc repro`, `dvc exp run`, `ccvs pipeline`): it holds the params of params.yaml and the headline
metrics of every stage (`<stage>/<metric>`); each stage that ran is a child run nested under it,
and a stage DVC skipped is linked by the tag `ccvs.skipped.<stage>` (the run that produced its
outputs; the parent's description has a table with links). Two parents compare as two rows;
select them and press *Compare*. The autoencoder and the transformer runs log MLflow models
(`ccvs register` registers them, `ccvs synthesize --model-uri models:/<name>/<version>` loads
them).
"""


def view_state() -> dict[str, Any]:
    """The shared view of the runs page (search facets + UI state, as the UI serializes it)."""
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": list(DEFAULT_COLUMNS),
        "groupBy": None,
    }


def ensure_experiment(client: Any, name: str) -> str:
    """The id of experiment ``name``, created if needed; its kind, shared view and description
    tags are (re)written when they differ from this module's."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            client.create_experiment(name)
        except MlflowException:  # created meanwhile by a parallel stage
            pass
        exp = client.get_experiment_by_name(name)
    wanted = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND, VIEW_TAG: json.dumps(view_state()),
              NOTE_TAG: DESCRIPTION}
    for key, value in wanted.items():
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def runs_url(experiment_id: str, base: str = "http://127.0.0.1:5000") -> str:
    """The experiment's runs page, in the machine-learning view, with the default columns."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def run_url(experiment_id: str, run_id: str, base: str = "") -> str:
    """A run's page (relative to the UI's root when ``base`` is empty: a link inside the UI)."""
    return f"{base.rstrip('/') + '/' if base else ''}#/experiments/{experiment_id}/runs/{run_id}"
