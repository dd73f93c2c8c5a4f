"""Kinetics-600 (§4 "Datasets", Table 4: future prediction of 16-frame videos from 5 frames at
64×64), read from a folder of downloaded clips plus the official CSV split files
(``data.source: kinetics600``).

On disk: DeepMind's ``kinetics600.tar.gz`` gives ``train.csv``, ``validate.csv`` and ``test.csv``
with columns ``label,youtube_id,time_start,time_end,split`` (the test file may lack ``label``);
the usual downloaders save each row as ``<youtube_id>_<time_start:06d>_<time_end:06d>.mp4``, flat
or in per-split / per-class folders. ``data.path`` is the folder holding the CSVs (directly or in
``annotations/``) and, anywhere below it, the clips.

Each CSV row is one video: label from ``label`` (class ids = sorted names), split from ``split``
(``train`` → train, ``validate``/``val`` → val, ``test`` → test; an empty one from the file's name).
A row whose clip is not under ``data.path`` (YouTube videos disappear; every copy of Kinetics
misses some) is a row of ``rejected.csv`` ("not downloaded"), never an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.data.datasets.common import dataset_root, index_videos, label_ids, relative
from pipeline.data.sources import Listing, SourceError, VideoSource
from pipeline.params import DataParams

CSV_SPLITS = {"train": "train", "validate": "val", "val": "val", "valid": "val", "test": "test"}
REQUIRED = ("youtube_id", "time_start", "time_end")


def clip_name(youtube_id: str, start: str, end: str) -> str:
    """The downloaders' file name (without extension) of a CSV row."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (has {header}); "
                              f"expected label,youtube_id,time_start,time_end,split")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def _split_of(row: dict[str, str], csv_path: Path) -> str | None:
    raw = row.get("split", "") or csv_path.stem.lower().split("_")[-1]
    return CSV_SPLITS.get(raw.lower())


def list_kinetics(data: DataParams) -> Listing:
    """Every row of the split CSVs under ``data.path`` whose clip is there."""
    root = dataset_root(data.path, "Kinetics-600", "train.csv", "test.csv", "validate.csv",
                        "annotations")
    tables = sorted(p for folder in (root, root / "annotations") if folder.is_dir()
                    for p in folder.glob("*.csv") if CSV_SPLITS.get(p.stem.lower().split("_")[-1]))
    if not tables:
        raise SourceError(f"data.path: no train.csv / validate.csv / test.csv in {root}")
    files = index_videos(root)
    rows = [(table, row) for table in tables for row in _rows(table)]
    classes, ids = label_ids(row.get("label", "") for _, row in rows)
    videos, rejected, seen = [], [], set()
    for table, row in rows:
        try:
            name = clip_name(row["youtube_id"], row["time_start"], row["time_end"])
        except ValueError:
            rejected.append((f"{table.name}: {row['youtube_id']}", "time_start / time_end are not numbers"))
            continue
        split = _split_of(row, table)
        if split is None:
            rejected.append((f"{table.name}: {name}", f"unknown split {row.get('split')!r}"))
            continue
        if name in seen:
            rejected.append((f"{table.name}: {name}", "listed twice"))
            continue
        seen.add(name)
        found = files.get(name)
        if not found:
            rejected.append((f"{table.name}: {name}", "not downloaded (no such video under data.path)"))
            continue
        label = row.get("label", "")
        videos.append(VideoSource(video_id=name, path=str(found[0]), source=relative(found[0], root),
                                  label=label, label_id=ids.get(label, -1), split=split))
    return Listing(videos, rejected, classes)


__all__ = ["clip_name", "list_kinetics"]
