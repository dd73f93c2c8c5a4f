"""Writing videos (H.264 + AAC mp4), sample GIFs and PNG sheets.

The demo world (``stages/demo_data.py``) and test fixtures write their videos here; the
``prepare`` stage reads them back with decord. Every writer is atomic: it writes to a hidden
temporary name in the target folder and renames it with ``os.replace``, so a killed run never
leaves a half-written file behind (DESIGN.md, "Contracts between stages").
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image


def _as_rgb_frames(frames: np.ndarray, what: str) -> np.ndarray:
    """(T, H, W) grayscale or (T, H, W, 3) RGB uint8 → (T, H, W, 3) uint8, contiguous."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{what}: frames must be uint8, got {frames.dtype}")
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what}: frames must be (T, H, W) or (T, H, W, 3), got {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError(f"{what}: no frames to write")
    return np.ascontiguousarray(frames)


def _as_planar_audio(audio: np.ndarray, what: str) -> np.ndarray:
    """(samples,) or (channels, samples) float → (channels, samples) float32 clipped to [-1, 1]."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        raise ValueError(
            f"{what}: audio must be (samples,) or (channels<=2, samples), got {audio.shape}"
        )
    if not np.all(np.isfinite(audio)):
        raise ValueError(f"{what}: audio holds NaN or inf values")
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0))


def _x264_options(crf: int) -> dict[str, str]:
    """x264 settings that make the output a pure function of the input frames.

    One thread (frame threads split work nondeterministically) and no macroblock-tree rate
    control: on small frames (64 × 64) mbtree let the bytes vary between runs in one process
    (it reads lookahead memory that depends on earlier allocations), found by repeated encodes.
    """
    return {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB → (H * 3 / 2, W) uint8 planar Y, U, V (BT.601, limited range).

    Converting here (not in swscale) keeps the encoder's input exactly defined and owned by us.
    """
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16 + 0.256788 * r + 0.504129 * g + 0.097906 * b
    u = 128 - 0.148223 * r - 0.290993 * g + 0.439216 * b
    v = 128 + 0.439216 * r - 0.367788 * g - 0.071427 * b
    h, w = y.shape

    def down(c: np.ndarray) -> np.ndarray:  # 2 × 2 box average (chroma at quarter resolution)
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y.ravel(), down(u).ravel(), down(v).ravel()]
    out = np.concatenate(planes).reshape(h * 3 // 2, w)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@contextmanager
def _atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    fps: int,
    audio: np.ndarray | None = None,
    audio_rate: int = 16000,
    crf: int = 15,
) -> Path:
    """Write ``frames`` (and ``audio``) as an mp4: H.264 yuv420p video, AAC audio.

    frames: uint8 (T, H, W, 3) RGB or (T, H, W) grayscale; H and W must be even (yuv420p).
    audio: float32 (samples,) mono or (channels, samples), values in [-1, 1] (clipped);
        ``None`` writes a video-only file.
    crf: x264 constant rate factor (lower = closer to the input; 15 keeps small frames crisp).
    One input always gives the same bytes (see ``_x264_options``), so DVC sees an unchanged
    output when a stage reruns with unchanged params.
    """
    path = Path(path)
    frames = _as_rgb_frames(frames, str(path))
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"{path}: H.264 yuv420p needs an even frame size, got {height}x{width}")
    if fps <= 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    planar = None if audio is None else _as_planar_audio(audio, str(path))

    with _atomic_target(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            video = container.add_stream("libx264", rate=int(fps), options=_x264_options(crf))
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.codec_context.time_base = Fraction(1, int(fps))
            video.thread_count = 1
            sound = None
            if planar is not None:
                layout = "mono" if planar.shape[0] == 1 else "stereo"
                sound = container.add_stream("aac", rate=int(audio_rate), layout=layout)
                sound.thread_count = 1

            for index, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(rgb), format="yuv420p")
                frame.pts, frame.time_base = index, Fraction(1, int(fps))
                container.mux(video.encode(frame))
            container.mux(video.encode(None))

            if sound is not None:
                frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
                frame.sample_rate = int(audio_rate)
                frame.pts = 0
                frame.time_base = Fraction(1, int(audio_rate))
                container.mux(sound.encode(frame))
                container.mux(sound.encode(None))
    return path


def write_gif(path: str | Path, frames: np.ndarray, fps: float, scale: int = 1) -> Path:
    """Write ``frames`` (uint8 (T, H, W[, 3])) as a looping GIF, each pixel ``scale``× enlarged."""
    path = Path(path)
    frames = _as_rgb_frames(frames, str(path))
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    images = [Image.fromarray(f) for f in frames]
    with _atomic_target(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=max(1, round(1000 / fps)),
            loop=0,
        )
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (uint8 (H, W[, 3])) as a PNG (temp name, then renamed)."""
    path = Path(path)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"{path}: a PNG needs uint8 (H, W[, 3]), got {image.dtype} {image.shape}")
    with _atomic_target(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path
