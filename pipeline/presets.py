"""Params presets: the paper's settings for one dataset, applied to ``params.yaml``.

A preset (``params/<name>.yaml``) is a *partial* params file: only the keys whose value differs
from the demo's ``params.yaml``, each tagged ``[paper]`` / ``[ours]`` like params.yaml's own lines.
:func:`apply_preset` writes its values into params.yaml *in place*, line by line: every other
line (comments, tags, order, keys the preset does not set) stays byte-identical, and a replaced
line takes the preset's comment. The result is checked with the strict loader
(``pipeline.params.load_all``: an unknown or misspelt key is an error naming it) before the file is
replaced. So a preset written for today's params.yaml keeps working when params.yaml gains keys,
and ``git diff params.yaml`` shows exactly what the preset changed.

    ccvs preset bair64 --data-path /datasets/bair     # params.yaml ← params/bair64.yaml
    dvc exp run -n bair64                             # an experiment of the workspace's params
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pipeline.params import ParamsError, load_all

PRESET_DIR = Path(__file__).resolve().parents[1] / "params"
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][A-Za-z0-9_]*):(?P<rest>.*)$")


def preset_path(name: str) -> Path:
    """``name`` as a path (``params/bair64.yaml``) or a preset name (``bair64``)."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    found = PRESET_DIR / f"{name}.yaml"
    if not found.exists():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ParamsError(f"preset {name!r}: no such preset (known: {known})")
    return found


def _split_comment(rest: str) -> tuple[str, str]:
    """A line's text after ``key:`` → (value text, comment text without '#')."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].rstrip(), rest[i + 1 :].strip()
    return rest.rstrip(), ""


def _depth(text: str) -> int:
    return text.count("[") + text.count("{") - text.count("]") - text.count("}")


def _entries(lines: list[str]) -> dict[str, tuple[int, int, str, str]]:
    """dotted key → (first line, lines after it that continue its value or its comment, value,
    comment)."""
    out: dict[str, tuple[int, int, str, str]] = {}
    stack: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        match = _KEY.match(lines[i])
        if not match or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        value, comment = _split_comment(match["rest"])
        extra, depth, full = 0, _depth(value), value.strip()
        while depth > 0 and i + extra + 1 < len(lines):  # a flow list spanning lines
            extra += 1
            more, _ = _split_comment(lines[i + extra])
            depth += _depth(more)
            full += " " + more.strip()
        column = lines[i].find("#", len(lines[i]) - len(match["rest"]) + len(value)) if comment else -1
        while (column > 0 and i + extra + 1 < len(lines)  # its comment, continued below it
               and lines[i + extra + 1].find("#") == column and not lines[i + extra + 1][:column].strip()):
            extra += 1
        out[".".join(k for _, k in stack)] = (i, extra, full, comment)
        i += 1 + extra
    return out


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _render(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def merge(base_text: str, preset_text: str, origin: str = "preset") -> tuple[str, list[str]]:
    """``base_text`` (params.yaml) with the values of ``preset_text``; also the changed keys as
    ``key: old → new`` lines. A preset key params.yaml does not have is a :class:`ParamsError`."""
    try:
        preset = yaml.safe_load(preset_text) or {}
    except yaml.YAMLError as err:
        raise ParamsError(f"{origin}: not valid YAML ({err})") from None
    lines = base_text.splitlines()
    base = _entries(lines)
    comments = {k: c for k, (_, _, _, c) in _entries(preset_text.splitlines()).items()}
    leaves = _leaves(preset)
    unknown = [k for k in leaves if k not in base]
    if unknown:
        raise ParamsError(f"{origin}: {unknown[0]}: unknown key (not in params.yaml)")
    changes = []
    for key in sorted(leaves, key=lambda k: base[k][0], reverse=True):  # bottom-up: stable indices
        start, extra, old, old_comment = base[key]
        new = _render(leaves[key])
        if yaml.safe_load(old or "null") == leaves[key]:
            new = old  # the same value: keep how params.yaml writes it
        else:
            changes.append(f"{key}: {old} → {new}")
        match = _KEY.match(lines[start])
        head = f"{match['indent']}{match['key']}: {new}"
        comment = comments.get(key) or old_comment
        rest = match["rest"]
        column = len(lines[start]) - len(rest) + len(_split_comment(rest)[0]) if old_comment else 0
        column = lines[start].find("#", column) if old_comment else len(head) + 1
        line = f"{head.ljust(max(column, len(head) + 1))}# {comment}" if comment else head
        lines[start : start + extra + 1] = [line]
    return "\n".join(lines) + "\n", sorted(changes)


def _changes(before: str, after: str) -> list[str]:
    old, new = _entries(before.splitlines()), _entries(after.splitlines())
    return sorted(f"{k}: {old[k][2]} → {new[k][2]}" for k in new
                  if k in old and old[k][2] != new[k][2])


def apply_preset(name: str, params: str | Path = "params.yaml", *,
                 overrides: dict[str, Any] | None = None, write: bool = True) -> list[str]:
    """Merge preset ``name`` (and ``overrides``, dotted key → value) into ``params``, check the
    result with the strict loader, then replace the file (unless ``write`` is False). Returns the
    changed keys (``key: old → new``)."""
    params = Path(params)
    original = params.read_text(encoding="utf-8")
    source = preset_path(name)
    text, _ = merge(original, source.read_text(encoding="utf-8"), str(source))
    for key, value in (overrides or {}).items():
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        text, _ = merge(text, yaml.safe_dump(nested), f"--set {key}")
    fd, tmp = tempfile.mkstemp(prefix=".params-", suffix=".yaml", dir=params.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        load_all(tmp)  # strict: a wrong type or value fails here, not three stages later
        if write:
            os.replace(tmp, params)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return _changes(original, text)


__all__ = ["PRESET_DIR", "apply_preset", "merge", "preset_path"]
