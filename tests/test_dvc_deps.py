"""dvc.yaml lists every project module a stage's code runs, so editing one reruns the stage.

DVC reruns a stage when a listed dependency changes, and only then. When a module is split (its
code moved to a new file that the old one imports), the new file must join the stage's ``deps``,
or edits to the moved code silently leave stale outputs. The check: the ``.py`` deps of a stage
are closed under import: every project module (``ccvs_models``, ``pipeline``, ``stages``) that a
listed file imports, at module level or inside a function, is listed too. Imports under
``if TYPE_CHECKING:`` are type hints, not code that runs, and do not count.

Some modules are exempt, because their code does not shape a stage's outputs and listing them
would rerun the whole DAG on every edit: ``pipeline/params.py`` (the params themselves are DVC
``params``; it imports every model config), ``pipeline/atomic.py`` (how a file is written, not
what), the ``pipeline/tracking/`` package (MLflow logging and the headline metrics, a copy of
numbers the stage computed), ``pipeline/dag.py`` (how dvc.yaml is read),
``pipeline/stage.py`` (the command line and how an error is printed) and ``pipeline/errors.py``
(the error classes).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ccvs_models", "pipeline", "stages")
EXEMPT = {"pipeline/params.py", "pipeline/atomic.py", "pipeline/stage.py", "pipeline/errors.py",
          "pipeline/dag.py",
          *(p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline/tracking").glob("*.py"))}


def _module_file(name: str) -> str | None:
    if name.split(".")[0] not in PACKAGES:
        return None
    path = ROOT / (name.replace(".", "/") + ".py")
    if not path.is_file() or path.name == "__init__.py":
        return None
    return path.relative_to(ROOT).as_posix()


def project_imports(path: Path) -> set[str]:
    """Files (relative to the repo) of the project modules ``path`` imports, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)  # `from pipeline import shards` names a module too:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {f for f in map(_module_file, names) if f is not None}


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def missing_deps(stage: dict) -> dict[str, str]:
    """Unlisted module -> the listed file that imports it (first found)."""
    listed = {d for d in stage.get("deps", []) if d.endswith(".py")}
    missing: dict[str, str] = {}
    todo = sorted(listed)
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen or path in EXEMPT:
            continue
        seen.add(path)
        for imported in sorted(project_imports(ROOT / path)):
            if imported not in listed and imported not in EXEMPT:
                missing.setdefault(imported, path)
            todo.append(imported)
    return missing


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_are_closed_under_import(name: str) -> None:
    stage = _stages()[name]
    assert f"stages/{name}.py" in stage.get("deps", []), f"dvc.yaml: {name} does not list its own module"
    missing = missing_deps(stage)
    assert not missing, (
        f"dvc.yaml stage {name!r} misses deps (editing them would not rerun it): "
        + ", ".join(f"{m} (imported by {by})" for m, by in sorted(missing.items())))


def test_listed_deps_exist() -> None:
    for name, stage in _stages().items():
        for dep in stage.get("deps", []):
            if dep.endswith(".py"):
                assert (ROOT / dep).is_file(), f"dvc.yaml stage {name!r} lists {dep}, which does not exist"


def test_the_check_sees_a_split(tmp_path: Path) -> None:
    """The checker itself: a module that moved its code out is caught, a type-only import is not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from pipeline.training.task import TrainTask\n"
        "if TYPE_CHECKING:\n"
        "    from pipeline.data.shards import ShardWriter\n"
        "def later():\n"
        "    from ccvs_models import flow\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    found = project_imports(probe)
    assert found == {"pipeline/training/task.py", "ccvs_models/flow.py"}
