"""The CCVS DAG as a Prefect flow, read from ``dvc.yaml`` (the one definition of the DAG).

Each DVC stage becomes one Prefect task run, named after the stage, that runs ``dvc --wait-for-lock
repro --single-item <stage>``, so DVC still decides whether the stage is up to date, caches its
outputs and writes ``dvc.lock``. Tasks are submitted in topological order with ``wait_for`` on
their upstream stages, so independent branches (positions, sound_vq, autoencoder ...) run in
parallel on Prefect's thread pool. DVC releases its repository lock while a stage's command runs,
which is what lets two ``repro --single-item`` calls overlap; ``--wait-for-lock`` covers the short
moments they both need it.

What the Prefect UI shows: one task run per stage with its state (Completed / Failed / Retrying),
the stage's output as the task run's logs, line by line while it runs (progress bars once every
30 s). A failed stage is retried once; if it fails again, its downstream stages do not run and
``ccvs pipeline`` ends with one line naming the stage and its last message. To watch it, start a
local server and point the flow at it (without ``PREFECT_API_URL`` Prefect runs a temporary one
that lives as long as the flow)::

    prefect server start --host 127.0.0.1          # UI at http://127.0.0.1:4200
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    ccvs pipeline

One flow run is one pipeline execution in MLflow: every stage it runs is nested under the same
parent run, which the flow ends (FINISHED / FAILED) with links to the stages DVC skipped
(``pipeline.tracking``).

Run it with ``python -m pipeline.orchestration`` or ``ccvs pipeline``. Offline-safe: analytics are
off.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from pipeline.dag import dvc_executable, read_dag  # noqa: E402

PROGRESS_EVERY_S = 30.0  # a progress bar's line reaches the task's log at most this often
RETRIES = 1


class StageFailed(RuntimeError):
    """A stage's command failed; the message is one line: the stage, its exit status, and its
    last message."""

    def __init__(self, stage: str, returncode: int, reason: str) -> None:
        self.stage, self.returncode, self.reason = stage, returncode, reason
        super().__init__(f"stage '{stage}' failed (exit {returncode}): {reason}")

    def __reduce__(self) -> tuple:  # picklable with its three fields (Prefect may pickle it)
        return (StageFailed, (self.stage, self.returncode, self.reason))


def _reason(name: str, lines: list[str]) -> str:
    """The line that says why a stage failed: its own ``<stage>: ...`` line, else the last line
    that is not DVC's closing error."""
    text = [ln.strip() for ln in lines if ln.strip()]
    own = [ln for ln in text if ln.startswith(f"{name}:")]
    if own:
        return own[-1]
    other = [ln for ln in text if not ln.startswith("ERROR: failed to reproduce")]
    return (other or text or ["no output"])[-1]


def _stage_exit(lines: list[str], dvc_returncode: int) -> int:
    """The stage command's own exit status from DVC's closing error (``exited with 3``; −9 for
    SIGKILL), else dvc's."""
    for line in reversed(lines):
        found = re.search(r"exited with (-?\d+)", line)
        if found:
            return int(found.group(1))
    return dvc_returncode


