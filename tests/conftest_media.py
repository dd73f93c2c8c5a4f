"""Fixture helpers for the media / prepare / shard tests: small videos, good and bad.

Good videos go through ``pipeline.data.media_write.write_mp4`` (the writer the demo world uses).
The odd ones the writer refuses on purpose (grayscale pixel format, 6-channel audio, 44.1 kHz,
one frame, no audio) are written here directly with PyAV, keeping each fixture a few frames.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipeline.data.media_write import write_mp4


def moving_square(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth gradient background with a bright square moving right.

    Smooth content compresses well, so decoded pixels stay close to these (crf 15).
    The square's top-left corner is at x = 2 * t, y = height // 4 (see ``square_centre``).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [xx * 200 // max(width - 1, 1), yy * 200 // max(height - 1, 1), np.full_like(xx, 60)], -1
    ).astype(np.uint8)
    frames = np.repeat(base[None], num_frames, axis=0)
    side = max(4, min(height, width) // 4)
    colour = rng.integers(180, 256, size=3, dtype=np.uint8)
    for t in range(num_frames):
        x0, y0 = (2 * t) % max(width - side, 1), height // 4
        frames[t, y0 : y0 + side, x0 : x0 + side] = colour
    return frames


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """float32 sine, (samples,) for one channel or (channels, samples); channel c at freq*(c+1)."""
    t = np.arange(int(round(seconds * rate))) / rate
    waves = np.stack([0.3 * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)])
    waves = waves.astype(np.float32)
    return waves[0] if channels == 1 else waves


def good_video(
    path: Path,
    num_frames: int = 24,
    size: tuple[int, int] = (48, 64),
    fps: int = 10,
    audio: bool = True,
    audio_rate: int = 16000,
    seed: int = 0,
) -> Path:
    """An H.264 + AAC mono mp4 (via write_mp4) of a moving square; size is (H, W)."""
    frames = moving_square(num_frames, *size, seed=seed)
    sound = tone(num_frames / fps, audio_rate) if audio else None
    return write_mp4(path, frames, fps, audio=sound, audio_rate=audio_rate)


def pyav_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 10,
    pix_fmt: str = "yuv420p",
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    audio_layout: str = "mono",
) -> Path:
    """Write frames ((T,H,W) gray or (T,H,W,3) RGB uint8) with any pixel format / audio layout.

    ``audio``: (channels, samples) float32 for ``audio_layout`` (e.g. "5.1" → 6 channels).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        stream.codec_context.time_base = Fraction(1, fps)
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=audio_rate, layout=audio_layout)
        for index, image in enumerate(frames):
            fmt = "gray" if image.ndim == 2 else "rgb24"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            planar = np.ascontiguousarray(np.atleast_2d(audio).astype(np.float32))
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=audio_layout)
            frame.sample_rate, frame.pts = audio_rate, 0
            frame.time_base = Fraction(1, audio_rate)
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def grayscale_video(path: Path, num_frames: int = 20, size=(48, 48)) -> Path:
    """A video whose pixel format is gray (no chroma at all), with mono audio."""
    frames = moving_square(num_frames, *size)[..., 1]
    return pyav_video(path, frames, pix_fmt="gray", audio=tone(num_frames / 10, 16000)[None])


def six_channel_video(path: Path, num_frames: int = 20, size=(48, 48), rate=44100) -> Path:
    """A video with a 5.1 (6-channel) AAC track at 44.1 kHz."""
    frames = moving_square(num_frames, *size)
    sound = tone(num_frames / 10, rate, channels=6)
    return pyav_video(path, frames, audio=sound, audio_rate=rate, audio_layout="5.1")


def hd_video(path: Path, num_frames: int = 4) -> Path:
    """A 1280×720 (non-square, 16:9) video, a few frames, with audio."""
    frames = moving_square(num_frames, 720, 1280)
    return pyav_video(path, frames, audio=tone(num_frames / 10, 16000)[None])


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    """The first ``keep`` share of ``src``'s bytes (an interrupted download)."""
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep)])
    return Path(dst)
