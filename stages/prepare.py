"""Stage ``prepare``: decode videos and cut them into clip shards (the paper's §4 data setup).

The paper trains on fixed-length clips (16 frames for the BAIR/Kinetics tables, §4) at a fixed
square resolution (64×64 or 256×256), with audio for AudioSet-Drums, annotated arm positions for
BAIR (the 500 hand-labelled frames) and layouts for Cityscapes (App. E). This stage turns any set
of videos (``pipeline.data.sources``: the demo world, a folder/glob, a manifest CSV) into exactly that:

1. decode each video (``pipeline.data.media``: decord, PyAV fallback) keeping every ``frame_step``-th
   frame, in chunks (in one batch when the frames are already square at ``resolution``: the
   decoded batch is then kept as is, not copied), resizing the short side to ``resolution`` and center-cropping a square
   (bilinear, antialiased; layouts nearest; annotated positions mapped through the same
   transform: x' = (x + ½ − x₀)·s − ½ with the crop's left edge x₀ and scale s);
2. cut clips of ``clip_length`` frames every ``clip_stride`` (kept) frames, with the audio
   samples that play during those frames (mono, ``audio_rate``; a missing track is rejected or
   replaced by silence per ``missing_audio``), the annotated positions (NaN elsewhere) and layouts.
   The audio track is decoded by PyAV in the same opening of the file as the probe
   (``media.probe_with_audio``: one opening instead of two, ~0.05 of 0.9 CPU-seconds in
   ``bench/prepare.py``), except with ``decoder: decord`` (decord's ``AudioReader``); the two
   differ by float rounding of the down-mix only (< 1e-6);
3. write webdataset shards per split (``pipeline.data.shards``), ``manifest.parquet`` (one row per
   clip), ``rejected.csv`` (source,reason; always written) and ``classes.json``.

Videos are decoded by ``workers`` decoders: this process and ``workers − 1`` forked processes
(so 2 workers is one child, not two children and an idle parent). A decoding process sends back
only its clips' sizes and manifest rows; the parent, taking videos in input order, places each
clip in a shard (``ShardWriter.place``: shard, offset) and sends the placement back; the decoding
process then writes the clip there itself (``pwritev``), so no pixel passes through a pipe or is
copied twice, and the shards are byte-identical for any ``workers``. At most ``2 × workers``
videos are in flight, so memory does not grow with the number of videos. decord decodes in a
thread of its own even with ``num_threads=1`` (the calling thread demuxes and copies), so one
worker already keeps more than one core partly busy (``bench/prepare.py`` measures how much).

The per-video work (``Crop``, ``process_video``, ``VideoResult`` ...) lives in
``pipeline.data.clip_extraction``, the decoding processes (``_decode_all``, ``_Pool``) in
``pipeline.data.prepare_pool``; this module re-exports the names callers use, and keeps the outputs
(manifest, ``rejected.csv``, ``classes.json``) and the stage's ``run`` and CLI.

    python -m stages.prepare --params params.yaml --out data/clips
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.data.clip_extraction import (
    PrepareError,
)
from pipeline.params import DataParams, ParamsError, PrepareParams
from pipeline.data.prepare_pool import _decode_all
from pipeline.data.shard_writing import ShardWriter
from pipeline.data.datasets.catalog import list_inputs
from pipeline.data.sources import SPLITS
from pipeline.stage import stage_main

MANIFEST_COLUMNS = (
    "key", "video_id", "split", "label", "label_id", "shard", "first_frame", "num_frames",
    "frame_step", "fps", "has_audio", "has_positions", "has_layout", "source",
)  # fmt: skip

__all__ = [
    "MANIFEST_COLUMNS",
    "check_params",
    "main",
    "run",
]


# --------------------------------------------------------------------------- outputs


def _clean(out_dir: Path) -> None:
    """Remove what an earlier run wrote (only our own file names)."""
    for split in SPLITS:
        for path in (out_dir / split).glob("clips-*.tar*"):
            path.unlink()
        (out_dir / split).mkdir(exist_ok=True)  # an empty split is an empty folder
    for name in ("manifest.parquet", "rejected.csv", "classes.json"):
        (out_dir / name).unlink(missing_ok=True)


class _ManifestWriter:
    """Streams manifest rows into ``manifest.parquet`` in row groups (memory ~ one group)."""

    def __init__(self, path: Path, group: int = 4096):
        import pyarrow as pa

        self.path, self.tmp, self.group = path, path.with_name(path.name + ".tmp"), group
        self.schema = pa.schema(
            [
                ("key", pa.string()), ("video_id", pa.string()), ("split", pa.string()),
                ("label", pa.string()), ("label_id", pa.int32()), ("shard", pa.string()),
                ("first_frame", pa.int32()), ("num_frames", pa.int32()),
                ("frame_step", pa.int32()), ("fps", pa.float64()), ("has_audio", pa.bool_()),
                ("has_positions", pa.bool_()), ("has_layout", pa.bool_()), ("source", pa.string()),
            ]
        )  # fmt: skip
        self.rows: list[dict[str, Any]] = []
        self.writer = None
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.count += 1
        if len(self.rows) >= self.group:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            self.writer = pq.ParquetWriter(str(self.tmp), self.schema)
        columns = {name: [r[name] for r in self.rows] for name in MANIFEST_COLUMNS}
        self.writer.write_table(pa.table(columns, schema=self.schema))
        self.rows = []

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        if self.rows or self.writer is None:
            self._flush()
        self.writer.close()
        os.replace(self.tmp, self.path)


def check_params(p: PrepareParams) -> None:
    """Fail early, naming the key, on values no video could satisfy."""
    for key in ("resolution", "clip_length", "clip_stride", "frame_step", "audio_rate",
                "shard_max_bytes", "workers"):  # fmt: skip
        if getattr(p, key) < 1:
            raise ParamsError(f"prepare.{key}: must be >= 1, got {getattr(p, key)}")


# --------------------------------------------------------------------------- stage


def run(data: DataParams, params: PrepareParams, out_dir: Path, logger: Any) -> dict[str, float]:
    """Decode the videos ``data`` lists into clip shards under ``out_dir``; return metrics.

    Writes ``{train,val,test}/clips-%05d.tar``, ``manifest.parquet``, ``rejected.csv`` and
    ``classes.json`` (docs/CONTRACTS.md "Clip shards"). Raises :class:`PrepareError` when not a
    single clip could be made (after writing ``rejected.csv``, which says why).
    """
    start = time.perf_counter()
    check_params(params)
    out_dir = Path(out_dir)
    listing = list_inputs(data)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(out_dir)

    writers = {split: ShardWriter(out_dir / split, params.shard_max_bytes) for split in SPLITS}
    manifest = _ManifestWriter(out_dir / "manifest.parquet")
    clips = {split: 0 for split in SPLITS}
    frames_decoded = 0
    rejected_tmp = out_dir / "rejected.csv.tmp"
    try:
        with open(rejected_tmp, "w", newline="", encoding="utf-8") as handle:
            rejects = csv.writer(handle, lineterminator="\n")
            rejects.writerow(["source", "reason"])
            rejects.writerows(listing.rejected)
            num_rejected = len(listing.rejected)
            decoded = contextlib.closing(_decode_all(listing.videos, params, writers))
            progress = tqdm(total=len(listing.videos), desc="prepare", unit="video", file=sys.stderr)
            with decoded as results, progress:  # closing stops the decoding processes at once
                for summary, placements in results:
                    progress.update()
                    if summary.rejected:
                        rejects.writerow([summary.video.source, summary.rejected])
                        num_rejected += 1
                        continue
                    frames_decoded += summary.frames_decoded
                    for row, placement in zip(summary.rows, placements):
                        manifest.add({**row, "shard": placement.shard})
                        clips[summary.video.split] += 1
    except BaseException:  # leave no half-written file behind
        for writer in writers.values():
            writer.abort()
        manifest.abort()
        rejected_tmp.unlink(missing_ok=True)
        raise
    os.replace(rejected_tmp, out_dir / "rejected.csv")
    shards = {split: len(writer.close()) for split, writer in writers.items()}
    manifest.close()
    write_json(out_dir / "classes.json", listing.classes, indent=1, sort_keys=False,
               ensure_ascii=False)

    seconds = time.perf_counter() - start
    metrics = {
        "num_inputs": float(len(listing.videos) + len(listing.rejected)),
        "num_rejected": float(num_rejected),
        "num_clips": float(sum(clips.values())),
        **{f"clips_{split}": float(n) for split, n in clips.items()},
        **{f"shards_{split}": float(n) for split, n in shards.items()},
        "frames_decoded": float(frames_decoded),
        "seconds": seconds,
        "frames_per_second": frames_decoded / seconds if seconds > 0 else 0.0,
    }
    logger.log_metrics(metrics)
    logger.set_tag("prepare.out_dir", str(out_dir))
    logger.log_artifact(out_dir / "rejected.csv")
    logger.log_artifact(out_dir / "classes.json")
    if not metrics["num_clips"]:
        raise PrepareError(
            f"no clip could be made from {int(metrics['num_inputs'])} input(s); "
            f"see {out_dir / 'rejected.csv'}"
        )
    return metrics


PATHS = {
    "out": ("data/clips", "output folder"),
}


def summary(metrics: dict[str, float], args: argparse.Namespace) -> str:
    return (f"{int(metrics['num_clips'])} clips ({int(metrics['clips_train'])} train / "
            f"{int(metrics['clips_val'])} val / {int(metrics['clips_test'])} test), "
            f"{int(metrics['num_rejected'])} rejected (see {Path(args.out) / 'rejected.csv'}), "
            f"{metrics['frames_per_second']:.0f} frames/s → {args.out}")


def main(argv: list[str] | None = None) -> None:
    stage_main("prepare", __doc__, PATHS,
               lambda p, a, log: run(p["data"], p["prepare"], Path(a.out), log),
               sections=("data", "prepare"), check=lambda p: check_params(p["prepare"]),
               summary=summary, argv=argv)


if __name__ == "__main__":
    main()
