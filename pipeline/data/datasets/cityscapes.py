"""Cityscapes sequences (App. E "Layout-conditioned synthesis", Table D2, Fig. D1–D3: 30-frame
videos given 3 starting frames and layouts; 3475 train and 1525 test sequences), read from the
PNG frame sequences and the fine label maps (``data.source: cityscapes``).

On disk (``leftImg8bit_sequence_trainvaltest.zip``, ``gtFine_trainvaltest.zip``):
``leftImg8bit_sequence/{train,val,test}/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png``
(2048×1024, 17 fps; for each annotated frame, the 30-frame snippet around it: 19 frames before,
10 after) and ``gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (uint8
label ids 0–33) for the 20th frame of each snippet only. ``data.path`` is the folder holding both.

A video is one snippet: the frames of one ``<city>_<seq>`` with consecutive frame numbers (a gap
starts the next snippet). Its layouts are the label maps found for its frames: the gtFine map of
the annotated frame, and, for any other frame, a ``<city>_<seq>_<frame>_*labelIds.png`` anywhere
under ``data.path`` (put the label maps of a segmentation model there, as the paper does with [62],
to get a layout for every frame). A frame without a map gets :data:`NO_LAYOUT` (255) in
``layout.npy``. Layouts and frames share the crop (nearest-neighbour for the maps).

Splits as in the paper (3475 = train + val sequences for training, 1525 test): the official
``train`` and ``val`` → train, except ``data.val_fraction`` of the cities' sequences (hash of
``<city>_<seq>``) → val; official ``test`` → test. Cityscapes publishes no test annotations
(its ``gtFine/test`` maps are placeholders), so test layouts need a segmentation model's maps.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from pipeline.data.datasets.common import dataset_root
from pipeline.data.datasets.png_sequence import ImageSequence
from pipeline.data.sources import Listing, SourceError, VideoSource
from pipeline.data.splits import hash_split
from pipeline.params import DataParams

FPS = 17.0  # Cityscapes' sequences are recorded at 17 Hz
_FRAME = re.compile(r"^(?P<city>[a-z_]+?)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")
_MAP = re.compile(r"^(?P<city>[a-z_]+?)_(?P<seq>\d{6})_(?P<frame>\d{6})_.*labelIds\.png$")
SPLITS = {"train": "train", "val": "train", "test": "test"}  # official → ours (val by hash)


def _label_maps(root: Path) -> dict[tuple[str, str, int], Path]:
    """(city, seq, frame) → its label map; gtFine's win over any other folder's."""
    found: dict[tuple[str, str, int], Path] = {}
    for path in sorted(root.rglob("*labelIds.png"), key=lambda p: ("gtFine" in p.parts, str(p))):
        match = _MAP.match(path.name)
        if match:
            found[(match["city"], match["seq"], int(match["frame"]))] = path
    return found


def _snippets(frames: list[tuple[int, Path]]) -> list[list[tuple[int, Path]]]:
    runs: list[list[tuple[int, Path]]] = []
    for number, path in sorted(frames):
        if runs and number == runs[-1][-1][0] + 1:
            runs[-1].append((number, path))
        else:
            runs.append([(number, path)])
    return runs


def list_cityscapes(data: DataParams) -> Listing:
    """Every 30-frame snippet of ``leftImg8bit_sequence`` under ``data.path``."""
    root = dataset_root(data.path, "Cityscapes", "leftImg8bit_sequence")
    maps = _label_maps(root)
    videos, rejected = [], []
    for official, split in SPLITS.items():
        groups: dict[tuple[str, str], list[tuple[int, Path]]] = defaultdict(list)
        folder = root / "leftImg8bit_sequence" / official
        for path in sorted(folder.rglob("*.png")) if folder.is_dir() else []:
            match = _FRAME.match(path.name)
            if match is None:
                rejected.append((path.relative_to(root).as_posix(),
                                 "name is not <city>_<seq>_<frame>_leftImg8bit.png"))
                continue
            groups[(match["city"], match["seq"])].append((int(match["frame"]), path))
        for (city, seq), frames in sorted(groups.items()):
            for run in _snippets(frames):
                first = run[0][0]
                vid = f"{city}_{seq}_{first:06d}"
                layouts = tuple(str(maps[(city, seq, n)]) if (city, seq, n) in maps else None
                                for n, _ in run)
                videos.append(VideoSource(
                    video_id=vid, path=str(run[0][1]),
                    source=f"leftImg8bit_sequence/{official}/{city}/{vid}",
                    label="", label_id=-1,
                    split=split if split == "test" else hash_split(f"{city}_{seq}", data.val_fraction, 0.0),
                    stored=ImageSequence(tuple(str(p) for _, p in run), FPS, layouts),
                ))  # fmt: skip
    if not videos:
        raise SourceError(f"data.path: no <city>_<seq>_<frame>_leftImg8bit.png under "
                          f"{root / 'leftImg8bit_sequence'}")
    return Listing(videos, rejected, [])


__all__ = ["FPS", "list_cityscapes"]
