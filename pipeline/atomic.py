"""Atomic small-file writers shared by the stages: write to a temp name in the same folder, then
``os.replace``, so a killed stage never leaves a half-written metrics file, manifest or parquet."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _temp_for(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_json(path: str | Path, data: Any, *, indent: int = 2, sort_keys: bool = True,
               ensure_ascii: bool = True) -> Path:
    """``data`` as JSON (sorted keys by default) with a trailing newline, atomically."""
    path = Path(path)
    tmp = _temp_for(path)
    try:
        text = json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_parquet(path: str | Path, table: Any) -> Path:
    """A ``pyarrow.Table`` as parquet, atomically."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = _temp_for(path)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
