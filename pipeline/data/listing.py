"""The listing file: which inputs the DAG reads, written by stage ``listing``, checked by ``prepare``.

DVC reruns a stage when a dependency's content changes; a folder of videos named by a glob
(``data.path: /data/my_videos/**/*.mp4``) or by a manifest is no dependency DVC can hash. So the
``listing`` stage runs on every ``dvc repro`` (``always_changed``) and writes one JSON file: the
listing of ``pipeline.data.sources`` (every usable video with its label, split, annotated
positions and layout file; every rejected input with its reason; the class names) and, for every
file it names, its size and modification time. That file changes — and DVC reruns ``prepare``
and what follows — exactly when a video (or layout file, or the annotations CSV) is added,
removed, replaced or touched, or when the listing itself would differ; otherwise ``prepare`` and
everything after it stay cached.

``prepare`` lists the inputs again and checks that they are still what the file says
(:func:`check_listing`): a video added or changed between the two stages stops it with one line
(rerun ``dvc repro``) instead of producing clips DVC would file under the older listing.

Format (``"format": 1``)::

    {"format": 1, "source": "folder", "path": "<data.path>", "classes": [...],
     "annotations": {"path", "size", "mtime_ns"} | null,
     "videos": [{"video_id", "path", "source", "label", "label_id", "split", "split_key",
                 "positions": [[frame, x, y], ...], "layout_path", "file": {"size", "mtime_ns"},
                 "layout_file": {...} | null}, ...],
     "rejected": [[source, reason], ...]}
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.data.sources import Listing, SourceError
from pipeline.params import DataParams

FORMAT = 1


def file_stamp(path: str | os.PathLike | None) -> dict[str, int] | None:
    """Size and modification time (ns) of ``path``; None when it is absent or not given."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def listing_document(listing: Listing, data: DataParams) -> dict[str, Any]:
    """The JSON document of ``listing`` (see the module doc), stamps included."""
    videos = []
    for v in listing.videos:
        videos.append({
            "video_id": v.video_id, "path": v.path, "source": v.source, "label": v.label,
            "label_id": v.label_id, "split": v.split, "split_key": v.split_key,
            "positions": [list(p) for p in v.positions], "layout_path": v.layout_path,
            "file": file_stamp(v.path), "layout_file": file_stamp(v.layout_path),
        })  # fmt: skip
    annotations = None
    if data.annotations:
        annotations = {"path": data.annotations, **(file_stamp(data.annotations) or {})}
    return {
        "format": FORMAT,
        "source": data.source,
        "path": data.path,
        "classes": list(listing.classes),
        "annotations": annotations,
        "videos": videos,
        "rejected": [list(r) for r in listing.rejected],
    }


def write_listing(path: str | os.PathLike, listing: Listing, data: DataParams) -> dict[str, Any]:
    """Write the listing file atomically; return its document."""
    doc = listing_document(listing, data)
    write_json(Path(path), doc, indent=1, sort_keys=False, ensure_ascii=False)
    return doc


def check_listing(path: str | os.PathLike, listing: Listing, data: DataParams) -> None:
    """Raise :class:`SourceError` (one line) unless ``listing`` is what the file at ``path`` holds."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path}: listing not found (run the listing stage first)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"{path}: not a readable listing ({err})") from None
    now = json.loads(json.dumps(listing_document(listing, data)))  # tuples → lists, as saved
    if saved == now:
        return
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise SourceError(f"{path}: not a listing of format {FORMAT}; rerun the listing stage")
    before = {v["path"]: v for v in saved.get("videos", [])}
    after = {v["path"]: v for v in now["videos"]}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(after) & set(before) if after[p] != before[p])
    parts = [f"{len(added)} added", f"{len(removed)} removed", f"{len(changed)} changed"]
    first = (added or removed or changed or ["(the listing's other fields)"])[0]
    raise SourceError(f"{path}: the inputs changed since the listing stage ran "
                      f"({', '.join(parts)}; e.g. {first}); rerun dvc repro")


__all__ = ["FORMAT", "check_listing", "file_stamp", "listing_document", "write_listing"]
