"""Benchmark of the ``prepare`` stage: decode+shard throughput against raw decord decoding.

Writes a handful of textured videos (H.264 + AAC, ``pipeline.media_write``), then, on the same
files and in one run:

- raw decord: ``VideoReader(num_threads=1).get_batch(all frames)`` per file (frames only), and the
  same plus ``AudioReader`` (frames + audio) — the floor any decode-and-shard stage pays;
- ``stages.prepare.run`` with ``workers=1`` and ``workers=2`` (decode, resize/crop, cut clips,
  encode, write shards + manifest), timed end to end, including the process pool start-up.

Each measurement is the best of ``--repeats`` runs (the machine may be shared; the load average
is printed, and the CPU seconds column shows the work done whatever the load). Frames/s counts
decoded source frames. Targets (issue #2): prepare(1 worker) ≥ 0.8 × raw decord, and
prepare(2 workers) ≥ 1.6 × prepare(1 worker) on a 2-core machine.

    python -m bench.prepare                     # ~40 s on 2 CPU cores
    python -m bench.prepare --videos 8 --frames 96 --size 128 --resolution 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CCVS_TRACKING", "off")


class _NullLogger:
    def log_params(self, *a, **k): ...
    def log_metric(self, *a, **k): ...
    def log_metrics(self, *a, **k): ...
    def log_artifact(self, *a, **k): ...
    def set_tag(self, *a, **k): ...
    def set_tags(self, *a, **k): ...


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the decoding pool)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _render(folder: Path, videos: int, frames: int, size: int) -> None:
    """A demo-layout folder (videos.csv + videos/*.mp4) of textured scenes with moving discs and
    a tone whose pitch varies per video; numpy + write_mp4, a few seconds in all."""
    import numpy as np

    from pipeline.media_write import write_mp4

    (folder / "videos").mkdir(parents=True, exist_ok=True)
    rows = ["path,label,split"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for v in range(videos):
        rng = np.random.default_rng(v)
        texture = rng.normal(size=(size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        out = np.empty((frames, size, size, 3), np.uint8)
        for t in range(frames):
            img = 128 + 40 * np.roll(texture, t, axis=1)
            cx, cy = size / 2 + size / 3 * np.cos(0.1 * t + v), size / 2 + size / 3 * np.sin(0.13 * t)
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (size / 8) ** 2] = (230, 60, 40)
            out[t] = np.clip(img, 0, 255)
        seconds = np.arange(int(frames / 10 * 16000)) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (220 + 20 * v) * seconds).astype(np.float32)
        write_mp4(folder / "videos" / f"v{v:03d}.mp4", out, 10, audio, 16000)
        rows.append(f"videos/v{v:03d}.mp4,{'ab'[v % 2]},train")
    (folder / "videos.csv").write_text("\n".join(rows) + "\n")


def _raw_decord(paths: list[Path], audio: bool) -> tuple[int, float]:
    import decord
    import numpy as np

    start, frames = time.perf_counter(), 0
    for path in paths:
        reader = decord.VideoReader(str(path), num_threads=1)
        frames += len(reader.get_batch(list(range(len(reader)))).asnumpy())
        if audio:
            reader = decord.AudioReader(str(path), sample_rate=-1, mono=True)
            np.ascontiguousarray(reader._array)  # the decoded track (as prepare reads it)
    return frames, time.perf_counter() - start


def _prepare(demo: Path, out: Path, workers: int, resolution: int, size: int) -> tuple[int, float]:
    from pipeline.params import DataParams, PrepareParams
    from stages import prepare

    data = DataParams(source="demo", path=str(demo), annotations="", val_fraction=0.0, test_fraction=0.0)
    params = PrepareParams(
        resolution=resolution, clip_length=16, clip_stride=8, frame_step=1, audio=True,
        audio_rate=16000, missing_audio="silence", shard_max_bytes=50_000_000, workers=workers,
        decoder="auto",
    )  # fmt: skip
    start = time.perf_counter()
    sys.stderr, saved = open(os.devnull, "w"), sys.stderr  # no progress bar in the table
    try:
        metrics = prepare.run(data, params, out, _NullLogger())
    finally:
        sys.stderr.close()
        sys.stderr = saved
    return int(metrics["frames_decoded"]), time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12, help="videos written")
    parser.add_argument("--frames", type=int, default=64, help="frames per video")
    parser.add_argument("--size", type=int, default=256, help="written video size (pixels)")
    parser.add_argument("--resolution", type=int, default=256, help="prepare.resolution")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        t0 = time.perf_counter()
        _render(root / "demo", args.videos, args.frames, args.size)
        print(f"wrote {args.videos} videos × {args.frames} frames, {args.size}×{args.size}, "
              f"H.264 + AAC, in {time.perf_counter() - t0:.1f}s; prepare.resolution "
              f"{args.resolution}; best of {args.repeats}; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} before the runs")
        paths = sorted((root / "demo" / "videos").glob("*.mp4"))
        rows: dict[str, tuple[int, float]] = {}
        cpu: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, run in [
                ("raw decord, frames", lambda: _raw_decord(paths, audio=False)),
                ("raw decord, frames+audio", lambda: _raw_decord(paths, audio=True)),
                ("prepare, 1 worker", lambda: _prepare(root / "demo", root / "c1", 1, args.resolution, args.size)),
                ("prepare, 2 workers", lambda: _prepare(root / "demo", root / "c2", 2, args.resolution, args.size)),
            ]:
                before = _cpu_seconds()
                frames, seconds = run()
                used = _cpu_seconds() - before
                if name not in rows or seconds < rows[name][1]:
                    rows[name] = (frames, seconds)
                cpu[name] = min(cpu.get(name, float("inf")), used)
        fps = {name: frames / seconds for name, (frames, seconds) in rows.items()}
        print(f"\n| {'run':<26} | {'frames':>6} | {'seconds':>7} | {'frames/s':>8} | {'CPU s':>6} |")
        print(f"|{'-' * 28}|{'-' * 8}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
        for name, (frames, seconds) in rows.items():
            print(f"| {name:<26} | {frames:>6} | {seconds:>7.2f} | {fps[name]:>8.0f} | {cpu[name]:>6.2f} |")
        one, two = fps["prepare, 1 worker"], fps["prepare, 2 workers"]
        print()
        print(f"prepare (1 worker) / raw decord frames       = {one / fps['raw decord, frames']:.2f}×  (target ≥ 0.8×)")
        print(f"prepare (1 worker) / raw decord frames+audio = {one / fps['raw decord, frames+audio']:.2f}×")
        print(f"prepare 2 workers / 1 worker                 = {two / one:.2f}×  (target ≥ 1.6×)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
