"""Weizmann actions (App. E "Class-conditioned synthesis", Fig. D5–D6 at 128×128: 9 subjects each
performing the same 10 actions from a fixed viewpoint; 8 subjects train, 1 is held out), read
from the dataset's per-action folders of AVI files (``data.source: weizmann``).

On disk (the "Actions as Space-Time Shapes" page): one archive per action (``walk.zip``,
``run.zip``, ``jack.zip``, …) unpacking to ``<action>/<subject>_<action>[n].avi`` (180×144;
``lena`` has two takes of run, skip and walk: ``lena_walk1.avi``, ``lena_walk2.avi``).
``data.path`` is the folder holding the action folders.

Labels: the action (the file name's part after the subject, without the take number; the folder
name when the file name has none). Splits, person-disjoint: the subjects sorted by name, the
``data.fold``-th one (1–9) → test (the paper's held-out subject); ``data.val_fraction`` of the
others' videos, drawn by a hash of the file name → val (monitoring only: those subjects also
appear in train); the rest → train.
"""

from __future__ import annotations

import re

from pipeline.data.datasets.common import dataset_root, index_videos, label_ids, relative
from pipeline.data.sources import Listing, SourceError, VideoSource, slugify
from pipeline.data.splits import hash_split
from pipeline.params import DataParams

ACTIONS = ("bend", "jack", "jump", "pjump", "run", "side", "skip", "walk", "wave1", "wave2")
_NAME = re.compile(r"^(?P<subject>[a-z]+)_(?P<action>[a-z0-9]+?)(?P<take>[12])?$", re.IGNORECASE)


def _action(stem_action: str, folder: str) -> str:
    for candidate in (stem_action.lower(), folder.lower()):
        if candidate in ACTIONS:
            return candidate
    return stem_action.lower()


def list_weizmann(data: DataParams) -> Listing:
    """Every ``<subject>_<action>.avi`` under ``data.path``, subject ``data.fold`` held out."""
    root = dataset_root(data.path, "Weizmann actions", *ACTIONS)
    parsed, rejected = [], []
    for stem, paths in sorted(index_videos(root, (".avi",)).items()):
        path = paths[0]
        match = _NAME.match(stem)
        if match is None:
            rejected.append((relative(path, root), "name is not <subject>_<action>.avi"))
            continue
        # "wave1"/"wave2" are actions, not takes: try the name with its digit first
        action = match["action"] + (match["take"] or "")
        if action.lower() not in ACTIONS:
            action = match["action"]
        parsed.append((path, match["subject"].lower(), _action(action, path.parent.name)))
    subjects = sorted({subject for _, subject, _ in parsed})
    if not subjects:
        raise SourceError(f"data.path: no <subject>_<action>.avi file under {root}")
    if not 1 <= data.fold <= len(subjects):
        raise SourceError(f"data.fold: the held-out subject must be 1..{len(subjects)} "
                          f"({', '.join(subjects)}), got {data.fold}")
    held_out = subjects[data.fold - 1]
    classes, ids = label_ids(action for _, _, action in parsed)
    videos = []
    for path, subject, action in parsed:
        split = "test" if subject == held_out else hash_split(path.stem, data.val_fraction, 0.0)
        videos.append(VideoSource(video_id=slugify(path.stem), path=str(path),
                                  source=relative(path, root), label=action,
                                  label_id=ids[action], split=split))
    return Listing(videos, rejected, classes)


__all__ = ["ACTIONS", "list_weizmann"]
