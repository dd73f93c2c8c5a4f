"""The layout rules of docs/ARCHITECTURE.md, checked on the source: arrows one way
(stages → pipeline → ccvs_models), no import cycle among project modules (type-only imports
included: a cycle through a type hint still ties two modules together), and no re-export shim (a
module that imports a project name only to hand it on)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ccvs_models", "pipeline", "stages")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import of a project module (name None for ``import m``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] in PACKAGES]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                found += [(node.module, a.name) for a in node.names]
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, name in _imports(path):
            sub = f"{target}.{name}" if name else None
            dep = sub if sub in MODULES else target
            if dep in MODULES and dep != mod:
                graph[mod].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_arrows_point_one_way() -> None:
    layer = {"ccvs_models": 0, "pipeline": 1, "stages": 2}
    wrong = [f"{mod} imports {dep}" for mod, deps in _graph().items() for dep in deps
             if layer[dep.split(".")[0]] > layer[mod.split(".")[0]]]
    assert not wrong, "; ".join(wrong)


def test_no_reexport_shims() -> None:
    """Every project name a module imports is used in that module (not only listed in __all__)."""
    shims = []
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        used |= {n.value.id for n in ast.walk(tree)
                 if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
        # names in string annotations count as used; the strings of __all__ do not
        in_all = {id(n) for a in tree.body if isinstance(a, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "__all__" for t in a.targets)
                  for n in ast.walk(a.value)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in in_all):
                used |= {w for w in node.value.replace("[", " ").replace("]", " ").split()}
        for target, name in _imports(path):
            if name is None or f"{target}.{name}" in MODULES:
                continue
            if name not in used and not any(a for a in ast.walk(tree) if isinstance(a, ast.alias)
                                            and a.name == name and a.asname in used):
                shims.append(f"{mod} imports {name} from {target} without using it")
    assert not shims, "; ".join(shims)
