"""The DAG of ``dvc.yaml`` as the rest of the pipeline reads it: its stages, their order, what DVC
recorded in ``dvc.lock``, and the ``dvc`` executable that runs them.

``dvc.yaml`` is the one definition of the DAG; the Prefect flow (``pipeline.orchestration``) runs
the stages of :func:`read_dag` in its order, and the MLflow run tree (``pipeline.tracking``) tells a
stage DVC skipped by its entry in ``dvc.lock`` (:func:`read_lock`, :func:`outs_signature`: the
hashes of the outputs a run produced). Nothing here imports Prefect or MLflow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One stage of dvc.yaml: its name, command and the stages it depends on."""

    name: str
    cmd: str
    upstream: tuple[str, ...]


def read_dag(root: str | Path = ".") -> list[StageSpec]:
    """The stages of ``root/dvc.yaml`` in a topological order (dependencies first).

    Uses DVC's own parser, so ``vars`` templating and ``${...}`` interpolation resolve exactly
    as ``dvc repro`` sees them.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        index = repo.index
        graph = index.graph  # edges point from a stage to the stages it depends on
        specs = {}
        for stage in index.stages:
            if not stage.cmd:  # a .dvc file of tracked data, not a pipeline stage
                continue
            upstream = tuple(
                sorted(dep.name for dep in graph.successors(stage) if dep.cmd)
            )
            specs[stage.name] = StageSpec(stage.name, str(stage.cmd), upstream)
    order: list[StageSpec] = []
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...] = ()) -> None:
        if name in done:
            return
        if name in trail:
            raise ValueError(f"dvc.yaml: cycle through stages {' -> '.join(trail + (name,))}")
        for up in specs[name].upstream:
            visit(up, trail + (name,))
        done.add(name)
        order.append(specs[name])

    for name in sorted(specs):
        visit(name)
    return order


def stage_names(root: str | Path = ".") -> list[str]:
    """The stage names of ``root/dvc.yaml`` in file order (a plain YAML read: no DVC import);
    [] without a readable dvc.yaml."""
    try:
        doc = yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []
    stages = doc.get("stages") if isinstance(doc, dict) else None
    return [str(name) for name in stages] if isinstance(stages, dict) else []


@dataclasses.dataclass(frozen=True)
class Lock:
    """``dvc.lock``: what DVC recorded for each stage it ran, and when the file was written."""

    stages: dict[str, dict[str, Any]]  # stage → its lock entry (cmd, deps, params, outs)
    mtime: float  # seconds since the epoch; 0 without a lock file


def read_lock(root: str | Path = ".") -> Lock:
    """``root/dvc.lock`` (an empty :class:`Lock` when there is none or it cannot be read)."""
    path = Path(root) / "dvc.lock"
    try:
        mtime = path.stat().st_mtime
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return Lock({}, 0.0)
    stages = doc.get("stages", {}) if isinstance(doc, dict) else {}
    return Lock({str(k): v for k, v in stages.items() if isinstance(v, dict)}, mtime)


def outs_signature(entry: dict[str, Any]) -> str | None:
    """A short id of the outputs a lock entry records (their paths and content hashes), so the
    run that produced them can be found again; None when the entry has no hashed output."""
    outs = []
    for out in entry.get("outs", []) or []:
        digest = out.get("md5") or out.get("etag") or out.get("checksum")
        if digest:
            outs.append((str(out.get("path")), str(digest)))
    if not outs:
        return None
    return hashlib.sha1(json.dumps(sorted(outs)).encode()).hexdigest()[:16]


def dvc_executable() -> str:
    """The ``dvc`` next to the running Python (the project's venv), else the one on PATH."""
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else "dvc"
