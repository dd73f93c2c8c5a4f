"""Benchmark of the ``prepare`` stage: decode+shard throughput against raw decord decoding.

Writes a set of textured videos (H.264 + AAC, ``pipeline.data.media_write``), then, on the same files
and in one run:

- raw decord: ``VideoReader(num_threads=1).get_batch(all frames)`` per file (frames only), and the
  same plus ``AudioReader`` (frames + audio) — the floor any decode-and-shard stage pays;
- ``stages.prepare.run`` with ``workers=1`` and ``workers=2`` (decode, resize/crop, cut clips,
  encode, write shards + manifest), timed end to end, including the decoding process's start-up.
  The output folder of the previous round is removed before the clock starts (``dvc repro``
  removes a stage's outputs before running it, so the stage never pays for deleting them);
- raw decord (frames + audio) with the files split over 2 forked processes: the speed-up the
  machine gives two decoders at that moment (the machine may be shared);
- raw decord (frames) and prepare (1 worker) confined to one CPU (``sched_setaffinity``).

Threads: ``num_threads=1`` sets decord's FFmpeg decoder to one thread, but decord still decodes in
a thread of its own (its ``ThreadedDecoder``) while the calling thread demuxes packets and copies
frames out, so a single decoder keeps up to ~1.3 cores busy. The table shows it: "main" is the
CPU time of this process's main thread, "threads" that of its other threads (decord's), "procs"
that of the decoding processes, and "cores" = CPU / wall. The 1-CPU rows measure the same work
with no second core to spill onto. Other libraries are held to one thread (OMP/MKL/OpenBLAS).

The runs are interleaved, ``--repeats`` rounds, rotating their order each round; every comparison
is made within one process and one time window. Reported per run: the best and median wall time,
frames/s from the best, and the median CPU seconds split as above. Frames/s counts decoded source
frames. Targets (issue #2): prepare(1 worker) ≥ 0.8 × raw decord, and prepare(2 workers) ≥ 1.6 ×
prepare(1 worker) on a 2-core machine.

    python -m bench.prepare                     # ~1.5 min on 2 idle CPU cores, more under load
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
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # only decord's own thread, nothing hidden


class _NullLogger:
    def log_params(self, *a, **k): ...
    def log_metric(self, *a, **k): ...
    def log_metrics(self, *a, **k): ...
    def log_artifact(self, *a, **k): ...
    def set_tag(self, *a, **k): ...
    def set_tags(self, *a, **k): ...


def _cpu_seconds() -> tuple[float, float, float]:
    """User + system CPU seconds of (this process's main thread, the whole process, its finished
    children: the decoding processes). The main thread's is 0 where ``RUSAGE_THREAD`` is missing."""
    import resource

    def seconds(who: int) -> float:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    thread = getattr(resource, "RUSAGE_THREAD", None)
    main = seconds(thread) if thread is not None else 0.0
    return main, seconds(resource.RUSAGE_SELF), seconds(resource.RUSAGE_CHILDREN)


def _one_cpu(run):
    """``run`` confined to one CPU (this process, and the threads and processes it starts);
    unconfined where ``sched_setaffinity`` is missing."""
    def confined():
        if not hasattr(os, "sched_setaffinity"):
            return run()
        saved = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(saved)})
        try:
            return run()
        finally:
            os.sched_setaffinity(0, saved)

    return confined


def _render(folder: Path, videos: int, frames: int, size: int) -> None:
    """A demo-layout folder (videos.csv + videos/*.mp4) of textured scenes with moving discs and
    a tone whose pitch varies per video; numpy + write_mp4, a few seconds in all."""
    import numpy as np

    from pipeline.data.media_write import write_mp4

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

    from pipeline.data.prepare_pool import _start_method

    context = multiprocessing.get_context(_start_method())
    start = time.perf_counter()
    with context.Pool(processes) as pool:
        shares = [(paths[i::processes], True) for i in range(processes)]
        frames = sum(n for n, _ in pool.starmap(_raw_decord, shares))
    return frames, time.perf_counter() - start


