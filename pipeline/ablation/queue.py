"""A table's rows as DVC experiments: checked, queued (``dvc exp run --queue``), run by ``dvc queue
start`` and waited for.

Every row becomes the experiment ``<table>-<row>-<stamp>`` (one stamp per ``ccvs ablation run``,
so a table can be rerun and the report reads the newest run of each row) with ``-S key=value``
for the table's budget and the row's keys. Before anything is queued, each row's params are built
the way the stages build them (``pipeline.params``, strict), so a key the project does not have or
a value it refuses stops the command with one line naming the row and the key. DVC runs the
experiments in temporary copies of the workspace; stages whose inputs and params did not change
are restored from the cache (a top-k row reruns evaluate only).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.ablation.tables import AblationTable, Row
from pipeline.errors import UserError
from pipeline.params import ParamsError, load_all, read_yaml

FINISHED = ("Success", "Failed")


class AblationError(UserError):
    """A table that cannot run as asked (bad override, DVC refused, a row failed)."""


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["section.key=value", …] (YAML values) → {dotted key: value}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AblationError(f"--set {item!r}: expected section.key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    """A copy of the params document with each dotted key set; a key it lacks is an error."""
    doc = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = doc
        *parents, leaf = key.split(".")
        for name in parents:
            if not isinstance(node, dict) or name not in node:
                raise AblationError(f"{where}: {key} is not a key of params.yaml")
            node = node[name]
        if not isinstance(node, dict) or leaf not in node:
            raise AblationError(f"{where}: {key} is not a key of params.yaml")
        node[leaf] = value
    return doc


def check_rows(table: AblationTable, params_path: str | Path,
               extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Row name → its overrides (budget, row, then ``extra``), each checked by loading every
    params section with them (``pipeline.params.load_all``); one line naming the row otherwise."""
    raw = read_yaml(params_path)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in table.rows:
            overrides = {**table.overrides(row), **extra}
            where = f"{table.name} row {row.name}"
            path = Path(tmp) / "params.yaml"
            path.write_text(yaml.safe_dump(apply_overrides(raw, overrides, where), sort_keys=False),
                            encoding="utf-8")
            try:
                load_all(path)
            except ParamsError as err:
                raise AblationError(f"{where}: {err}") from None
            out[row.name] = overrides
    return out


def exp_name(table: AblationTable, row: Row | str, stamp: str) -> str:
    return f"{table.name}-{row if isinstance(row, str) else row.name}-{stamp}"


def set_args(overrides: dict[str, Any]) -> list[str]:
    """``-S key=value`` arguments, values in YAML flow style (DVC parses them as YAML)."""
    args = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
        text = " ".join(line for line in text.splitlines() if line != "...").strip()
        args += ["-S", f"{key}={text}"]
    return args


def dvc(root: str | Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the project's ``dvc`` in ``root``; a failure is one line with DVC's own message."""
    from pipeline.dag import dvc_executable

    proc = subprocess.run([dvc_executable(), *args], cwd=root, capture_output=True, text=True,
                          check=False)
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise AblationError(f"dvc {' '.join(args[:3])} failed: {msg[-1] if msg else proc.returncode}")
    return proc


def queue_table(table: AblationTable, root: str | Path, rows: dict[str, dict[str, Any]],
                stamp: str, dry_run: bool = False,
                echo: Callable[[str], None] = print) -> list[str]:
    """``dvc exp run --queue`` every row; returns the experiment names in row order."""
    names = []
    for row in table.rows:
        name = exp_name(table, row, stamp)
        args = ["exp", "run", "--queue", "-n", name, *set_args(rows[row.name])]
        echo("dvc " + " ".join(args))
        if not dry_run:
            dvc(root, *args)
        names.append(name)
    return names


def queue_status(root: str | Path) -> dict[str, str]:
    """Experiment name → status (Queued, Running, Success, Failed) from ``dvc queue status``."""
    out = {}
    for line in dvc(root, "queue", "status").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[-1] in ("Queued", "Running", *FINISHED):
            out[parts[1]] = parts[-1]
    return out


def run_queue(root: str | Path, names: list[str], jobs: int = 1, poll: float = 20.0,
              echo: Callable[[str], None] = print) -> dict[str, str]:
    """``dvc queue start`` and wait until every experiment of ``names`` has finished, printing
    each change of status with the elapsed time; returns name → final status."""
    start, last = time.monotonic(), {}
    dvc(root, "queue", "start", "-j", str(jobs))
    while True:
        status = queue_status(root)
        now = {n: status.get(n, "Queued") for n in names}
        for name, state in now.items():
            if last.get(name) != state:
                done = sum(s in FINISHED for s in now.values())
                echo(f"[{(time.monotonic() - start) / 60:5.1f} min] {name}: {state} "
                     f"({done}/{len(names)} rows done)")
        last = now
        if all(s in FINISHED for s in now.values()):
            return now
        sys.stdout.flush()
        time.sleep(poll)


def failed_log(root: str | Path, name: str, lines: int = 15) -> str:
    """The tail of a failed experiment's log (``dvc queue logs``)."""
    proc = dvc(root, "queue", "logs", name, check=False)
    return "\n".join((proc.stdout or proc.stderr).strip().splitlines()[-lines:])
