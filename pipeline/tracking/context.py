"""Which pipeline execution a stage process belongs to, and which process owns it.

One execution = one MLflow parent run. The stage processes of an execution find each other
through a shared *pipeline id*:

- ``ccvs repro`` and the Prefect flow (``ccvs pipeline``) set ``CCVS_PIPELINE_ID`` (with
  ``CCVS_PIPELINE_KIND``, ``CCVS_PIPELINE_NAME`` and ``CCVS_PIPELINE_OWNER``, the wrapper process)
  in the environment of every stage they start; the wrapper closes the parent when it ends.
- a plain ``dvc repro`` or ``dvc exp run`` sets nothing of ours, but DVC runs every stage command
  with ``DVC_STAGE`` (and ``DVC_EXP_NAME`` under ``dvc exp run``): the id is then the ``dvc``
  process that launched the stage (host, pid and start time), so every stage of one ``dvc``
  command shares it and the next command gets a new one. That ``dvc`` process is the owner.
- a stage run by hand (``python -m stages.x``) belongs to no execution: its run has no parent.

An :class:`Owner` is a process that can die: runs carry it as tags (``ccvs.host``, ``ccvs.pid``,
``ccvs.pid_started``), so a later process on the same host can tell a run whose process was
killed (SIGKILL, OOM, a closed laptop) from one still running (``pipeline.tracking.interruption``).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path
from typing import Mapping

ENV_ID = "CCVS_PIPELINE_ID"
ENV_KIND = "CCVS_PIPELINE_KIND"
ENV_NAME = "CCVS_PIPELINE_NAME"
ENV_OWNER = "CCVS_PIPELINE_OWNER"

# run tags of an owner
TAG_HOST, TAG_PID, TAG_STARTED = "ccvs.host", "ccvs.pid", "ccvs.pid_started"


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process: its host, pid and start time (pids are reused; pid + start time are not)."""

    host: str
    pid: int
    started: float  # psutil's create_time, seconds since the epoch

    @classmethod
    def of(cls, pid: int | None = None) -> Owner:
        import psutil

        pid = os.getpid() if pid is None else pid
        return cls(socket.gethostname(), pid, round(psutil.Process(pid).create_time(), 2))

    def tags(self) -> dict[str, str]:
        return {TAG_HOST: self.host, TAG_PID: str(self.pid), TAG_STARTED: f"{self.started:.2f}"}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Owner | None:
        try:
            return cls(tags[TAG_HOST], int(tags[TAG_PID]), float(tags[TAG_STARTED]))
        except (KeyError, ValueError):
            return None

    def encode(self) -> str:
        return f"{self.host}:{self.pid}:{self.started:.2f}"

    @classmethod
    def decode(cls, text: str) -> Owner | None:
        parts = text.rsplit(":", 2)
        if len(parts) != 3:
            return None
        try:
            return cls(parts[0], int(parts[1]), float(parts[2]))
        except ValueError:
            return None

    def alive(self) -> bool | None:
        """True / False for a process of this host; None when it runs elsewhere (unknown)."""
        if self.host != socket.gethostname():
            return None
        import psutil

        try:
            proc = psutil.Process(self.pid)
            return (abs(proc.create_time() - self.started) < 1.0
                    and proc.status() != psutil.STATUS_ZOMBIE)
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            return False


@dataclasses.dataclass(frozen=True)
class PipelineContext:
    """One pipeline execution, as seen from one of its stage processes."""

    id: str  # shared by every stage process of the execution
    kind: str  # "ccvs repro", "ccvs pipeline", "dvc repro", "dvc exp run"
    name: str  # the parent run's name in MLflow
    owner: Owner | None  # the process whose end ends the execution
    wrapped: bool  # True: a wrapper (ccvs repro / the flow) opens and closes the parent
    root: Path  # the DVC project


def _dvc_ancestor() -> Owner | None:
    """The nearest ancestor process running dvc, if any."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return None
    try:
        proc = psutil.Process().parent()
        while proc is not None and proc.pid > 1:
            cmdline = proc.cmdline()
            cmd = " ".join(cmdline).lower()
            if cmdline and ("dvc" in Path(cmdline[0]).name.lower() or " -m dvc" in cmd
                            or "/dvc " in cmd):
                return Owner(socket.gethostname(), proc.pid, round(proc.create_time(), 2))
            proc = proc.parent()
    except (psutil.Error, OSError):
        return None
    return None


def wrapper_env(kind: str, name: str, pipeline_id: str | None = None) -> dict[str, str]:
    """The environment variables a wrapper (``ccvs repro``, the flow) gives its stages: this
    process owns the execution."""
    import uuid

    pid = pipeline_id or f"{kind.split()[-1]}-{uuid.uuid4().hex[:12]}"
    return {ENV_ID: pid, ENV_KIND: kind, ENV_NAME: name, ENV_OWNER: Owner.of().encode()}


def current(env: Mapping[str, str] | None = None, root: str | Path | None = None
            ) -> PipelineContext | None:
    """The execution this process (or a stage started with ``env``) belongs to, or None (see
    the module docstring). The project is the working directory: DVC runs a stage's command in
    the folder of its dvc.yaml (also in ``dvc exp run --temp``'s copy) unless ``root`` says."""
    env = os.environ if env is None else env
    root = Path(root).resolve() if root is not None else Path.cwd()
    when = time.strftime("%m-%d %H:%M")
    if env.get(ENV_ID):
        owner_text = env.get(ENV_OWNER, "")
        owner = Owner.decode(owner_text) if owner_text else None
        kind = env.get(ENV_KIND) or "pipeline"
        return PipelineContext(env[ENV_ID], kind, env.get(ENV_NAME) or f"{kind} {when}", owner,
                               wrapped=owner is not None, root=root)
    if not env.get("DVC_STAGE"):
        return None
    owner = _dvc_ancestor()
    if owner is None:  # under DVC but its process is not visible (a container's pid namespace)
        return None
    exp = env.get("DVC_EXP_NAME")
    kind = "dvc exp run" if exp else "dvc repro"
    name = f"{kind} {exp}" if exp else f"{kind} {when}"
    return PipelineContext(f"dvc-{owner.host}-{owner.pid}-{owner.started:.0f}", kind, name,
                           owner, wrapped=False, root=root)
