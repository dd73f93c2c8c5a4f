"""The headline metrics of each stage: the few numbers two pipeline runs are compared by.

One definition serves three places: the MLflow parent run of a pipeline execution (metrics
``<stage>/<name>``, one row per execution in the runs table), the experiment's default columns
(``pipeline.tracking.experiment``), and ``metrics/headline/<stage>.json``, the file ``dvc.yaml``
declares as the stage's DVC metric, so ``dvc exp show`` lists these columns and not the hundreds
of diagnostics, timings and counts of ``metrics/<stage>.json`` (a stage's full report, still
written by the stage and logged to its own run). Timings are never headline metrics: they change
on every run, and ``dvc exp show --only-changed`` would always show them.

:data:`HEADLINE` maps a stage to ``pattern → name`` over the flattened keys of what the stage's
``run`` returned (nested dicts joined by ``/``: ``tasks/prediction/ssim``); a ``*`` in the pattern
matches one key part and is copied into the name. A key the stage did not report is absent, not
NaN (the object-region PSNR exists only when the data have layouts; ``fvd`` only with real I3D
weights, else ``fvd_untrained_i3d``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

from pipeline.atomic import write_json
from pipeline.params import flatten

_TASK_METRICS = ("ssim", "psnr", "fvd", "fvd_untrained_i3d", "end/ssim",
                 "trajectory_error_px", "sound_sync", "class_accuracy")

HEADLINE: dict[str, dict[str, str]] = {
    "prepare": {"num_clips": "clips", "num_rejected": "rejected"},
    "positions": {"heldout_error_px_mean": "error_px",  # §4 / App. A position estimator
                  "never_annotated_error_px_mean": "unannotated_error_px"},
    "sound_vq": {"val/lsd_db": "lsd_db", "val/spectral_convergence": "spectral_convergence"},
    "layout_vq": {"val/miou": "miou"},
    "autoencoder": {"val/psnr": "psnr", "val/ssim": "ssim",  # reconstruction (Table 1)
                    "val/psnr_objects": "psnr_objects", "val/ssim_objects": "ssim_objects"},
    "transformer": {"val/perplexity": "perplexity", "perplexity_ratio": "perplexity_ratio",
                    "baseline/copy_val_perplexity": "copy_perplexity"},
    # each synthesis task: SSIM/PSNR, FVD and its control's own measure (Tables 1-6)
    "evaluate": {f"tasks/*/{m}": f"*/{m.replace('/', '_')}" for m in _TASK_METRICS},
}

HEADLINE_DIR = "metrics/headline"  # metrics/headline/<stage>.json, declared in dvc.yaml


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def headline(stage: str, result: Any) -> dict[str, float]:
    """``name → value`` of ``stage``'s headline metrics in ``result`` (what ``run`` returned);
    {} for a stage without any, or a result that is not a dict."""
    spec = HEADLINE.get(stage)
    if not spec or not isinstance(result, Mapping):
        return {}
    flat = flatten(dict(result), sep="/")
    out: dict[str, float] = {}
    for pattern, name in spec.items():
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", "([^/]+)") + "$")
        for key, value in flat.items():
            match = regex.match(key)
            number = _number(value)
            if match is None or number is None:
                continue
            label = name
            for part in match.groups():
                label = label.replace("*", part, 1)
            out[label] = number
    return out


def round_significant(value: float, digits: int = 5) -> float:
    """``value`` with ``digits`` significant digits (readable columns; the full value stays in
    ``metrics/<stage>.json``)."""
    return float(f"{value:.{digits}g}")


def headline_path(stage: str, folder: str | Path = HEADLINE_DIR) -> Path:
    return Path(folder) / f"{stage}.json"


def write_headline(path: str | Path, stage: str, metrics: Mapping[str, float]) -> Path:
    """Write ``{stage: {name: value}}`` (names split at ``/`` into nested keys, so ``dvc exp
    show`` names the column ``evaluate.prediction.ssim``) atomically to ``path``."""
    doc: dict[str, Any] = {}
    for name, value in sorted(metrics.items()):
        node = doc.setdefault(stage, {})
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = round_significant(value)
    return write_json(path, doc or {stage: {}})
