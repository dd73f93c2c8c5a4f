"""Stage ``demo_data``: render the embedded demo dataset (the procedural robot-pushing world).

A stand-in for BAIR robot pushing (paper §4) that needs no download: ``pipeline.data.demo_world``
renders each video with its sound, ground-truth gripper positions, layouts and class label. This
stage writes them in the raw-demo layout of docs/CONTRACTS.md::

    out_dir/videos/<video_id>.mp4        H.264 + AAC mono
    out_dir/videos.csv                   path,label,split (path relative to the csv)
    out_dir/annotations.csv              video,frame,x,y — ``annotated_frames`` train frames only,
                                         like the 500 hand-annotated BAIR frames of §4
    out_dir/layouts/<video_id>.npz       layout: uint8 (T, H, W)
    out_dir/ground_truth/<video_id>.npz  positions: float32 (T, 2), every frame (evaluation only)
    out_dir/classes.json                 class names, index = label id

Everything follows from ``demo.seed``: the same params give byte-identical files.

Only when ``data.source`` is ``demo``: with any other source (your own videos, a dataset) the
stage renders nothing and leaves ``out_dir/README.txt`` saying why (DVC needs the output to exist;
it takes a few milliseconds), so pointing ``data`` at your videos never costs a demo world.

    python -m stages.demo_data --params params.yaml --out data/raw/demo
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from pipeline.data.demo_scene import CLASSES, DemoVideo, WorldConfig
from pipeline.data.demo_world import render_video
from pipeline.data.media_write import write_gif, write_mp4
from pipeline.params import DemoParams, ParamsError
from pipeline.stage import stage_main

SPLITS = ("train", "val", "test")


def world_config(params: DemoParams) -> WorldConfig:
    """The demo world's config from the ``demo`` params section."""
    try:
        return WorldConfig(
            resolution=params.resolution,
            num_frames=params.num_frames,
            fps=params.fps,
            min_objects=params.min_objects,
            max_objects=params.max_objects,
            audio_rate=params.audio_rate,
        )
    except ValueError as err:
        raise ParamsError(f"demo: {err}") from None


def video_id(index: int) -> str:
    return f"demo_{index:04d}"


