"""Per-video work of stage ``prepare`` (the paper's §4 data setup): decode one video at
``prepare.fps`` (``pipeline.data.frame_rate``: the source frame nearest in time to each tick,
from the packets' presentation times, so variable-rate videos too), resize and center-crop its
frames (and layouts, and annotated positions) to a square of ``resolution``, and cut it into clips
of ``clip_length`` kept frames with their audio, positions and layouts.

Frame indices after resampling: ``first_frame`` / ``frame_step`` in a clip's meta count frames
at ``prepare.fps`` (for a video already at that rate, its own frames); ``source_frames`` lists the
source frame each clip frame shows. Annotated positions (given per source frame) land on every
output frame showing that source frame. A stored video (``pipeline.data.stored_video``: BAIR's
records, Cityscapes' PNG sequences) gives its frames, layouts and positions itself, at its own
constant rate: read with its own frame step when ``prepare.fps`` falls on every n-th frame, else
picked in order.

Holds :class:`Crop` (resize-short-side-then-center-crop as one source box), the per-clip and
per-video results (:class:`Clip`, :class:`VideoResult`, and :class:`VideoSummary`, what the parent
process needs to place the clips in shards), :func:`clip_starts`, :func:`process_video` (which runs
in every decoding process) and :class:`PrepareError`. ``stages.prepare`` re-exports these names.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
from PIL import Image

from pipeline.data.frame_rate import resample_indices
from pipeline.data.media import (
    MediaError,
    VideoInfo,
    iter_frames,
    probe,
    probe_with_audio,
    read_audio,
)
from pipeline.params import PrepareParams
from pipeline.data.shard_writing import encode_sample, sample_nbytes
from pipeline.data.sources import VideoSource
from pipeline.data.stored_video import StoredVideo
from pipeline.errors import UserError

_CHUNK = 64  # frames decoded (at native size) at a time


class PrepareError(UserError, RuntimeError):
    """The stage cannot go on (bad params, nothing usable); one line."""


# --------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class Crop:
    """Resize-short-side-then-center-crop as one source box: ``box`` (x0, y0, x1, y1) in source
    pixels (edges), mapped onto ``size`` × ``size`` output pixels with scale ``scale``."""

    box: tuple[float, float, float, float]
    scale: float
    size: int

    @classmethod
    def center(cls, height: int, width: int, size: int) -> "Crop":
        short = min(height, width)
        x0, y0 = (width - short) / 2, (height - short) / 2
        return cls((x0, y0, x0 + short, y0 + short), size / short, size)

    @property
    def identity(self) -> bool:
        return self.box == (0, 0, self.size, self.size)

    def image(self, array: np.ndarray, resample: int) -> np.ndarray:
        """(H, W[, 3]) uint8 → (size, size[, 3])."""
        if self.identity:
            return array
        out = Image.fromarray(array).resize((self.size, self.size), resample, box=self.box)
        return np.asarray(out)

    def frames(self, batch: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 → (n, size, size, 3), bilinear (antialiased when shrinking)."""
        if self.identity:
            return batch
        return np.stack([self.image(f, Image.BILINEAR) for f in batch])

    def layouts(self, batch: np.ndarray) -> np.ndarray:
        """(n, H, W) uint8 class maps → (n, size, size), nearest (no new class values)."""
        if self.identity:
            return batch
        return np.stack([self.image(f, Image.NEAREST) for f in batch])

    def points(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) pixel-centre coordinates (x right, y down) → output pixel coordinates."""
        origin = np.array(self.box[:2], dtype=np.float64)
        return ((xy + 0.5 - origin) * self.scale - 0.5).astype(np.float32)


# --------------------------------------------------------------------------- one video


@dataclasses.dataclass
class Clip:
    """One clip of a video: where it starts among the kept frames, and what comes with it."""

    key: str  # <video_id>_<clip:04d>
    start: int  # index of its first frame in VideoResult.frames
    audio: np.ndarray | None  # float32 (samples,) at audio_rate, or None when audio is off
    positions: np.ndarray  # float32 (T, 2), NaN where not annotated
    meta: dict[str, Any]  # the sample's json
    row: dict[str, Any]  # its manifest row (without the shard, known once written)


@dataclasses.dataclass
class VideoResult:
    """What decoding one input gives: the processed frames (held once, not once per overlapping
    clip) and its clips; or a rejection."""

    video: VideoSource
    rejected: str | None = None
    length: int = 0  # frames the video has at prepare.fps (0: unreadable)
    frames: np.ndarray | None = None  # uint8 (N, S, S, 3), the kept frames after resize/crop
    layout: np.ndarray | None = None  # uint8 (N, S, S) when the video has layouts
    clips: list[Clip] = dataclasses.field(default_factory=list)
    clip_length: int = 0
    frames_decoded: int = 0

    def samples(self) -> list[dict[str, Any]]:
        """The encoded sample of each clip; arrays are views, serialised when written."""
        out = []
        for clip in self.clips:
            window = slice(clip.start, clip.start + self.clip_length)
            out.append(encode_sample(
                clip.key,
                self.frames[window],
                clip.meta,
                audio=clip.audio,
                positions=clip.positions,
                layout=None if self.layout is None else self.layout[window],
            ))  # fmt: skip
        return out

    def summary(self, samples: list[dict[str, Any]]) -> "VideoSummary":
        """What the parent needs to place the clips (no pixels)."""
        return VideoSummary(
            self.video, self.rejected, self.frames_decoded, [c.row for c in self.clips],
            [sample_nbytes(sample) for sample in samples], self.length,
        )  # fmt: skip


@dataclasses.dataclass
class VideoSummary:
    """A decoded video as the parent sees it: rows and byte sizes of its clips, or a rejection."""

    video: VideoSource
    rejected: str | None
    frames_decoded: int
    rows: list[dict[str, Any]]  # manifest rows, without the shard
    sizes: list[int]  # bytes each clip's sample takes in a shard
    length: int = 0  # frames the video has at prepare.fps (0: unreadable)


def clip_starts(num_kept: int, clip_length: int, clip_stride: int) -> list[int]:
    """Start indices (in kept frames) of every full clip."""
    return list(range(0, num_kept - clip_length + 1, clip_stride))


def _load_layout(path: str, num_frames: int, height: int, width: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            layout = archive["layout"]
    except (OSError, KeyError, ValueError) as err:
        raise MediaError(path, f"cannot read the layout file ({err})") from None
    _check_layout(layout, path, num_frames, height, width)
    return layout


def _check_layout(layout: np.ndarray, path: str, num_frames: int, height: int, width: int) -> None:
    if layout.ndim != 3 or layout.dtype != np.uint8:
        raise MediaError(path, f"layout must be uint8 (T, H, W), got {layout.dtype} {layout.shape}")
    if layout.shape[0] < num_frames:
        raise MediaError(path, f"layout has {layout.shape[0]} frames, the video {num_frames}")
    if layout.shape[1] * width != layout.shape[2] * height:
        raise MediaError(
            path, f"layout is {layout.shape[1]}x{layout.shape[2]}, the video {height}x{width}"
        )


def _positions(video: VideoSource, kept_source: np.ndarray, crop: Crop,
               dense: np.ndarray | None = None) -> np.ndarray:
    """(num_kept, 2) float32 positions in output pixels, NaN where not annotated: ``dense``
    (T, 2) source-pixel positions of every source frame (a stored video's), then the annotated
    ones; an annotated source frame marks every kept frame that shows it."""
    out = np.full((len(kept_source), 2), np.nan, np.float32)
    if dense is not None:
        dense = np.asarray(dense, np.float64)
        inside = kept_source < len(dense)
        out[inside] = crop.points(dense[kept_source[inside]])
    shown_at: dict[int, list[int]] = {}
    for j, source in enumerate(kept_source.tolist()):
        shown_at.setdefault(source, []).append(j)
    for frame, x, y in video.positions:
        for j in shown_at.get(frame, ()):
            out[j] = crop.points(np.array([[x, y]]))[0]
    return out


def _picked(chunks: Iterator[np.ndarray], indices: list[int], chunk_size: int
            ) -> Iterator[np.ndarray]:
    """Chunks of frames 0, 1, 2, … → chunks of the frames at ``indices`` (non-decreasing,
    repeats allowed), for sources that only read their frames in order (stored videos)."""
    out: list[np.ndarray] = []
    i, base = 0, 0
    for chunk in chunks:
        while i < len(indices) and indices[i] < base + len(chunk):
            out.append(chunk[indices[i] - base])
            i += 1
            if len(out) == chunk_size:
                yield np.stack(out)
                out = []
        base += len(chunk)
        if i == len(indices):
            break
    if out:
        yield np.stack(out)


def _stored_frames(stored: StoredVideo, kept_source: np.ndarray, chunk_size: int
                   ) -> Iterator[np.ndarray]:
    """A stored video's frames at ``kept_source``: its own frame step when the ticks fall on
    every n-th frame (the dataset's own rate), else picked from all of its frames."""
    indices = kept_source.tolist()
    step = indices[1] - indices[0] if len(indices) > 1 else 1
    if indices and indices[0] == 0 and step >= 1 and indices == list(range(0, step * len(indices), step)):
        return stored.iter_frames(step, chunk_size)
    return _picked(stored.iter_frames(1, chunk_size), indices, chunk_size)


def _timeline(info: VideoInfo) -> np.ndarray:
    """The frames' presentation times: read from the packets, else (a source that knows no
    timestamps) the container's constant rate."""
    if info.frame_times is not None:
        return info.frame_times
    return info.start_time + np.arange(info.num_frames) / info.fps


def screen_video(video: VideoSource, p: PrepareParams) -> VideoResult | None:
    """``video`` rejected with the reason it cannot give a clip, judged from its container alone
    (no frame decoded; one pass over its packets for the frame times), or None. ``prepare``
    screens the videos whose split it draws, so that only usable videos are drawn into splits."""
    try:
        info = video.stored.probe() if video.stored is not None else probe(video.path, timeline=True)
    except MediaError as err:
        return VideoResult(video, rejected=err.problem if err.path == video.path else str(err))
    length = len(resample_indices(_timeline(info), p.fps))
    need = (p.clip_length - 1) * p.frame_step + 1
    if length < need:
        return VideoResult(video, rejected=_too_short(length, need, p), length=length)
    if p.audio and not info.has_audio and p.missing_audio == "reject":
        return VideoResult(video, rejected="no audio track (prepare.missing_audio: reject)",
                           length=length)
    return None


def process_video(video: VideoSource, params: PrepareParams) -> VideoResult:
    """Decode ``video`` and cut it into clips (runs in a decoding process).

    Any problem with the input (unreadable, too short, no audio when required, a bad layout
    file) becomes ``VideoResult.rejected``, a one-line reason.
    """
    try:
        return _process(video, params)
    except MediaError as err:
        return VideoResult(video, rejected=err.problem if err.path == video.path else str(err))


def _process(video: VideoSource, p: PrepareParams) -> VideoResult:
    audio = None
    stored = video.stored  # frames kept otherwise than as a media file (no audio track)
    if stored is not None:
        info = stored.probe()
    elif p.audio and p.decoder != "decord":  # probe and audio in one opening of the file (PyAV)
        info, audio = probe_with_audio(video.path, audio_rate=p.audio_rate, timeline=True)
    else:
        info = probe(video.path, timeline=True)
    shown = resample_indices(_timeline(info), p.fps)  # source frame at each tick of p.fps
    need = (p.clip_length - 1) * p.frame_step + 1
    if len(shown) < need:
        return VideoResult(video, rejected=_too_short(len(shown), need, p), length=len(shown))

    crop = Crop.center(info.height, info.width, p.resolution)
    kept_source = shown[:: p.frame_step]
    batch = _batch_frames(len(kept_source), crop)
    if stored is not None:
        chunks = _stored_frames(stored, kept_source, batch)
    else:
        chunks = iter_frames(
            video.path, indices=kept_source.tolist(), chunk_size=batch, backend=p.decoder,
            threads=1, info=info,
        )  # fmt: skip
    frames = _gather((crop.frames(chunk) for chunk in chunks), len(kept_source))
    num_kept = len(frames)
    kept_source = kept_source[:num_kept]
    starts = clip_starts(num_kept, p.clip_length, p.clip_stride)
    if not starts:  # the container over-counted its frames
        length = (num_kept - 1) * p.frame_step + 1
        return VideoResult(video, rejected=_too_short(length, need, p), length=length)

    per_clip = 0
    if p.audio:
        if p.decoder == "decord" and stored is None:
            audio = read_audio(video.path, audio_rate=p.audio_rate, backend=p.decoder, info=info)
        if audio is None and p.missing_audio == "reject":
            return VideoResult(video, rejected="no audio track (prepare.missing_audio: reject)",
                               length=len(shown))
        per_clip = int(round(p.clip_length * p.frame_step * p.audio_rate / p.fps))

    layout = None
    raw = stored.layouts() if stored is not None else None
    if raw is not None:
        _check_layout(raw, video.path, info.num_frames, info.height, info.width)
    elif video.layout_path:
        raw = _load_layout(video.layout_path, info.num_frames, info.height, info.width)
    if raw is not None:
        layout = Crop.center(raw.shape[1], raw.shape[2], p.resolution).layouts(raw[kept_source])
    dense = stored.positions() if stored is not None else None
    positions = _positions(video, kept_source, crop, dense)

    result = VideoResult(
        video, length=len(shown), frames=frames, layout=layout, clip_length=p.clip_length,
        frames_decoded=num_kept,
    )  # fmt: skip
    t0 = float(_timeline(info)[0])
    for index, start in enumerate(starts):
        first = start * p.frame_step  # in frames at p.fps
        key = f"{video.video_id}_{index:04d}"
        clip_audio = None
        if p.audio:
            clip_audio = np.zeros(per_clip, np.float32)
            if audio is not None:
                begin = max(int(round((t0 + first / p.fps) * p.audio_rate)), 0)
                piece = audio[begin : begin + per_clip]
                clip_audio[: len(piece)] = piece
        clip_pos = positions[start : start + p.clip_length]
        meta = {
            "video_id": video.video_id,
            "source": video.source,
            "split": video.split,
            "label": video.label,
            "label_id": video.label_id,
            "fps": p.fps / p.frame_step,
            "first_frame": first,
            "frame_step": p.frame_step,
            "source_fps": info.fps,
            "source_frames": kept_source[start : start + p.clip_length].tolist(),
            "audio_rate": p.audio_rate if p.audio else 0,
            "audio_silent": bool(p.audio and audio is None),
            "resolution": p.resolution,
        }
        row = {
            "key": key,
            "video_id": video.video_id,
            "split": video.split,
            "label": video.label,
            "label_id": video.label_id,
            "first_frame": first,
            "num_frames": p.clip_length,
            "frame_step": p.frame_step,
            "fps": p.fps / p.frame_step,
            "has_audio": bool(p.audio and audio is not None),
            "has_positions": bool(np.isfinite(clip_pos).any()),
            "has_layout": layout is not None,
            "source": video.source,
        }
        result.clips.append(Clip(key, start, clip_audio, clip_pos, meta, row))
    return result


def _batch_frames(expected: int, crop: Crop) -> int:
    """Frames decoded at a time: all of them when they are already at the output size (the decoded
    batch is then the video's frames, with no copy into a gathered array: ~5 % of the stage's
    CPU in ``bench/prepare.py``), else ``_CHUNK`` (native-size frames held only a chunk at a time)."""
    return max(expected, _CHUNK) if crop.identity else _CHUNK


def _gather(chunks: Iterator[np.ndarray], expected: int) -> np.ndarray:
    """Chunks of frames → one array: the chunk itself when it holds the whole video, else the
    chunks copied once into an array sized from the container's count (grown if it under-counted)."""
    frames, count = None, 0
    for chunk in chunks:
        if frames is None and len(chunk) >= expected:
            frames, count = chunk, len(chunk)
            continue
        if frames is None or count + len(chunk) > len(frames):
            grown = np.empty((max(expected, 2 * count, count + len(chunk)), *chunk.shape[1:]), chunk.dtype)
            if count:
                grown[:count] = frames[:count]
            frames = grown
        frames[count : count + len(chunk)] = chunk
        count += len(chunk)
    if frames is None:  # pragma: no cover - iter_frames raises MediaError first
        raise RuntimeError("no frames to gather")
    return frames[:count]


def _too_short(frames: int, need: int, p: PrepareParams) -> str:
    noun = "frame" if frames == 1 else "frames"
    return (
        f"too short: {frames} {noun} at {p.fps:g} fps, a clip needs {need} "
        f"(clip_length {p.clip_length} × frame_step {p.frame_step})"
    )
