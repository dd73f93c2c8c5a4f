"""UCF-101 (App. E, Table D1: unconditional synthesis of 16-frame videos at 128×128), read from
the official release (``data.source: ucf101``).

On disk: ``UCF101.rar`` unpacks to ``UCF-101/<Class>/v_<Class>_g<group>_c<clip>.avi`` (320×240,
25 fps, Xvid), ``UCF101TrainTestSplits-RecognitionTask.zip`` to ``ucfTrainTestlist/`` with
``classInd.txt`` (``<id> <Class>``, ids from 1), ``trainlist0{1,2,3}.txt``
(``<Class>/<file>.avi <id>``) and ``testlist0{1,2,3}.txt`` (``<Class>/<file>.avi``). ``data.path``
is the folder holding both (or ``UCF-101/`` with ``ucfTrainTestlist/`` inside or beside it).
``data.fold`` picks the official split (1, 2 or 3).

Labels: the class of ``classInd.txt`` (label id = its id − 1, the official order). Splits: the
fold's test list → test; its train list → train, except the videos of ``data.val_fraction`` of the
*groups* (drawn by a hash of ``g<group>``) → val, so no val video shares a group (the same actors
and scene) with a training one, as the official lists keep test groups apart. A listed file that is
missing is a row of ``rejected.csv``. Paths are matched case-insensitively: the official lists
write ``HandstandPushups/v_HandStandPushups_…`` where the archive has another case.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.data.datasets.common import dataset_root, index_videos, read_lines, relative
from pipeline.data.sources import Listing, SourceError, VideoSource, slugify
from pipeline.data.splits import hash_split
from pipeline.params import DataParams

_GROUP = re.compile(r"_g(\d+)_c\d+$", re.IGNORECASE)


def _lists_folder(root: Path) -> Path:
    for folder in (root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist", root):
        if (folder / "classInd.txt").exists():
            return folder
    raise SourceError(f"data.path: no ucfTrainTestlist/classInd.txt in or beside {root}")


def list_ucf101(data: DataParams) -> Listing:
    """The fold ``data.fold`` of UCF-101 under ``data.path``."""
    if data.fold not in (1, 2, 3):
        raise SourceError(f"data.fold: UCF-101 has official splits 1, 2 and 3, got {data.fold}")
    root = dataset_root(data.path, "UCF-101", "UCF-101", "ucfTrainTestlist", "classInd.txt")
    lists = _lists_folder(root)
    videos_root = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    classes = {}
    for line in read_lines(lists / "classInd.txt"):
        number, name = line.split(maxsplit=1)
        classes[name.lower()] = (int(number) - 1, name)
    names = [name for _, name in sorted(classes.values())]
    files = {stem.lower(): paths[0] for stem, paths in index_videos(videos_root, (".avi",)).items()}

    entries = [(line.split()[0], "train") for line in read_lines(lists / f"trainlist0{data.fold}.txt")]
    entries += [(line.split()[0], "test") for line in read_lines(lists / f"testlist0{data.fold}.txt")]
    videos, rejected = [], []
    for listed, split in entries:
        rel = Path(listed)
        label = classes.get(rel.parent.name.lower())
        if label is None:
            rejected.append((listed, f"class {rel.parent.name!r} is not in classInd.txt"))
            continue
        path = files.get(rel.stem.lower())
        if path is None:
            rejected.append((listed, "file not found under data.path"))
            continue
        group = _GROUP.search(rel.stem)
        if split == "train" and group:
            split = hash_split(f"g{int(group.group(1)):02d}", data.val_fraction, 0.0)
        videos.append(VideoSource(video_id=slugify(path.stem), path=str(path),
                                  source=relative(path, videos_root), label=label[1],
                                  label_id=label[0], split=split))
    return Listing(videos, rejected, names)


__all__ = ["list_ucf101"]
