"""The one way training curves reach ``dvc plots``: a logger that also keeps CSVs of chosen metrics.

``CurveLogger(inner, folder, curves)`` forwards everything to ``inner`` (the stage's MLflow
logger) and, whenever ``log_metrics`` is called with a step and a curve's trigger key, writes a
row (step, then the curve's columns) to ``folder/<curve>.csv``. Rows at or after a newly logged
step are replaced, so a resumed run's curve continues the old one and a fresh run's overwrites
it. Column headers are the metric names after their last ``/`` (``val/psnr`` → ``psnr``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping, Sequence


class CurveLogger:
    """Forwards to ``inner``; keeps ``<folder>/<name>.csv`` for each ``name: columns`` of ``curves``
    (a row is written when the first column's metric is logged with a step)."""

    def __init__(self, inner: Any, folder: str | Path,
                 curves: Mapping[str, Sequence[str]]) -> None:
        self.inner = inner
        self.folder = Path(folder)
        self.curves = {name: tuple(cols) for name, cols in curves.items()}
        self.rows = {name: self._read(name) for name in self.curves}

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.csv"

    def _read(self, name: str) -> list[list[str]]:
        path = self.path(name)
        if not path.exists():
            return []
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.reader(fh))[1:]

    def finish(self) -> None:
        """Write every CSV even when no step was logged (a run resumed at its last checkpoint after
        ``dvc repro --force`` removed the old curves): DVC needs every declared output."""
        for name in self.curves:
            if not self.path(name).exists():
                self._write(name)

    def _add(self, name: str, values: Mapping[str, float], step: int) -> None:
        rows = [r for r in self.rows[name] if r and int(r[0]) < step]
        rows.append([str(step)] + [f"{values.get(c, float('nan')):.6g}" for c in self.curves[name]])
        self.rows[name] = rows
        self._write(name)

    def _write(self, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(name)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step"] + [c.rsplit("/", 1)[-1] for c in self.curves[name]])
            writer.writerows(self.rows[name])
        os.replace(tmp, path)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.inner.log_metrics(metrics, step=step)
        if step is None:
            return
        for name, columns in self.curves.items():
            if columns[0] in metrics:
                self._add(name, metrics, step)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        self.log_metrics({name: value}, step=step)

    def log_params(self, params: dict) -> None:
        self.inner.log_params(params)

    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None:
        self.inner.log_artifact(path, artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        self.inner.set_tag(key, value)

    def set_tags(self, tags: dict) -> None:
        self.inner.set_tags(tags)
