"""AudioSet-Drums (§4 "Datasets", Table 6 / D3: sound-conditioned synthesis at 64×64; drum
performances, 6k train and 1k test clips), read from mp4 files with their sound track and
AudioSet's segment CSVs (``data.source: audioset_drums``).

On disk, either of:

- AudioSet's segment CSVs (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
  ``eval_segments.csv``: ``#`` comment lines, then ``YTID, start_seconds, end_seconds,
  "positive_labels"``) beside the downloaded clips, each named ``<YTID>``, ``<YTID>_<start>`` or
  ``<YTID>_<start>_<end>`` (seconds as integers, zero-padded to 6 digits or not, or as written in
  the CSV). ``eval`` files → test, ``train`` files → train; a row whose clip is absent is rejected
  ("not downloaded") when its labels hold a drum class (:data:`DRUM_LABELS`), and is simply not
  part of AudioSet-Drums otherwise, so the full AudioSet CSVs can be used as they are;
- the curated release the paper used (Sound2Sight's ``AudioSet_Drums.zip``):
  ``AudioSet_Dataset/{train,test}/mp4/*.mp4``, split = folder.

``data.path`` is the folder holding them. val = ``data.val_fraction`` of the training clips,
drawn by a hash of the clip name. The clips are unlabelled (one class: the sound is the control).
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.data.datasets.common import index_videos, relative
from pipeline.data.sources import Listing, SourceError, VideoSource, unique_ids
from pipeline.data.splits import hash_split
from pipeline.params import DataParams

DRUM_LABELS = ("/m/026t6", "/m/02hnl")  # AudioSet ontology: "Drum", "Drum kit"
CURATED = ("AudioSet_Dataset", "AudioSet_Drums/AudioSet_Dataset")


def _segments(path: Path) -> list[tuple[str, str, str, list[str]]]:
    """(YTID, start, end, labels) of each data row of an AudioSet segment CSV."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        lines = (line for line in handle if line.strip() and not line.lstrip().startswith("#"))
        for row in csv.reader(lines, skipinitialspace=True):
            if len(row) < 3:
                raise SourceError(f"{path}: a row with {len(row)} column(s), expected YTID, "
                                  f"start_seconds, end_seconds, positive_labels")
            labels = row[3].split(",") if len(row) > 3 else []
            rows.append((row[0].strip(), row[1].strip(), row[2].strip(), [x.strip() for x in labels]))
    return rows


def _candidates(ytid: str, start: str, end: str) -> list[str]:
    names = [ytid, f"{ytid}_{start}", f"{ytid}_{start}_{end}"]
    try:
        s, e = int(float(start)), int(float(end))
    except ValueError:
        return names
    return names + [f"{ytid}_{s}", f"{ytid}_{s}_{e}", f"{ytid}_{s:06d}_{e:06d}", f"{ytid}_{s:06d}"]


def _split_of_table(path: Path) -> str | None:
    name = path.stem.lower()
    return "test" if "eval" in name or "test" in name else "train" if "train" in name else None


def list_audioset_drums(data: DataParams) -> Listing:
    root = Path(data.path)
    if not root.is_dir():
        raise SourceError(f"data.path: {data.path!r} is not a folder (AudioSet-Drums' root)")
    tables = sorted(p for p in root.rglob("*segments*.csv") if _split_of_table(p))
    if tables:
        return _from_segments(root, tables, data)
    for curated in CURATED:
        if (root / curated).is_dir():
            return _from_folders(root / curated, data)
    raise SourceError(f"data.path: no AudioSet segment CSV (*segments*.csv) and no "
                      f"AudioSet_Dataset/{{train,test}}/mp4 folder under {root}")


def _videos(found: list[tuple[Path, str]], root: Path, data: DataParams) -> list[VideoSource]:
    """(clip, folder split) → rows; ids are the clip names made safe (``unique_ids``)."""
    ids = unique_ids([path.stem for path, _ in found])
    return [VideoSource(video_id=vid, path=str(path), source=relative(path, root), label="",
                        label_id=-1, split=(hash_split(path.stem, data.val_fraction, 0.0)
                                            if split == "train" else split))
            for (path, split), vid in zip(found, ids)]


def _from_segments(root: Path, tables: list[Path], data: DataParams) -> Listing:
    files = index_videos(root)
    found_all, rejected, seen = [], [], set()
    for table in tables:
        split = _split_of_table(table)
        for ytid, start, end, labels in _segments(table):
            found = next((files[n][0] for n in _candidates(ytid, start, end) if n in files), None)
            if found is None:
                if any(label in DRUM_LABELS for label in labels):
                    rejected.append((f"{table.name}: {ytid} {start}-{end}",
                                     "not downloaded (no such clip under data.path)"))
                continue
            if found in seen:
                continue
            seen.add(found)
            found_all.append((found, split))
    if not found_all:
        raise SourceError(f"data.path: no clip of {', '.join(t.name for t in tables)} under {root}")
    return Listing(_videos(found_all, root, data), rejected, [])


def _from_folders(base: Path, data: DataParams) -> Listing:
    found = [(path, split) for split in ("train", "test") if (base / split / "mp4").is_dir()
             for paths in sorted(index_videos(base / split / "mp4", (".mp4",)).values())
             for path in paths]
    return Listing(_videos(found, base, data), [], [])


__all__ = ["DRUM_LABELS", "list_audioset_drums"]
