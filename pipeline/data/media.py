"""Reading videos: RGB frames and a mono audio track at a chosen sample rate.

The ``prepare`` stage decodes every dataset of the paper (§4 "Datasets", App. E) through this
module: frames with decord's ``VideoReader``, audio with decord's ``AudioReader`` (down-mixed to mono
at the native rate, then resampled with soxr), and PyAV where decord is not installed (Linux aarch64) or fails on
a particular file (decord 0.6 mis-sizes some frame widths, e.g. 48 px). Both backends give the
same frames up to decoder rounding (``tests/test_media.py`` checks it). :func:`probe_with_audio`
reads the audio with PyAV while probing (one opening of the file; what ``prepare`` uses).

Every problem with an input is a :class:`MediaError` whose message is one line naming the file
and what is wrong with it (empty file, not a video, truncated, no video stream, no audio...),
never a traceback from inside a decoder.

Conventions: frames are uint8 ``(T, H, W, 3)`` RGB (grayscale is expanded to 3 channels);
audio is float32 ``(samples,)`` mono at ``audio_rate``, sample 0 at time 0 of the file, so the
audio of frame ``i`` starts at sample ``round((start_time + i / fps) * audio_rate)`` for a
constant frame rate, at ``round(frame_times[i] * audio_rate)`` in general.
Frames can be read in chunks (:func:`iter_frames`) so a long video never sits in memory at its
native resolution, and picked by index (``indices``: any non-decreasing list, repeats allowed),
which is how ``prepare`` resamples a video to another frame rate.

Timeline: ``probe(path, timeline=True)`` also reads every video packet's presentation time
(``VideoInfo.frame_times``, seconds, ascending; packets only, no frame decoded), so a
variable-frame-rate file is resampled by when its frames are shown, not by their count.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

try:  # decord publishes wheels for x86-64 Linux / Windows (eva-decord on macOS arm64) only.
    import decord as _decord
except ImportError:  # pragma: no cover - depends on the platform
    _decord = None

import av
import soxr
from pipeline.errors import UserError

Backend = Literal["auto", "decord", "av"]
_MP4_MAGIC = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


class MediaError(UserError):
    """An input that cannot be decoded; ``str(err)`` is one line: ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the library said
        super().__init__(f"{self.path}: {self.problem}")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a file holds, from its container (no frame decoded)."""

    path: str
    num_frames: int  # frames in the video stream (container count, or counted by decoding)
    fps: float  # average frame rate
    height: int
    width: int
    has_audio: bool
    start_time: float  # seconds; time of the first frame on the file's clock
    audio_rate: int = 0  # native sample rate of the first audio stream (0 = no audio)
    audio_start_time: float = 0.0  # seconds; time of the first audio sample
    # presentation time (s) of every frame, ascending (probe(..., timeline=True) only)
    frame_times: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass
class VideoData:
    """A decoded video: frames (T, H, W, 3) uint8, fps, audio (samples,) float32 mono or None."""

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None
    audio_rate: int
    start_time: float = 0.0  # seconds; the time of frames[0] (audio sample 0 is at time 0)


def available_backends() -> list[str]:
    """Backends usable here, in the order ``backend="auto"`` tries them."""
    return (["decord"] if _decord is not None else []) + ["av"]


# --------------------------------------------------------------------------- probing (PyAV)


def _short(err: BaseException) -> str:
    """The library's message in one short line, without the path it repeats."""
    if isinstance(err, av.FFmpegError) and err.strerror:
        return str(err.strerror)
    text = str(err).strip().splitlines()
    text = text[-1] if text else type(err).__name__
    return text[:200]


