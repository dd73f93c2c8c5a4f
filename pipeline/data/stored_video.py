"""A video that is not one media file: what ``prepare`` asks of it.

Most inputs are media files that ``pipeline.data.media`` decodes (decord, PyAV). Two of the
paper's datasets store their videos otherwise: BAIR robot pushing keeps each trajectory as one
record of a TFRecord file (raw 64×64 frames and the arm's end-effector state per timestep, §4),
Cityscapes as a sequence of PNG frames with a label map for some of them (App. E). A listing hands
such a video to ``prepare`` as a :class:`StoredVideo` (``VideoSource.stored``); ``prepare`` then
takes its frames, frame rate, layouts and positions from it instead of decoding ``path``, and cuts
clips exactly as it does for a media file (same crop, same clip rule, same shards).

An implementation is a small picklable value (it travels to the decoding processes) that reads
its data only when asked, and raises :class:`pipeline.data.media.MediaError` for anything wrong
with the stored data, so that video lands in ``rejected.csv`` with the reason.
"""

from __future__ import annotations

from typing import Iterator, Protocol

import numpy as np

from pipeline.data.media import VideoInfo


class StoredVideo(Protocol):
    """Frames (+ optional layouts and positions) of one video kept as something other than a
    media file. None of the paper's frame-sequence datasets has sound: ``probe().has_audio`` is
    False and ``prepare`` treats the video as one without an audio track."""

    def probe(self) -> VideoInfo:
        """Frame count, frame rate and size, without decoding every frame when avoidable."""
        ...

    def iter_frames(self, frame_step: int, chunk_size: int) -> Iterator[np.ndarray]:
        """Frames ``0, frame_step, 2·frame_step, …`` as uint8 chunks (n ≤ chunk_size, H, W, 3)."""
        ...

    def layouts(self) -> np.ndarray | None:
        """uint8 (T, H, W) class maps for every frame (``pipeline.data.shards.NO_LAYOUT`` where a
        frame has none), or None when the video has no layout at all."""
        ...

    def positions(self) -> np.ndarray | None:
        """float32 (T, 2) pixel positions (x right, y down, pixel centres; NaN where unknown) of
        every frame, or None."""
        ...


__all__ = ["StoredVideo"]