def video_seeds(seed: int, count: int) -> list[int]:
    """One independent seed per video, derived from the stage seed."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(c.generate_state(1, dtype=np.uint64)[0]) for c in children]


def assign_labels_and_splits(params: DemoParams) -> tuple[np.ndarray, np.ndarray]:
    """Balanced class labels and train/val/test splits, both drawn from ``params.seed``.

    Returns (labels (N,) int, splits (N,) str). Labels cycle through CLASSES then are shuffled,
    so every class has ⌊N / C⌋ or ⌈N / C⌉ videos.
    """
    n = params.num_videos
    if n < 1:
        raise ParamsError(f"demo.num_videos: need at least 1 video, got {n}")
    for key in ("test_fraction", "val_fraction"):
        value = getattr(params, key)
        if not 0 <= value < 1:
            raise ParamsError(f"demo.{key}: must be in [0, 1), got {value}")
    n_test = int(round(params.test_fraction * n))
    n_val = int(round(params.val_fraction * n))
    if n - n_test - n_val < 1:
        raise ParamsError(
            f"demo: test_fraction + val_fraction leave no train video out of {n} "
            f"({n_test} test, {n_val} val)"
        )
    rng = np.random.default_rng([params.seed, 1])
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    splits = np.full(n, "train", dtype=object)
    order = rng.permutation(n)
    splits[order[:n_test]] = "test"
    splits[order[n_test : n_test + n_val]] = "val"
    return labels, splits


def annotation_picks(params: DemoParams, num_train: int) -> list[tuple[int, int]]:
    """``annotated_frames`` distinct (train video index, frame) pairs, sorted, from the seed."""
    total = num_train * params.num_frames
    if not 0 <= params.annotated_frames <= total:
        raise ParamsError(
            f"demo.annotated_frames: {params.annotated_frames} asked, but the train split has "
            f"only {total} frames ({num_train} videos × {params.num_frames})"
        )
    rng = np.random.default_rng([params.seed, 2])
    picks = np.sort(rng.choice(total, size=params.annotated_frames, replace=False))
    return [(int(f // params.num_frames), int(f % params.num_frames)) for f in picks]


# --------------------------------------------------------------------------- file writing


def _atomic_write(path: Path, write: Callable[[io.IOBase], None], binary: bool = True) -> None:
    """Write through ``write(file)`` to a temporary name next to ``path``, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)

    _atomic_write(path, write, binary=False)


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def _remove_stale(folder: Path, keep: set[str]) -> None:
    """Delete files of an earlier run (e.g. with more videos) that this run did not write."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and path.name not in keep:
                path.unlink()


def _sample_gif(videos: list[DemoVideo], fps: int, folder: Path) -> Path:
    """Up to four videos side by side, pixels doubled, as one GIF."""
    strip = np.concatenate([v.frames for v in videos[:4]], axis=2)
    return write_gif(folder / "demo_samples.gif", strip, fps, scale=2)


# --------------------------------------------------------------------------- stage


def run(params: DemoParams, out_dir: Path, logger: Any) -> dict[str, float]:
    """Render ``params.num_videos`` videos into ``out_dir`` (raw-demo layout); return metrics."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    (out_dir / "README.txt").unlink(missing_ok=True)  # left by a run that rendered nothing
    cfg = world_config(params)
    labels, splits = assign_labels_and_splits(params)
    seeds = video_seeds(params.seed, params.num_videos)
    ids = [video_id(i) for i in range(params.num_videos)]
    train_ids = [vid for vid, split in zip(ids, splits) if split == "train"]
    picks = annotation_picks(params, len(train_ids))  # checked before any rendering

    positions: dict[str, np.ndarray] = {}
    samples: list[DemoVideo] = []
    contact_frames, speed_sum, render_s, encode_s = 0, 0.0, 0.0, 0.0
    for i in tqdm(range(params.num_videos), desc="demo_data", unit="video", file=sys.stderr):
        t0 = time.perf_counter()
        video = render_video(cfg, seeds[i], label=int(labels[i]))
        t1 = time.perf_counter()
        vid = ids[i]
        write_mp4(out_dir / "videos" / f"{vid}.mp4", video.frames, params.fps, video.audio,
                  params.audio_rate)
        _write_npz(out_dir / "layouts" / f"{vid}.npz", layout=video.layout)
        _write_npz(out_dir / "ground_truth" / f"{vid}.npz", positions=video.positions)
        render_s += t1 - t0
        encode_s += time.perf_counter() - t1
        positions[vid] = video.positions
        contact_frames += int(video.contacts.sum())
        speed_sum += float(video.speed.mean())
        if len(samples) < 4:
            samples.append(video)

    for folder, ext in (("videos", ".mp4"), ("layouts", ".npz"), ("ground_truth", ".npz")):
        _remove_stale(out_dir / folder, {f"{vid}{ext}" for vid in ids})
    _write_csv(
        out_dir / "videos.csv",
        ["path", "label", "split"],
        [(f"videos/{vid}.mp4", CLASSES[labels[i]], splits[i]) for i, vid in enumerate(ids)],
    )
    annotations = []
    for train_index, frame in picks:
        vid = train_ids[train_index]
        x, y = positions[vid][frame]
        annotations.append((vid, frame, f"{x:.3f}", f"{y:.3f}"))
    _write_csv(out_dir / "annotations.csv", ["video", "frame", "x", "y"], annotations)
    _atomic_write(
        out_dir / "classes.json", lambda f: f.write(json.dumps(list(CLASSES), indent=1) + "\n"),
        binary=False,
    )

    total_frames = params.num_videos * params.num_frames
    metrics = {
        "num_videos": float(params.num_videos),
        **{f"num_{s}": float(np.sum(splits == s)) for s in SPLITS},
        "num_annotations": float(len(annotations)),
        "total_frames": float(total_frames),
        "contact_frame_fraction": contact_frames / total_frames,
        "mean_gripper_speed_px_per_frame": speed_sum / params.num_videos,
        "render_seconds": render_s,
        "encode_seconds": encode_s,
        "seconds": time.perf_counter() - start,
    }
    logger.log_params({"demo_data.classes": ",".join(CLASSES)})
    logger.log_metrics(metrics)
    logger.set_tag("demo_data.out_dir", str(out_dir))
    with tempfile.TemporaryDirectory() as tmp:
        logger.log_artifact(_sample_gif(samples, params.fps, Path(tmp)), "samples")
    return metrics


PATHS = {
    "out": ("data/raw/demo", "output folder"),
}
_OWN = ("videos", "layouts", "ground_truth", "videos.csv", "annotations.csv", "classes.json")


def not_used(source: str, out_dir: Path, logger: Any) -> dict[str, float]:
    """``data.source`` is not the demo: remove what an earlier run rendered, say why, render
    nothing."""
    out_dir = Path(out_dir)
    for name in _OWN:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "README.txt", lambda f: f.write(
        f"Not rendered: data.source is {source!r}, not 'demo'. The pipeline reads the videos "
        f"data.path names (see data/listing.json).\n"), binary=False)
    logger.set_tag("demo_data.rendered", "false")
    return {"num_videos": 0.0, "rendered": 0.0}


def summary(metrics: dict[str, float], args: argparse.Namespace) -> str:
    if not metrics.get("rendered", 1.0):
        return f"not rendered (data.source is not 'demo'): {args.out}/README.txt"
    return (f"{int(metrics['num_videos'])} videos ({int(metrics['num_train'])} train / "
            f"{int(metrics['num_val'])} val / {int(metrics['num_test'])} test) in "
            f"{metrics['seconds']:.1f}s → {args.out}")


def main(argv: list[str] | None = None) -> None:
    stage_main("demo_data", __doc__, PATHS,
               lambda p, a, log: (run(p["demo"], Path(a.out), log) if p["data"].source == "demo"
                                  else not_used(p["data"].source, Path(a.out), log)),
               sections=("demo", "data"), summary=summary, argv=argv)


if __name__ == "__main__":
    main()