def _prepare(demo: Path, out: Path, workers: int, resolution: int, size: int) -> tuple[int, float]:
    from pipeline.params import DataParams, PrepareParams
    from stages import prepare

    data = DataParams(source="demo", path=str(demo), annotations="", val_fraction=0.0, test_fraction=0.0,
                      fold=1)
    params = PrepareParams(
        resolution=resolution, fps=10.0, clip_length=16, clip_stride=8, frame_step=1, audio=True,
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
    parser.add_argument("--videos", type=int, default=16, help="videos written")
    parser.add_argument("--frames", type=int, default=128, help="frames per video")
    parser.add_argument("--size", type=int, default=256, help="written video size (pixels)")
    parser.add_argument("--resolution", type=int, default=256, help="prepare.resolution")
    parser.add_argument("--repeats", type=int, default=4, help="rounds of the runs, interleaved")
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
        demo, res, size = root / "demo", args.resolution, args.size
        runs = {  # name: (run, its output folder, removed before the clock starts)
            "raw decord, frames": (lambda: _raw_decord(paths, audio=False), None),
            "raw decord, frames+audio": (lambda: _raw_decord(paths, audio=True), None),
            "prepare, 1 worker": (lambda: _prepare(demo, root / "c1", 1, res, size), root / "c1"),
            "prepare, 2 workers": (lambda: _prepare(demo, root / "c2", 2, res, size), root / "c2"),
            "raw decord, f+a, 2 processes": (lambda: _raw_decord_parallel(paths, 2), None),
            "raw decord, frames, 1 CPU": (_one_cpu(lambda: _raw_decord(paths, audio=False)), None),
            "prepare, 1 worker, 1 CPU": (_one_cpu(lambda: _prepare(demo, root / "p1", 1, res, size)),
                                         root / "p1"),
        }  # fmt: skip
        runs["prepare, 1 worker"][0]()  # warm-up: imports, first-use costs
        names = list(runs)
        wall: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        frames: dict[str, int] = {}
        for round_ in range(args.repeats):
            turn = round_ % len(names)  # rotate the order each round
            for name in names[turn:] + names[:turn]:
                run, out = runs[name]
                if out is not None:
                    shutil.rmtree(out, ignore_errors=True)
                before = _cpu_seconds()
                frames[name], seconds = run()
                after = _cpu_seconds()
                main_s, own_s, kids_s = (b - a for a, b in zip(before, after))
                wall[name].append(seconds)
                cpu[name].append((main_s, own_s - main_s, kids_s))
        load_after = os.getloadavg()

        best = {name: min(wall[name]) for name in names}
        fps = {name: frames[name] / best[name] for name in names}
        part = {name: [_median([c[i] for c in cpu[name]]) for i in range(3)] for name in names}
        work = {name: _median([sum(c) for c in cpu[name]]) for name in names}
        cores = {name: _median([sum(c) / w for c, w in zip(cpu[name], wall[name])]) for name in names}
        print(f"load average (1, 5, 15 min): {load_before[0]:.1f} {load_before[1]:.1f} "
              f"{load_before[2]:.1f} before, {load_after[0]:.1f} {load_after[1]:.1f} "
              f"{load_after[2]:.1f} after")
        print(f"\n| {'run':<28} | {'frames':>6} | {'best s':>6} | {'median s':>8} | {'frames/s':>8} "
              f"| {'CPU s':>5} | {'main':>4} | {'threads':>7} | {'procs':>5} | {'cores':>5} |")
        print(f"|{'-' * 30}|{'-' * 8}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 7}|{'-' * 6}|{'-' * 9}"
              f"|{'-' * 7}|{'-' * 7}|")
        for name in names:
            main_s, threads_s, procs_s = part[name]
            print(f"| {name:<28} | {frames[name]:>6} | {best[name]:>6.2f} | {_median(wall[name]):>8.2f} "
                  f"| {fps[name]:>8.0f} | {work[name]:>5.2f} | {main_s:>4.2f} | {threads_s:>7.2f} "
                  f"| {procs_s:>5.2f} | {cores[name]:>5.2f} |")

        def paired(top: str, bottom: str) -> float:  # median over rounds of the same-round ratio
            return _median([b / t for t, b in zip(wall[top], wall[bottom])])

        def line(label: str, top: str, bottom: str, note: str) -> None:
            print(f"  {label:<44} = {fps[top] / fps[bottom]:.2f}×  [{paired(top, bottom):.2f}×]   {note}")

        one, two = "prepare, 1 worker", "prepare, 2 workers"
        print("\nwall time (best of rounds; in brackets the median of same-round ratios):")
        for ref in ("raw decord, frames", "raw decord, frames+audio"):
            line(f"prepare 1 worker / {ref}", one, ref,
                 f"CPU per frame {work[ref] / work[one]:.2f}×   (target ≥ 0.8×)")
        line("prepare 1 worker / raw frames, both on 1 CPU", "prepare, 1 worker, 1 CPU",
             "raw decord, frames, 1 CPU", "(no second core for decord's thread)")
        line("prepare 2 workers / 1 worker", two, one, "(target ≥ 1.6×)")
        line("prepare 2 workers / 1 worker on 1 CPU", two, "prepare, 1 worker, 1 CPU",
             "(2 cores vs 1 core)")
        line("raw decord 2 processes / 1 process", "raw decord, f+a, 2 processes",
             "raw decord, frames+audio", "(what the machine gives two decoders now)")
        line("raw decord frames, any CPU / 1 CPU", "raw decord, frames", "raw decord, frames, 1 CPU",
             "(what decord's own thread gains)")
        main2, threads2, child2 = part[two]
        print(f"  2 workers: {main2 + threads2:.2f} CPU s in this process (decoding too) + {child2:.2f} in "
              f"the decoding process, vs {work[one]:.2f} for 1 worker ({work[two] / work[one]:.2f}× "
              f"the work)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
