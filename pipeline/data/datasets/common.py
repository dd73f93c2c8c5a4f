"""What the dataset readers share: finding the dataset's folder, indexing its video files by
name, reading its split lists, and building :class:`~pipeline.data.sources.VideoSource` rows."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from pipeline.data.sources import VIDEO_EXTENSIONS, SourceError


def dataset_root(path: str, name: str, *markers: str) -> Path:
    """``path`` (or the one sub-folder of it holding one of ``markers``) as the dataset's root;
    a one-line :class:`SourceError` naming ``data.path`` when none is there."""
    root = Path(path)
    if not root.is_dir():
        raise SourceError(f"data.path: {path!r} is not a folder (the {name} dataset's root)")
    for candidate in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if any((candidate / m).exists() for m in markers):
            return candidate
    raise SourceError(f"data.path: {path!r} holds none of {', '.join(markers)} (is it the {name} "
                      f"dataset's folder?)")


def index_videos(root: Path, extensions: Iterable[str] = VIDEO_EXTENSIONS) -> dict[str, list[Path]]:
    """Every video file under ``root`` by its file name without extension (sorted paths)."""
    wanted = {e.lower() for e in extensions}
    index: dict[str, list[Path]] = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if path.suffix.lower() in wanted:
                index.setdefault(path.stem, []).append(path)
    return {k: sorted(v) for k, v in index.items()}


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX), what rejected.csv and the clip metadata show."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def read_lines(path: Path) -> list[str]:
    """The non-empty lines of a split list, stripped (a missing file is a one-line error)."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def label_ids(labels: Iterable[str]) -> tuple[list[str], dict[str, int]]:
    """Sorted class names and name → id ("" stays unlabelled, id -1)."""
    classes = sorted({label for label in labels if label})
    return classes, {name: i for i, name in enumerate(classes)}


__all__ = ["dataset_root", "index_videos", "label_ids", "read_lines", "relative"]
