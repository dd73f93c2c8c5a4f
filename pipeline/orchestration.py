"""The CCVS DAG as a Prefect flow, read from ``dvc.yaml`` (the one definition of the DAG).

Each DVC stage becomes one Prefect task that runs ``dvc --wait-for-lock repro --single-item
<stage>``, so DVC still decides whether the stage is up to date, caches its outputs and writes
``dvc.lock``. Tasks are submitted in topological order with ``wait_for`` on their upstream stages,
so independent branches (positions, sound_vq, autoencoder ...) run in parallel on Prefect's thread
pool. DVC releases its repository lock while a stage's command runs, which is what lets two
``repro --single-item`` calls overlap; ``--wait-for-lock`` covers the short moments they both
need it.

Every stage of one flow run is tagged with the same ``CCVS_PIPELINE_ID`` in MLflow.

Run it with ``python -m pipeline.orchestration`` or ``ccvs pipeline``. Offline-safe: analytics are off and,
without ``PREFECT_API_URL``, Prefect runs against a temporary local server.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, get_run_logger, task  # noqa: E402


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


def dvc_executable() -> str:
    """The ``dvc`` next to the running Python (the project's venv), else the one on PATH."""
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else "dvc"


@task(retries=1, retry_delay_seconds=5, task_run_name="{name}")
def run_stage(name: str, root: str, pipeline_id: str) -> dict:
    """Reproduce one DVC stage (skipped by DVC when it is up to date)."""
    try:
        logger = get_run_logger()
    except Exception:  # noqa: BLE001 - called as run_stage.fn() outside a flow run
        import logging

        logger = logging.getLogger("ccvs.flow")
    env = dict(os.environ, CCVS_PIPELINE_ID=pipeline_id)
    # Branches run side by side: one OpenMP thread per stage avoids oversubscribing the cores
    # (two 2-thread torch jobs on 2 cores ran 10x slower than two 1-thread ones here).
    env.setdefault("OMP_NUM_THREADS", "1")
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # stage cmds call `python`
    start = time.monotonic()
    proc = subprocess.run(
        [dvc_executable(), "--wait-for-lock", "repro", "--single-item", name],
        cwd=root, env=env, capture_output=True, text=True,
    )
    seconds = time.monotonic() - start
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise RuntimeError(f"stage {name} failed (exit {proc.returncode}):\n{tail}")
    skipped = "didn't change, skipping" in output or "is cached" in output
    logger.info("stage %s %s in %.1fs", name, "skipped" if skipped else "ran", seconds)
    return {"stage": name, "skipped": skipped, "seconds": round(seconds, 2)}


@flow(name="ccvs-pipeline", log_prints=True)
def ccvs_pipeline(root: str = ".", stages: list[str] | None = None,
                  pipeline_id: str | None = None) -> list[dict]:
    """Run the dvc.yaml DAG (or the named ``stages`` and what they depend on) as Prefect tasks."""
    root = str(Path(root).resolve())
    dag = read_dag(root)
    if stages:
        wanted: set[str] = set()
        by_name = {s.name: s for s in dag}
        unknown = [s for s in stages if s not in by_name]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {sorted(by_name)}")
        todo = list(stages)
        while todo:
            name = todo.pop()
            if name not in wanted:
                wanted.add(name)
                todo.extend(by_name[name].upstream)
        dag = [s for s in dag if s.name in wanted]
    pid = pipeline_id or os.environ.get("CCVS_PIPELINE_ID") or f"flow-{uuid.uuid4().hex[:12]}"
    futures = {}
    for spec in dag:
        waits = [futures[u] for u in spec.upstream if u in futures]
        futures[spec.name] = run_stage.submit(spec.name, root, pid, wait_for=waits)
    return [futures[s.name].result() for s in dag]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the CCVS DAG (dvc.yaml) as a Prefect flow.")
    parser.add_argument("stages", nargs="*", help="stages to run (default: all)")
    parser.add_argument("--root", default=".", help="the project folder holding dvc.yaml")
    args = parser.parse_args(argv)
    results = ccvs_pipeline(root=args.root, stages=args.stages or None)
    for r in results:
        print(f"{r['stage']:<14} {'skipped' if r['skipped'] else 'ran':<8} {r['seconds']:>8.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
