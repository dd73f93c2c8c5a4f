"""A video stored as one image file per frame (PNG, JPEG…), with an optional label map per frame:
a :class:`pipeline.data.stored_video.StoredVideo` (Cityscapes' ``leftImg8bit_sequence``, and any
dataset kept as frame folders)."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.data.media import MediaError, VideoInfo
from pipeline.data.shards import NO_LAYOUT


def _read(path: str, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if mode == "RGB":
                return np.asarray(image.convert("RGB"))
            if image.mode not in ("L", "P", "I", "I;16"):
                raise MediaError(path, f"a label map must be single-channel, got mode {image.mode}")
            array = np.asarray(image)
    except FileNotFoundError:
        raise MediaError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL: truncated / not an image
        raise MediaError(path, f"not a readable image ({err})") from None
    if array.max(initial=0) > 255 or array.min(initial=0) < 0:
        raise MediaError(path, f"label ids must be in 0..255, got {array.min()}..{array.max()}")
    return array.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class ImageSequence:
    """Frames ``frames`` (paths, in order) shown at ``fps``; ``label_maps[i]`` the label map of
    frame i or None (empty: no label maps)."""

    frames: tuple[str, ...]
    fps: float
    label_maps: tuple[str | None, ...] = ()

    def probe(self) -> VideoInfo:
        try:
            with Image.open(self.frames[0]) as first:
                width, height = first.size
        except (OSError, SyntaxError, ValueError) as err:
            raise MediaError(self.frames[0], f"not a readable image ({err})") from None
        return VideoInfo(path=self.frames[0], num_frames=len(self.frames), fps=self.fps,
                         height=height, width=width, has_audio=False, start_time=0.0)

    def iter_frames(self, frame_step: int, chunk_size: int) -> Iterator[np.ndarray]:
        wanted = self.frames[::frame_step]
        size = None
        for begin in range(0, len(wanted), chunk_size):
            chunk = []
            for path in wanted[begin : begin + chunk_size]:
                frame = _read(path, "RGB")
                if size is None:
                    size = frame.shape
                elif frame.shape != size:
                    raise MediaError(path, f"frame is {frame.shape[1]}x{frame.shape[0]}, the "
                                           f"sequence's first {size[1]}x{size[0]}")
                chunk.append(frame)
            yield np.stack(chunk)

    def layouts(self) -> np.ndarray | None:
        """(T, H, W) uint8 with :data:`NO_LAYOUT` on frames without a label map; None if none has."""
        if not any(self.label_maps):
            return None
        maps = {i: _read(p, "L") for i, p in enumerate(self.label_maps) if p}
        shape = next(iter(maps.values())).shape
        for i, array in maps.items():
            if array.shape != shape:
                raise MediaError(self.label_maps[i], f"label map is {array.shape}, another {shape}")
        out = np.full((len(self.frames), *shape), NO_LAYOUT, np.uint8)
        for i, array in maps.items():
            out[i] = array
        return out

    def positions(self) -> None:
        return None


__all__ = ["ImageSequence"]
