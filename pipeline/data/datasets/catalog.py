"""``data.source`` → the listing of ``prepare``'s inputs: the paper's six datasets by name
(§4 "Datasets", App. E), else the generic sources (demo, folder, manifest).

| ``data.source`` | dataset | reader |
|---|---|---|
| ``bair`` | BAIR robot pushing, ``softmotion30_44k`` TFRecords | ``datasets.bair`` |
| ``kinetics600`` | Kinetics-600 clips + official CSVs | ``datasets.kinetics`` |
| ``ucf101`` | UCF-101 avi + ``ucfTrainTestlist`` | ``datasets.ucf101`` |
| ``audioset_drums`` | AudioSet-Drums mp4 + segment CSVs | ``datasets.audioset`` |
| ``cityscapes`` | ``leftImg8bit_sequence`` PNGs + ``gtFine`` label maps | ``datasets.cityscapes`` |
| ``weizmann`` | Weizmann actions, per-action avi folders | ``datasets.weizmann`` |
"""

from __future__ import annotations

from typing import Callable

from pipeline.data.datasets.audioset import list_audioset_drums
from pipeline.data.datasets.bair import list_bair
from pipeline.data.datasets.cityscapes import list_cityscapes
from pipeline.data.datasets.kinetics import list_kinetics
from pipeline.data.datasets.ucf101 import list_ucf101
from pipeline.data.datasets.weizmann import list_weizmann
from pipeline.data.sources import Listing, list_sources
from pipeline.params import DataParams

DATASETS: dict[str, Callable[[DataParams], Listing]] = {
    "bair": list_bair,
    "kinetics600": list_kinetics,
    "ucf101": list_ucf101,
    "audioset_drums": list_audioset_drums,
    "cityscapes": list_cityscapes,
    "weizmann": list_weizmann,
}


def list_inputs(data: DataParams) -> Listing:
    """What ``prepare`` reads: the dataset ``data.source`` names, or a generic source."""
    reader = DATASETS.get(data.source)
    return reader(data) if reader is not None else list_sources(data)


__all__ = ["DATASETS", "list_inputs"]
