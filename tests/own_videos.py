"""A folder of "ordinary" videos, as a user's phone and the web give them, written with PyAV.

No video can be downloaded here, so the end-to-end test of a folder source (and anyone trying
the README's "Your own videos" by hand) makes them: H.264 (+ AAC) at 25, 29.97 and 30 fps and a
variable frame rate, landscape, portrait and odd sizes, grayscale, mono / 5.1 / no audio, names
with spaces and non-ASCII letters, in class folders and at the top — plus a truncated file, a
too-short clip and a text file, which ``prepare`` must reject or ignore, naming the reason.

    python tests/own_videos.py /tmp/my_videos --seconds 4     # then point data.path at it

Every video shows a few bright shapes moving over a gradient (something T can learn to continue)
and its audio (when it has some) is a tone whose loudness follows the motion.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def scene(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a gradient with 2 shapes moving on smooth paths (seeded)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    hue = rng.uniform(0, 1, 3)
    base = np.stack([40 + 120 * (xx / width) * hue[0], 40 + 120 * (yy / height) * hue[1],
                     np.full_like(xx, 60 + 80 * hue[2])], -1)
    frames = np.repeat(base[None], num_frames, axis=0)
    side = max(4, min(height, width) // 5)
    t = np.linspace(0, 1, num_frames)
    for k in range(2):
        colour = rng.integers(170, 256, size=3)
        phase, speed = rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 3.0)
        cx = (0.5 + 0.35 * np.sin(phase + speed * np.pi * t + k)) * (width - side)
        cy = (0.5 + 0.35 * np.cos(phase + 0.7 * speed * np.pi * t)) * (height - side)
        for i in range(num_frames):
            x0, y0 = int(cx[i]), int(cy[i])
            frames[i, y0:y0 + side, x0:x0 + side] = colour
    return frames.clip(0, 255).astype(np.uint8)


def motion_tone(frames: np.ndarray, fps: float, rate: int, channels: int) -> np.ndarray:
    """(channels, samples) float32: a 330 Hz tone (channel c at (c+1)·330 Hz) whose loudness
    follows the frames' motion."""
    n = len(frames)
    motion = np.r_[0.0, np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))]
    loud = 0.05 + 0.4 * motion / max(float(motion.max()), 1e-6)
    samples = int(round(n / fps * rate))
    t = np.arange(samples) / rate
    envelope = np.interp(t, np.arange(n) / fps, loud)
    waves = [envelope * np.sin(2 * np.pi * 330 * (c + 1) * t) for c in range(channels)]
    return np.stack(waves).astype(np.float32)


def encode(path: Path, frames: np.ndarray, fps: Fraction, *, times_ms: list[int] | None = None,
           pix_fmt: str = "yuv420p", audio: np.ndarray | None = None, audio_rate: int = 44100,
           layout: str = "mono") -> Path:
    """Write H.264 (+ AAC) with PyAV: constant ``fps``, or frame i shown at ``times_ms[i]``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".mov": "mov", ".mkv": "matroska"}.get(path.suffix.lower(), "mp4")
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = pix_fmt
        base = Fraction(1, 1000) if times_ms is not None else 1 / fps
        stream.codec_context.time_base = base
        sound = container.add_stream("aac", rate=audio_rate, layout=layout) if audio is not None else None
        for i, image in enumerate(frames):
            gray = pix_fmt == "gray"
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(image[..., 1] if gray else image), format="gray" if gray else "rgb24")
            frame.pts = times_ms[i] if times_ms is not None else i
            frame.time_base = base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = audio_rate, 0, Fraction(1, audio_rate)
            container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


# name → (fps, (height, width), pixel format, audio channels (0 = none), audio rate, VFR)
VIDEOS = {
    "street/phone landscape 25fps.mp4": (Fraction(25), (48, 80), "yuv420p", 1, 44100, False),
    "street/portrait 29.97.mp4": (Fraction(30000, 1001), (80, 44), "yuv420p", 0, 0, False),
    "park/surround 30fps.mp4": (Fraction(30), (54, 96), "yuv420p", 6, 48000, False),
    "park/gray variable rate.mp4": (Fraction(30), (64, 64), "gray", 1, 16000, True),
    "été/vidéo à la plage 猫.mp4": (Fraction(25), (37, 51), "yuv444p", 0, 0, False),
    "top level clip.mov": (Fraction(30), (60, 60), "yuv420p", 2, 22050, False),
}
BROKEN = {  # name → the word prepare's reason holds
    "park/truncated download.mp4": "truncated",
    "street/too short.mp4": "too short",
}


def _vfr_times(seconds: float, seed: int) -> list[int]:
    """Frame times in ms with gaps of 20–120 ms (a phone's variable frame rate)."""
    rng = np.random.default_rng(seed)
    times, t = [], 0
    while t < seconds * 1000:
        times.append(t)
        t += int(rng.choice([20, 33, 33, 33, 40, 66, 120]))
    return times


def write_folder(root: str | Path, seconds: float = 2.0, scale: int = 1) -> dict[str, str | None]:
    """Write :data:`VIDEOS` (each ``seconds`` long, sizes × ``scale``) and :data:`BROKEN` under
    ``root``; return {relative path: the word its rejection names, or None for a usable video}."""
    root = Path(root)
    out: dict[str, str | None] = {}
    for seed, (name, (fps, (h, w), pix_fmt, channels, rate, vfr)) in enumerate(VIDEOS.items()):
        times = _vfr_times(seconds, seed) if vfr else None
        n = len(times) if times else int(round(seconds * fps))
        frames = scene(n, h * scale, w * scale, seed)
        shown_fps = float(fps) if not times else 1000 * (n - 1) / times[-1]
        audio = motion_tone(frames, shown_fps, rate, channels) if channels else None
        layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(channels, "mono")
        encode(root / name, frames, fps, times_ms=times, pix_fmt=pix_fmt, audio=audio,
               audio_rate=rate or 44100, layout=layout)
        out[name] = None
    good = root / next(iter(VIDEOS))
    data = good.read_bytes()
    (root / "park" / "truncated download.mp4").write_bytes(data[: len(data) // 2])
    encode(root / "street" / "too short.mp4", scene(3, 48, 64, 99), Fraction(25))
    (root / "street" / "notes.txt").write_text("not a video: the folder source ignores it\n")
    out.update(BROKEN)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to write")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    parser.add_argument("--scale", type=int, default=4, help="size multiplier (1: thumbnails)")
    args = parser.parse_args()
    for name, reason in write_folder(args.root, args.seconds, args.scale).items():
        print(f"{name}: {'usable' if reason is None else 'rejected (' + reason + ')'}")


if __name__ == "__main__":
    main()
