"""A table's rows, read back from DVC's experiments: a markdown report and one MLflow run per row.

``collect`` finds each row's newest experiment ``<table>-<row>-<stamp>`` in ``dvc exp show
--json --all-commits`` (or the one of a given stamp) and reads its metrics files as the
experiment's commit holds them; ``verdicts`` checks the paper's directions on them; ``markdown`` writes the table (every
row's params and metrics, each direction with our numbers and whether it held, the budget and
the time it took); ``log_rows`` puts each row in the MLflow experiment ``<experiment>-<table>``
(params = the row's overrides, metrics = the table's columns), so the MLflow UI compares rows
side by side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.ablation.queue import dvc, exp_name
from pipeline.ablation.tables import FVD, AblationTable, Direction, Metric, Row


@dataclasses.dataclass
class RowResult:
    """What one row's experiment left (``exp`` None: no experiment of that row was found)."""

    row: Row
    exp: str | None
    metrics: dict[str, Any]  # metrics file → its JSON document
    timestamp: str = ""

    def value(self, metric: Metric) -> float | None:
        doc = self.metrics.get(metric.file)
        if not isinstance(doc, dict):
            return None
        node: Any = doc
        for key in metric.path:
            if key == FVD:
                key = (doc.get("fvd") or {}).get("metric", "fvd")
            if not isinstance(node, dict) or key not in node:
                return None
            node = node[key]
        return float(node) if isinstance(node, (int, float)) and math.isfinite(node) else None


