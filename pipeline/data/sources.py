"""Listing the input videos of ``prepare``: the demo world, a folder/glob, or a manifest CSV.

The paper trains on several datasets (§4 "Datasets": BAIR, Kinetics-600, AudioSet-Drums; App. E:
UCF-101, Cityscapes, Weizmann); each has its own reader in ``pipeline.data.datasets`` (picked by
``data.source``, ``datasets.catalog.list_inputs``). Any other videos come through one of three
generic sources (``data.source`` in params.yaml):

- ``demo``: the ``demo_data`` stage's folder (``videos.csv`` path,label,split, ``annotations.csv``,
  ``layouts/<video_id>.npz``, ``classes.json``; docs/CONTRACTS.md "Raw demo data");
- ``folder``: a glob of video files (or a folder, searched recursively for video files); the label
  is the parent folder's name (none for files directly in the base folder) and the split is left
  empty: ``prepare`` draws it among the usable videos (``pipeline.data.splits.draw_splits``: a
  stable hash of the path relative to the glob's base folder, at least one video per split);
- ``manifest``: a CSV with columns path,label,split (path relative to the CSV, or absolute; an
  empty split is drawn as for ``folder``, an empty label gives label id -1).

Each usable input becomes a :class:`VideoSource`; an input that cannot be used (a missing file, an
unknown split or label) becomes a rejected ``(source, reason)`` pair instead of an exception.
``VideoSource.split_key`` is the key a drawn split hashes.
Annotated positions come from ``data.annotations`` (or the demo's own ``annotations.csv``): a CSV
video,frame,x,y whose ``video`` is the video id or the path as written in the listing.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable

from pipeline.params import DataParams
from pipeline.errors import UserError
from pipeline.data.stored_video import StoredVideo

SPLITS = ("train", "val", "test")
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
_SLUG_MAX = 60  # keeps "<id>-<hash>_0000.positions.npy" within the 100-char tar name field


class SourceError(UserError, ValueError):
    """The listing itself cannot be read (missing folder, bad CSV header): one line, names the file."""


@dataclasses.dataclass(frozen=True)
class VideoSource:
    """One input video and what comes with it."""

    video_id: str  # unique, safe slug (letters, digits, _ and -; no dots): the shard key prefix
    path: str  # where to read the file
    source: str  # the path as the user wrote it (manifest, rejected.csv, clip metadata)
    label: str  # class name ("" = unlabelled)
    label_id: int  # index in the classes list (-1 = unlabelled)
    split: str  # train | val | test; "" = drawn by prepare (pipeline.data.splits.draw_splits)
    positions: tuple[tuple[int, float, float], ...] = ()  # annotated (frame, x, y), frame-pixel coords
    layout_path: str | None = None  # npz with `layout` uint8 (T, H, W), when the data carry layouts
    stored: StoredVideo | None = None  # frames kept otherwise than as a media file (BAIR, Cityscapes)
    split_key: str = ""  # what a drawn split hashes (the path relative to the folder / manifest)


@dataclasses.dataclass
class Listing:
    """What a source holds: usable videos, rejected inputs, and the class names."""

    videos: list[VideoSource]
    rejected: list[tuple[str, str]]  # (source, reason)
    classes: list[str]  # index = label id


# --------------------------------------------------------------------------- helpers


def slugify(text: str) -> str:
    """A safe id from a path: ASCII letters, digits, ``_`` and ``-`` only (no dots), ≤ 60 chars."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9_-]+", "_", text)
    text = re.sub(r"_+", "_", text).strip("_-")
    return text[:_SLUG_MAX].rstrip("_-")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def unique_ids(names: list[str]) -> list[str]:
    """Slugs for ``names`` (relative paths without extension); a slug that would be shared by
    several names, or is empty, gets a short hash of its name appended."""
    slugs = [slugify(n) for n in names]
    counts = Counter(slugs)
    out = []
    for name, slug in zip(names, slugs):
        if not slug or counts[slug] > 1:
            slug = f"{slug or 'video'}-{_digest(name)[:8]}"
        out.append(slug)
    return out


def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (has {header})")
            reader.fieldnames = header
            return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise SourceError(f"{path}: not a readable UTF-8 CSV ({err})") from None


def read_annotations(path: str | Path) -> dict[str, list[tuple[int, float, float]]]:
    """CSV video,frame,x,y → {video: [(frame, x, y), ...]} (sorted by frame)."""
    path = Path(path)
    table: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for line, row in enumerate(_read_csv(path, ("video", "frame", "x", "y")), start=2):
        try:
            item = (int(row["frame"]), float(row["x"]), float(row["y"]))
        except ValueError:
            raise SourceError(f"{path}:{line}: frame, x, y must be numbers, got {row}") from None
        if item[0] < 0:
            raise SourceError(f"{path}:{line}: negative frame index {item[0]}")
        table[row["video"]].append(item)
    return {k: sorted(v) for k, v in table.items()}


def _positions_for(table: dict, *names: str) -> tuple[tuple[int, float, float], ...]:
    for name in names:
        if name in table:
            return tuple(table[name])
    return ()


def _classes_from(labels: Iterable[str]) -> list[str]:
    return sorted({label for label in labels if label})


# --------------------------------------------------------------------------- sources