def _stream(proc: subprocess.Popen, log: object) -> list[str]:
    """Forward the stage's output to the task's log as it comes; returns its lines. A segment
    ended by a carriage return is a progress-bar update: logged at most every
    ``PROGRESS_EVERY_S`` seconds."""
    lines: list[str] = []
    buf, last_progress = "", 0.0
    assert proc.stdout is not None
    for chunk in iter(lambda: proc.stdout.read1(4096), b""):  # type: ignore[union-attr]
        buf += chunk.decode("utf-8", "replace")
        while True:
            cut = min((i for i in (buf.find("\n"), buf.find("\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            segment, end, buf = buf[:cut], buf[cut], buf[cut + 1:]
            if not segment.strip():
                continue
            if end == "\r":
                if time.monotonic() - last_progress < PROGRESS_EVERY_S:
                    continue
                last_progress = time.monotonic()
            lines.append(segment)
            log.info("%s", segment)  # type: ignore[attr-defined]
    if buf.strip():
        lines.append(buf)
        log.info("%s", buf)  # type: ignore[attr-defined]
    return lines


@task(retries=RETRIES, retry_delay_seconds=5, task_run_name="{name}", cache_policy=NO_CACHE)
def run_stage(name: str, root: str, env: dict[str, str]) -> dict:
    """Reproduce one DVC stage (skipped by DVC when it is up to date); its output is the task
    run's log. ``env``: the flow's pipeline environment (``pipeline.tracking.context``)."""
    try:
        logger = get_run_logger()
    except Exception:  # noqa: BLE001 - called as run_stage.fn() outside a flow run
        import logging

        logger = logging.getLogger("ccvs.flow")
    full_env = dict(os.environ, **env)
    # Branches run side by side: one OpenMP thread per stage avoids oversubscribing the cores
    # (two 2-thread torch jobs on 2 cores ran 10x slower than two 1-thread ones here).
    full_env.setdefault("OMP_NUM_THREADS", "1")
    venv_bin = str(Path(sys.executable).parent)
    full_env["PATH"] = venv_bin + os.pathsep + full_env.get("PATH", "")  # stage cmds call `python`
    start = time.monotonic()
    proc = subprocess.Popen(
        [dvc_executable(), "--wait-for-lock", "repro", "--single-item", name],
        cwd=root, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = _stream(proc, logger)
    returncode = proc.wait()
    seconds = time.monotonic() - start
    if returncode != 0:
        raise StageFailed(name, _stage_exit(lines, returncode), _reason(name, lines))
    output = "\n".join(lines)
    skipped = "didn't change, skipping" in output or "is cached" in output
    logger.info("stage %s %s in %.1fs", name, "skipped" if skipped else "ran", seconds)
    return {"stage": name, "skipped": skipped, "seconds": round(seconds, 2)}


def _flow_run_name() -> str:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.name or "")
    except Exception:  # noqa: BLE001 - outside a flow run
        return ""


@flow(name="ccvs-pipeline", log_prints=True)
def ccvs_pipeline(root: str = ".", stages: list[str] | None = None,
                  pipeline_id: str | None = None) -> list[dict]:
    """Run the dvc.yaml DAG (or the named ``stages`` and what they depend on) as Prefect tasks,
    as one pipeline execution in MLflow."""
    from pipeline.tracking import finish_pipeline
    from pipeline.tracking.context import wrapper_env

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
    env = wrapper_env("ccvs pipeline", f"ccvs pipeline {_flow_run_name()}".strip(),
                      pipeline_id or os.environ.get("CCVS_PIPELINE_ID"))
    futures = {}
    for spec in dag:
        waits = [futures[u] for u in spec.upstream if u in futures]
        futures[spec.name] = run_stage.submit(spec.name, root, env, wait_for=waits)
    status = "FAILED"
    try:
        results = [futures[s.name].result() for s in dag]
        status = "FINISHED"
        return results
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        done = finish_pipeline(env, status, root)
        if done is not None and done[1] is not None:
            from pipeline.tracking.experiment import runs_url

            print(f"MLflow: pipeline run {done[1]} ({status}); "
                  f"mlflow ui → {runs_url(done[0])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the CCVS DAG (dvc.yaml) as a Prefect flow.")
    parser.add_argument("stages", nargs="*", help="stages to run (default: all)")
    parser.add_argument("--root", default=".", help="the project folder holding dvc.yaml")
    args = parser.parse_args(argv)
    try:
        results = ccvs_pipeline(root=args.root, stages=args.stages or None)
    except StageFailed as err:
        print(f"ccvs pipeline: {err} (tried {RETRIES + 1} times; the Prefect task run "
              f"'{err.stage}' has its whole log)", file=sys.stderr)
        return 1
    for r in results:
        print(f"{r['stage']:<14} {'skipped' if r['skipped'] else 'ran':<8} {r['seconds']:>8.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
