"""Benchmark of the ``prepare`` stage: decode+shard throughput against raw decord decoding.

Writes a handful of textured videos (H.264 + AAC, ``pipeline.media_write``), then, on the same
files and in one run:

- raw decord: ``VideoReader(num_threads=1).get_batch(all frames)`` per file (frames only), and the
  same plus ``AudioReader`` (frames + audio) — the floor any decode-and-shard stage pays;
- ``stages.prepare.run`` with ``workers=1`` and ``workers=2`` (decode, resize/crop, cut clips,
  encode, write shards + manifest), timed end to end, including the process pool start-up.

A fifth run, raw decord (frames + audio) with the files split over 2 forked processes, shows
the speed-up the machine gives two decoders at that moment. The five runs are interleaved,
``--repeats`` rounds, rotating their order each round (the machine may be shared: every
comparison is made within one process and one time window). Reported per
run: the best and median wall time, frames/s from the best, and the median CPU seconds (user +
system of this process and the decoding processes), i.e. the work per frame whatever the load.
The 2-worker run splits its CPU time into the parent and the decoding processes, from which the
speed-up two free cores would give is estimated (half the decoding work plus the parent's).
Frames/s counts decoded source frames. Targets (issue #2): prepare(1 worker) ≥ 0.8 × raw
decord, and prepare(2 workers) ≥ 1.6 × prepare(1 worker) on a 2-core machine.

    python -m bench.prepare                     # ~30 s on 2 idle CPU cores, ~1 min under load
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


def _cpu_seconds() -> tuple[float, float]:
    """User + system CPU time of (this process, its finished children: the decoding processes)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


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


def _raw_decord_parallel(paths: list[Path], processes: int) -> tuple[int, float]:
    """Raw decord (frames + audio) with the files split over ``processes`` forked processes,
    timed including their start and exit: the speed-up the machine gives right now to two
    decoders, whatever else it runs (the reference for prepare's 2-vs-1-worker ratio)."""
    import multiprocessing

    from stages.prepare import _start_method

    context = multiprocessing.get_context(_start_method())
    start = time.perf_counter()
    with context.Pool(processes) as pool:
        shares = [(paths[i::processes], True) for i in range(processes)]
        frames = sum(n for n, _ in pool.starmap(_raw_decord, shares))
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


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12, help="videos written")
    parser.add_argument("--frames", type=int, default=64, help="frames per video")
    parser.add_argument("--size", type=int, default=256, help="written video size (pixels)")
    parser.add_argument("--resolution", type=int, default=256, help="prepare.resolution")
    parser.add_argument("--repeats", type=int, default=4, help="rounds of the four runs, interleaved")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        t0 = time.perf_counter()
        _render(root / "demo", args.videos, args.frames, args.size)
        load_before = os.getloadavg()
        print(f"wrote {args.videos} videos × {args.frames} frames, {args.size}×{args.size}, "
              f"H.264 + AAC, in {time.perf_counter() - t0:.1f}s; prepare.resolution "
              f"{args.resolution}; {args.repeats} interleaved rounds; {os.cpu_count()} CPUs")
        paths = sorted((root / "demo" / "videos").glob("*.mp4"))
        runs = {
            "raw decord, frames": lambda: _raw_decord(paths, audio=False),
            "raw decord, frames+audio": lambda: _raw_decord(paths, audio=True),
            "prepare, 1 worker": lambda: _prepare(root / "demo", root / "c1", 1, args.resolution, args.size),
            "prepare, 2 workers": lambda: _prepare(root / "demo", root / "c2", 2, args.resolution, args.size),
            "raw decord, f+a, 2 processes": lambda: _raw_decord_parallel(paths, 2),
        }
        runs["prepare, 1 worker"]()  # warm-up: imports, first-use costs
        names = list(runs)
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
        frames: dict[str, int] = {}
        for round_ in range(args.repeats):
            turn = round_ % len(names)  # rotate the order each round
            for name in names[turn:] + names[:turn]:
                own, kids = _cpu_seconds()
                frames[name], seconds = runs[name]()
                own2, kids2 = _cpu_seconds()
                wall[name].append(seconds)
                cpu[name].append((own2 - own, kids2 - kids))
        load_after = os.getloadavg()

        best = {name: min(wall[name]) for name in names}
        fps = {name: frames[name] / best[name] for name in names}
        work = {name: _median([a + b for a, b in cpu[name]]) for name in names}
        print(f"load average (1, 5, 15 min): {load_before[0]:.1f} {load_before[1]:.1f} "
              f"{load_before[2]:.1f} before, {load_after[0]:.1f} {load_after[1]:.1f} "
              f"{load_after[2]:.1f} after")
        print(f"\n| {'run':<28} | {'frames':>6} | {'best s':>6} | {'median s':>8} | {'frames/s':>8} "
              f"| {'CPU s':>5} | {'frames/CPU s':>12} |")
        print(f"|{'-' * 30}|{'-' * 8}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 7}|{'-' * 14}|")
        for name in names:
            print(f"| {name:<28} | {frames[name]:>6} | {best[name]:>6.2f} | {_median(wall[name]):>8.2f} "
                  f"| {fps[name]:>8.0f} | {work[name]:>5.2f} | {frames[name] / work[name]:>12.0f} |")

        def paired(top: str, bottom: str) -> float:  # median over rounds of the same-round ratio
            return _median([b / t for t, b in zip(wall[top], wall[bottom])])

        one, two = "prepare, 1 worker", "prepare, 2 workers"
        print("\nwall time (best of rounds; in brackets the median of same-round ratios), CPU (median):")
        for ref in ("raw decord, frames", "raw decord, frames+audio"):
            print(f"  prepare 1 worker / {ref:<24} = {fps[one] / fps[ref]:.2f}×  [{paired(one, ref):.2f}×]"
                  f"   CPU per frame: {work[ref] / work[one]:.2f}×   (target ≥ 0.8×)")
        print(f"  prepare 2 workers / 1 worker                 = {fps[two] / fps[one]:.2f}×  "
              f"[{paired(two, one):.2f}×]   (target ≥ 1.6×)")
        raw1, raw2 = "raw decord, frames+audio", "raw decord, f+a, 2 processes"
        print(f"  raw decord 2 processes / 1 process         = {fps[raw2] / fps[raw1]:.2f}×  "
              f"[{paired(raw2, raw1):.2f}×]   (what the machine gives two decoders now)")
        parent = _median([a for a, _ in cpu[two]])
        decoders = _median([b for _, b in cpu[two]])
        ceiling = work[one] / (decoders / 2 + parent)
        print(f"  2 workers: {decoders:.2f} CPU s in the 2 decoding processes + {parent:.2f} in the parent, "
              f"vs {work[one]:.2f} for 1 worker ({work[two] / work[one]:.2f}× the work);\n"
              f"  with two free cores the wall time would be about {decoders / 2 + parent:.2f} s, "
              f"a speed-up of ≈ {ceiling:.2f}× (estimate from CPU time, not measured)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