def _experiments(show: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, newest rev's data, with its commit as ``data["rev"]``) of every experiment in
    ``dvc exp show --json`` output."""
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            name = exp.get("name")
            revs = exp.get("revs") or []
            if name and revs and isinstance(revs[0].get("data"), dict):
                yield name, {"rev": revs[0].get("rev"), **revs[0]["data"]}


def _committed_json(root: str | Path, rev: str, path: str) -> Any:
    """The JSON document ``path`` as the experiment's commit ``rev`` holds it, or None. The
    DAG's DVC metrics are only its headline files; the full reports (``metrics/<stage>.json``)
    are committed with every experiment (metrics/ is in Git), so they are read from there."""
    proc = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return None


def collect(table: AblationTable, root: str | Path, stamp: str | None = None) -> list[RowResult]:
    """Each row's experiment: the one of run ``stamp``, else the newest run of that row."""
    show = json.loads(dvc(root, "exp", "show", "--json", "--all-commits").stdout or "[]")
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, data in _experiments(show):
        for row in table.rows:
            wanted = exp_name(table, row, stamp) if stamp else None
            if (name == wanted) or (not stamp and name.startswith(exp_name(table, row, ""))
                                    and name[len(exp_name(table, row, "")):].isdigit()):
                best = found.get(row.name)
                if best is None or data.get("timestamp", "") > best[1].get("timestamp", ""):
                    found[row.name] = (name, data)
    out = []
    for row in table.rows:
        if row.name not in found:
            out.append(RowResult(row, None, {}))
            continue
        name, data = found[row.name]
        metrics = {path: (entry or {}).get("data")
                   for path, entry in (data.get("metrics") or {}).items()}
        files = {m.file for m in table.metrics}
        files |= {m.file for d in table.directions for m in (d.high, d.low)}
        for file in sorted(files - set(metrics)):
            if data.get("rev"):
                metrics[file] = _committed_json(root, data["rev"], file)
        out.append(RowResult(row, name, metrics, str(data.get("timestamp", ""))))
    return out


@dataclasses.dataclass(frozen=True)
class Verdict:
    direction: Direction
    high: float | None
    low: float | None

    @property
    def held(self) -> bool | None:
        """True / False, or None when a cell is missing."""
        if self.high is None or self.low is None:
            return None
        return self.high > self.low


def verdicts(table: AblationTable, results: list[RowResult]) -> list[Verdict]:
    by_row = {r.row.name: r for r in results}
    return [Verdict(d, by_row[d.high_row].value(d.high), by_row[d.low_row].value(d.low))
            for d in table.directions]


def _fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _params_text(overrides: dict[str, Any]) -> str:
    return ", ".join(f"`{k.split('.', 1)[-1]}={json.dumps(v)}`" for k, v in overrides.items())


def fvd_name(results: list[RowResult]) -> str | None:
    for r in results:
        doc = r.metrics.get("metrics/evaluate.json")
        if isinstance(doc, dict) and isinstance(doc.get("fvd"), dict):
            return doc["fvd"].get("metric")
    return None


def markdown(table: AblationTable, results: list[RowResult], checks: list[Verdict],
             run_info: dict[str, Any] | None = None) -> str:
    """The report: rows × metrics, the paper's directions with ours, the budget and the time."""
    lines = [f"# {table.title}", "", f"Paper: {table.paper}.", ""]
    budget = f"**Budget**: {table.budget_note}."
    if table.budget:
        budget += f" Every row sets {_params_text(table.budget)}."
    lines += [budget, ""]
    if run_info:
        extra = "; ".join(f"{k}: {v}" for k, v in run_info.get("set", {}).items())
        lines += [(f"**Run** `{run_info.get('command', '')}` on {run_info.get('machine', '')}: "
                   f"{run_info.get('rows', len(results))} rows in "
                   f"{run_info.get('minutes', float('nan')):.1f} min (stamp "
                   f"{run_info.get('stamp', '')}{'; --set ' + extra if extra else ''})."), ""]
    name = fvd_name(results)
    if name and name != "fvd":
        lines += [(f"FVD here is `{name}`: I3D without Kinetics-400 weights (random features), "
                   "so FVD directions mean little."), ""]
    header = ["row", "params", *[m.label for m in table.metrics]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        cells = [r.row.label + ("" if r.exp else " (not run)"), _params_text(r.row.overrides)]
        cells += [_fmt(r.value(m), m.digits) for m in table.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## The paper's directions", "",
              "| paper | ours | held? |", "|---|---|---|"]
    labels = {r.name: r.label for r in table.rows}
    for v in checks:
        d = v.direction
        ours = (f"{labels[d.high_row]} {d.high.label.rstrip(' ↑↓')} {_fmt(v.high, d.high.digits)} "
                f"vs {labels[d.low_row]} {d.low.label.rstrip(' ↑↓')} {_fmt(v.low, d.low.digits)}")
        held = {True: "yes", False: "**no**", None: "not measured"}[v.held]
        lines.append(f"| {d.text} | {ours} | {held} |")
    held = sum(v.held is True for v in checks)
    lines += ["", f"{held} of {len(checks)} directions held."]
    if table.notes:
        lines += [""] + [f"- {n}" for n in table.notes]
    lines += ["", (f"Experiments: {', '.join(r.exp or '—' for r in results)} "
                   "(`dvc exp show`, `dvc exp apply <name>`).")]
    return "\n".join(lines) + "\n"


def metric_key(metric: Metric, results: list[RowResult]) -> str:
    """The MLflow metric name of a column: ``<task>/<key>`` for evaluate, ``<stage>/<key>``."""
    path = list(metric.path)
    if path and path[0] == "tasks":
        path = path[1:]
    path = [(fvd_name(results) or "fvd") if p == FVD else p for p in path]
    stage = Path(metric.file).stem
    return "/".join(path if stage == "evaluate" else [stage, *path])


def log_rows(table: AblationTable, results: list[RowResult], checks: list[Verdict],
             tracking_uri: str, experiment: str, report: Path | None = None) -> str:
    """One MLflow run per row that ran, in experiment ``<experiment>-<table>``; returns its name."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    name = f"{experiment}-{table.name}"
    mlflow.set_experiment(name)
    for r in results:
        if r.exp is None:
            continue
        with mlflow.start_run(run_name=r.row.label,
                              tags={"table": table.name, "row": r.row.name, "dvc_exp": r.exp}):
            mlflow.log_params({k: json.dumps(v) for k, v in table.overrides(r.row).items()})
            values = {metric_key(m, results): r.value(m) for m in table.metrics}
            mlflow.log_metrics({k: v for k, v in values.items() if v is not None})
            if report is not None and report.exists():
                mlflow.log_artifact(str(report))
    return name