def list_demo(folder: str | Path, annotations: str = "") -> Listing:
    """The demo_data stage's folder (docs/CONTRACTS.md "Raw demo data")."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SourceError(f"{folder}: demo folder not found (run the demo_data stage first)")
    rows = _read_csv(folder / "videos.csv", ("path", "label", "split"))
    classes_file = folder / "classes.json"
    if classes_file.exists():
        try:
            classes = [str(c) for c in json.loads(classes_file.read_text(encoding="utf-8"))]
        except (json.JSONDecodeError, TypeError) as err:
            raise SourceError(f"{classes_file}: not a JSON list of class names ({err})") from None
    else:
        classes = _classes_from(r["label"] for r in rows)
    ann_file = Path(annotations) if annotations else folder / "annotations.csv"
    table = read_annotations(ann_file) if ann_file.exists() or annotations else {}

    stems = [Path(r["path"]).with_suffix("").as_posix() for r in rows]
    ids = unique_ids([Path(s).name for s in stems])
    videos, rejected = [], []
    for row, vid, stem in zip(rows, ids, stems):
        source = row["path"]
        path = folder / source
        reason = _check_row(path, row["split"], row["label"], classes)
        if reason:
            rejected.append((str(path), reason))
            continue
        layout = folder / "layouts" / f"{Path(stem).name}.npz"
        videos.append(
            VideoSource(
                video_id=vid,
                path=str(path),
                source=str(path),
                label=row["label"],
                label_id=classes.index(row["label"]) if row["label"] else -1,
                split=row["split"],
                positions=_positions_for(table, Path(stem).name, vid, source),
                layout_path=str(layout) if layout.exists() else None,
            )
        )
    return Listing(videos, rejected, classes)


def _check_row(path: Path, split: str, label: str, classes: list[str] | None) -> str | None:
    if split and split not in SPLITS:
        return f"split {split!r} is not one of {', '.join(SPLITS)} (or empty: drawn)"
    if classes is not None and label and label not in classes:
        return f"label {label!r} is not in classes.json"
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a regular file"
    return None


def _glob_base(pattern: str) -> Path:
    """The longest leading part of ``pattern`` without glob characters."""
    parts = Path(pattern).parts
    base = []
    for part in parts:
        if glob.has_magic(part):
            break
        base.append(part)
    return Path(*base) if base else Path(".")


def list_folder(pattern: str, annotations: str = "") -> Listing:
    """Files matching ``pattern`` (a glob, ``**`` allowed; or a folder, searched recursively for
    video extensions). Label = parent folder name; split left to ``prepare`` (drawn by hash of the
    relative path)."""
    root = Path(pattern)
    if root.is_dir():
        base = root
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    else:
        base = _glob_base(pattern)
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise SourceError(f"data.path: {pattern!r} matches no video file")
    rels = [p.relative_to(base).as_posix() if p.is_relative_to(base) else p.as_posix() for p in files]
    ids = unique_ids([str(Path(r).with_suffix("")) for r in rels])
    table = read_annotations(annotations) if annotations else {}
    labels = [p.parent.name if p.parent != base else "" for p in files]
    classes = _classes_from(labels)
    videos = [
        VideoSource(
            video_id=vid,
            path=str(path),
            source=str(path),
            label=label,
            label_id=classes.index(label) if label else -1,
            split="",
            positions=_positions_for(table, vid, str(path), rel),
            split_key=rel,
        )
        for path, rel, vid, label in zip(files, rels, ids, labels)
    ]
    return Listing(videos, [], classes)


def list_manifest(csv_path: str | Path, annotations: str = "") -> Listing:
    """A CSV path,label,split (path relative to the CSV or absolute; an empty split is drawn by
    ``prepare``). A row naming a missing file, an unknown split or a path already listed is
    rejected, not an error."""
    csv_path = Path(csv_path)
    rows = _read_csv(csv_path, ("path", "label", "split"))
    table = read_annotations(annotations) if annotations else {}
    classes = _classes_from(r["label"] for r in rows)
    ids = unique_ids([str(Path(r["path"]).with_suffix("")) for r in rows])
    videos, rejected, seen = [], [], set()
    for line, (row, vid) in enumerate(zip(rows, ids), start=2):
        source = row["path"]
        if not source:
            rejected.append((f"{csv_path}:{line}", "empty path"))
            continue
        path = Path(source) if Path(source).is_absolute() else csv_path.parent / source
        split = row["split"]
        reason = _check_row(path, split, row["label"], None)
        if reason is None and path.resolve() in seen:
            reason = f"duplicate of an earlier row (line {line} of {csv_path})"
        if reason:
            rejected.append((source, reason))
            continue
        seen.add(path.resolve())
        videos.append(
            VideoSource(
                video_id=vid,
                path=str(path),
                source=source,
                label=row["label"],
                label_id=classes.index(row["label"]) if row["label"] else -1,
                split=split,
                positions=_positions_for(table, vid, source),
                split_key=source,
            )
        )
    return Listing(videos, rejected, classes)


def list_sources(data: DataParams) -> Listing:
    """The listing ``data`` describes (``data.source`` picks the kind)."""
    if data.source == "demo":
        return list_demo(data.path, data.annotations)
    if data.source == "folder":
        return list_folder(data.path, data.annotations)
    if data.source == "manifest":
        return list_manifest(data.path, data.annotations)
    raise SourceError(f"data.source: unknown source {data.source!r} (demo, folder or manifest)")


__all__ = [
    "Listing",
    "SourceError",
    "SPLITS",
    "VideoSource",
    "list_demo",
    "list_folder",
    "list_manifest",
    "list_sources",
    "read_annotations",
    "slugify",
    "unique_ids",
]