def _looks_like_mp4(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(12)
    return len(head) >= 8 and head[4:8] in _MP4_MAGIC


def probe(path: str | os.PathLike, *, timeline: bool = False) -> VideoInfo:
    """Open ``path`` with PyAV and check it is a decodable video; raise :class:`MediaError`.

    This runs before decord sees a file, so a broken input gets a precise reason (and decord is
    never handed something that may crash it). ``timeline``: also read the frames' presentation
    times (``VideoInfo.frame_times``) from the video packets (one pass over the container,
    nothing decoded).
    """
    return _probe(path, None, timeline)[0]


def probe_with_audio(
    path: str | os.PathLike, *, audio_rate: int, timeline: bool = False
) -> tuple[VideoInfo, np.ndarray | None]:
    """:func:`probe`, and in the same pass over the container the audio track as
    :func:`read_audio` gives it (PyAV; ``None`` without an audio stream).

    One opening of the file instead of two (the probe's and decord's ``AudioReader``): opening
    and probing a short mp4 costs as much as decoding its audio (``bench/prepare.py``). With
    ``timeline`` the video packets' times are read in the same pass.
    """
    if audio_rate <= 0:
        raise ValueError(f"audio_rate must be positive, got {audio_rate}")
    return _probe(path, audio_rate, timeline)


def _probe(
    path: str | os.PathLike, audio_rate: int | None, timeline: bool = False
) -> tuple[VideoInfo, np.ndarray | None]:
    path = Path(path)
    if not path.exists():
        raise MediaError(path, "file not found")
    if not path.is_file():
        raise MediaError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")
    try:
        container = av.open(str(path))
    except Exception as err:  # PyAV raises many kinds (InvalidDataError, OSError, ...)
        if _looks_like_mp4(path):
            raise MediaError(path, f"truncated or corrupt mp4 ({_short(err)})") from None
        raise MediaError(path, f"not a video file ({_short(err)})") from None
    with container:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if not fps or not math.isfinite(fps):
            raise MediaError(path, "unknown frame rate")
        num_frames = int(stream.frames or 0)
        counted = num_frames <= 0
        if counted:  # some containers do not count frames: decode to count them
            try:
                num_frames = sum(1 for _ in container.decode(stream))
            except av.FFmpegError as err:
                raise MediaError(path, f"corrupt video stream ({_short(err)})") from None
        if num_frames <= 0:
            raise MediaError(path, "no frames in the video stream")
        start = stream.start_time
        start_time = float(start * stream.time_base) if start is not None else 0.0
        height, width = stream.codec_context.height, stream.codec_context.width
        if not height or not width:
            raise MediaError(path, "video stream has no frame size")
        native_rate, audio_start = 0, 0.0
        if container.streams.audio:
            sound = container.streams.audio[0]
            native_rate = int(sound.rate or sound.codec_context.sample_rate or 0)
            if sound.start_time is not None:
                audio_start = float(sound.start_time * sound.time_base)
            if native_rate <= 0:
                raise MediaError(path, "audio stream has no sample rate")
        info = VideoInfo(
            path=str(path),
            num_frames=num_frames,
            fps=fps,
            height=height,
            width=width,
            has_audio=bool(container.streams.audio),
            start_time=start_time,
            audio_rate=native_rate,
            audio_start_time=audio_start,
        )
        want_audio = audio_rate is not None and info.has_audio
        if not want_audio and not timeline:
            return info, None
        if counted:  # counting the frames read the whole file
            container.seek(0)
        samples, stamps = _demux(path, container, native_rate if want_audio else None, timeline)
        if timeline:
            info = dataclasses.replace(info, frame_times=_timeline(stamps, stream, info))
        if not want_audio:
            return info, None
        return info, _audio_out(path, samples, info, audio_rate)


def _timeline(stamps: list[int | None], stream, info: VideoInfo) -> np.ndarray:
    """Packet presentation stamps → ascending frame times in seconds. Without stamps (some raw
    or AVI streams), the container's constant rate: ``start_time + i / fps``."""
    if stamps and all(s is not None for s in stamps):
        return np.unique(np.asarray(stamps, dtype=np.int64)) * float(stream.time_base)
    return info.start_time + np.arange(info.num_frames) / info.fps


# --------------------------------------------------------------------------- frames


def _as_rgb(batch: np.ndarray) -> np.ndarray:
    """(n, H, W), (n, H, W, 1) or (n, H, W, 3) uint8 → (n, H, W, 3)."""
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    return batch


class _DLPack:
    """Hands a decord NDArray to ``numpy.from_dlpack`` (decord 0.6 has ``to_dlpack`` but not the
    ``__dlpack__`` protocol numpy asks for)."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, *args, **kwargs):
        return self.array.to_dlpack()

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU


def _to_numpy(array) -> np.ndarray:
    """A decord CPU NDArray as a (read-only) numpy array sharing its memory: ``asnumpy()`` would
    copy every decoded pixel once more (~5 ms per 64 frames of 256×256)."""
    try:
        return np.from_dlpack(_DLPack(array))
    except (AttributeError, TypeError, RuntimeError, BufferError):  # pragma: no cover - other versions
        return array.asnumpy()


def _decord_frames(
    path: Path, info: VideoInfo, indices: list[int] | None, step: int, chunk: int, threads: int
) -> Iterator[np.ndarray]:
    """Chunks from decord. A failure on the first chunk of a file PyAV could open (``probe``) is
    decord's problem, not the file's: it raises :class:`_DecordUnfit` so ``auto`` uses PyAV.
    (decord 0.6 mis-sizes some frame widths: 48 px gives (H, W, 4) frames or a size error.)"""
    try:
        reader = _decord.VideoReader(str(path), num_threads=threads)
        count = len(reader)
    except Exception as err:  # decord raises DECORDError / RuntimeError / AssertionError
        raise _DecordUnfit(f"decord cannot open the video ({_short(err)})") from None
    if indices is None:
        indices = list(range(0, count, step))
    else:  # frames past the decoder's count do not exist (the container over-counted)
        indices = [i for i in indices if i < count]
    for begin in range(0, len(indices), chunk):
        wanted = indices[begin : begin + chunk]
        try:
            batch = _to_numpy(reader.get_batch(wanted))
        except Exception as err:
            if begin == 0:
                raise _DecordUnfit(f"decord cannot decode the video ({_short(err)})") from None
            raise MediaError(
                path, f"truncated or corrupt video: frames {wanted[0]}..{wanted[-1]} ({_short(err)})"
            ) from None
        if batch.shape[1:3] != (info.height, info.width) or batch.shape[-1] not in (1, 3):
            raise _DecordUnfit(f"decord returned frames of shape {batch.shape[1:]}")
        yield _as_rgb(batch)


def _av_frames(
    path: Path, info: VideoInfo, indices: list[int] | None, step: int, chunk: int, threads: int
) -> Iterator[np.ndarray]:
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise MediaError(path, f"cannot open the video ({_short(err)})") from None
    repeats: dict[int, int] = {}
    for i in indices or ():
        repeats[i] = repeats.get(i, 0) + 1
    last = max(repeats, default=-1)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = threads
        pending: list[np.ndarray] = []
        index = 0
        try:
            for frame in container.decode(stream):
                times = (index % step == 0) if indices is None else repeats.get(index, 0)
                if times:
                    image = frame.to_ndarray(format="rgb24")
                    for _ in range(int(times)):
                        pending.append(image)
                        if len(pending) == chunk:
                            yield _as_rgb(np.stack(pending))
                            pending = []
                index += 1
                if indices is not None and index > last:
                    break
        except av.FFmpegError as err:
            raise MediaError(
                path, f"truncated or corrupt video after {index} frames ({_short(err)})"
            ) from None
        if pending:
            yield _as_rgb(np.stack(pending))
        if index == 0:
            raise MediaError(path, "no frame could be decoded")


class _DecordUnfit(Exception):
    """decord cannot handle this (valid) file; ``auto`` falls back to PyAV."""


def _resolve(backend: Backend) -> str:
    if backend not in ("auto", "decord", "av"):
        raise ValueError(f"unknown video backend {backend!r} (auto, decord or av)")
    if backend == "decord" and _decord is None:
        raise MediaError("decord", "backend 'decord' requested but decord is not installed")
    if backend == "auto":
        return "decord" if _decord is not None else "av"
    return backend


def iter_frames(
    path: str | os.PathLike,
    *,
    frame_step: int = 1,
    indices: list[int] | None = None,
    chunk_size: int = 64,
    backend: Backend = "auto",
    threads: int = 0,
    info: VideoInfo | None = None,
) -> Iterator[np.ndarray]:
    """Yield the frames ``0, frame_step, 2*frame_step, ...`` as uint8 chunks (n<=chunk_size, H, W, 3).

    ``indices``: the frames to yield instead, in this order (non-decreasing, repeats allowed: a
    frame shown twice at the output rate is yielded twice); indices past the last decodable
    frame are dropped, so fewer frames may come back. The chunks may be read-only (decord's
    buffer, not copied): copy one before writing into it.

    threads: decoder threads (0 = the library's choice; 1 when files are decoded in parallel).
    ``backend="auto"`` uses decord and falls back to PyAV for a file decord cannot handle.
    """
    path = Path(path)
    if frame_step < 1 or chunk_size < 1:
        raise ValueError(f"frame_step and chunk_size must be >= 1, got {frame_step}, {chunk_size}")
    if indices is not None:
        indices = [int(i) for i in indices]
        if any(b < a for a, b in zip(indices, indices[1:])) or (indices and indices[0] < 0):
            raise ValueError("indices must be non-negative and non-decreasing")
        if not indices:
            return
    info = info or probe(path)
    chosen = _resolve(backend)
    if chosen == "decord":
        frames = _decord_frames(path, info, indices, frame_step, chunk_size, threads)
        try:
            first = next(frames)
        except StopIteration:
            raise MediaError(path, "no frame could be decoded") from None
        except _DecordUnfit as err:
            if backend == "decord":
                raise MediaError(path, str(err)) from None
        else:
            yield first
            try:
                yield from frames
            except _DecordUnfit as err:  # a later chunk changed shape: not worth a retry
                raise MediaError(path, str(err)) from None
            return
    yield from _av_frames(path, info, indices, frame_step, chunk_size, threads)


# --------------------------------------------------------------------------- audio


def _decord_audio(path: Path) -> np.ndarray:
    try:
        reader = _decord.AudioReader(str(path), sample_rate=-1, mono=True)  # native rate
        # the decoded track is held as ``_array`` (channels, samples); ``reader[:]`` would copy it
        # through an index list, which costs more than decoding it
        samples = getattr(reader, "_array", None)
        if not isinstance(samples, np.ndarray):
            samples = reader[:].asnumpy()
    except Exception as err:
        raise MediaError(path, f"cannot decode the audio track ({_short(err)})") from None
    return samples.reshape(-1)


def _av_audio(path: Path, native_rate: int) -> np.ndarray:
    try:
        container = av.open(str(path))
    except av.FFmpegError as err:
        raise MediaError(path, f"cannot decode the audio track ({_short(err)})") from None
    with container:
        return _decode_audio(path, container, native_rate)


def _decode_audio(path: Path, container, native_rate: int) -> np.ndarray:
    """The first audio stream of an open container, down-mixed to mono float32 at its rate."""
    return _demux(path, container, native_rate, False)[0]


def _demux(
    path: Path, container, native_rate: int | None, times: bool
) -> tuple[np.ndarray | None, list[int | None]]:
    """One pass over the packets of an open container: the first audio stream down-mixed to mono
    float32 at its rate (``native_rate``; None = no audio wanted) and, with ``times``, the
    presentation stamps (pts, else dts; in the stream's time base) of the first video stream's
    packets (one per frame; nothing decoded)."""
    chunks: list[np.ndarray] = []
    stamps: list[int | None] = []
    streams = ([container.streams.video[0]] if times else []) + (
        [container.streams.audio[0]] if native_rate is not None else [])
    mono = av.AudioResampler(format="fltp", layout="mono", rate=native_rate) if native_rate else None
    try:
        for packet in container.demux(*streams):
            if packet.stream.type == "video":
                if packet.size:
                    stamps.append(packet.pts if packet.pts is not None else packet.dts)
                continue
            for frame in packet.decode():
                for out in mono.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        if mono is not None:
            for out in mono.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except av.FFmpegError as err:
        what = "audio track" if native_rate is not None else "video packets"
        raise MediaError(path, f"cannot decode the {what} ({_short(err)})") from None
    if native_rate is None:
        return None, stamps
    return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), stamps


def read_audio(
    path: str | os.PathLike,
    *,
    audio_rate: int,
    backend: Backend = "auto",
    info: VideoInfo | None = None,
) -> np.ndarray | None:
    """The audio track as float32 (samples,) mono at ``audio_rate`` (any layout and rate in);
    ``None`` when the file has no audio stream. Sample 0 is at time 0 of the file."""
    path = Path(path)
    if audio_rate <= 0:
        raise ValueError(f"audio_rate must be positive, got {audio_rate}")
    info = info or probe(path)
    if not info.has_audio:
        return None
    native = info.audio_rate
    samples = None
    if _resolve(backend) == "decord":
        try:
            samples = _decord_audio(path)
        except MediaError:
            if backend == "decord":
                raise
    if samples is None:
        samples = _av_audio(path, native)  # raises its own MediaError if it fails too
    return _audio_out(path, samples, info, audio_rate)


def _audio_out(path: Path, samples: np.ndarray, info: VideoInfo, audio_rate: int) -> np.ndarray:
    """Native-rate mono samples → checked, resampled to ``audio_rate``, sample 0 at time 0."""
    native = info.audio_rate
    if samples.size == 0:
        raise MediaError(path, "audio track holds no samples")
    if not np.all(np.isfinite(samples)):
        raise MediaError(path, "audio track decodes to NaN or inf values")
    # Resample here rather than in the decoder: decord's own resampler delays the track by
    # ~1 ms and differs from PyAV's; soxr on the native-rate signal is identical for both.
    samples = np.asarray(samples, dtype=np.float32)
    if native != audio_rate:
        samples = soxr.resample(samples, native, audio_rate)
    pad = int(round(max(info.audio_start_time, 0.0) * audio_rate))  # sample 0 = time 0
    if pad:
        samples = np.concatenate([np.zeros(pad, np.float32), samples])
    return np.ascontiguousarray(samples, dtype=np.float32)


# --------------------------------------------------------------------------- both


def read_video(
    path: str | os.PathLike,
    *,
    audio: bool,
    audio_rate: int = 16000,
    backend: Backend = "auto",
    frame_step: int = 1,
    threads: int = 0,
) -> VideoData:
    """Decode a whole video (frames, and the audio track when ``audio``) into memory.

    Fine for one video at a time; for long videos use :func:`iter_frames` (frames may be a
    read-only view of decord's buffer: copy before writing into them). ``audio`` is
    ``None`` in the result when the file has no audio track (the caller decides whether that
    is an error). Raises :class:`MediaError` naming the file for any bad input.
    """
    info = probe(path)
    chunks = list(iter_frames(path, frame_step=frame_step, backend=backend, threads=threads, info=info))
    frames = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    sound = read_audio(path, audio_rate=audio_rate, backend=backend, info=info) if audio else None
    return VideoData(
        frames=frames,
        fps=info.fps / frame_step,
        audio=sound,
        audio_rate=audio_rate,
        start_time=info.start_time,
    )
