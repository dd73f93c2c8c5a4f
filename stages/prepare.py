"""Stage ``prepare``: decode videos and cut them into clip shards (the paper's §4 data setup).

The paper trains on fixed-length clips (16 frames for the BAIR/Kinetics tables, §4) at a fixed
square resolution (64×64 or 256×256), with audio for AudioSet-Drums, annotated arm positions for
BAIR (the 500 hand-labelled frames) and layouts for Cityscapes (App. E). This stage turns any set
of videos (``pipeline.data.sources``: the demo world, a folder/glob, a manifest CSV; checked
against the ``listing`` stage's file, ``pipeline.data.listing``) into exactly that:

0. videos whose source gives no split (a folder; a manifest row with an empty split) are first
   screened from their containers (``clip_extraction.screen_video``: readable, long enough at
   ``fps``, audio when required) and the usable ones drawn into train / val / test by whole
   videos (``pipeline.data.splits.draw_splits``: a stable hash, at least one video per split;
   fewer than 3 usable videos stop the stage with the counts);
1. decode each video (``pipeline.data.media``: decord, PyAV fallback) at ``fps`` (the source frame
   nearest in time to each tick, ``pipeline.data.frame_rate``; from the packets' times, so
   variable-rate videos too) keeping every ``frame_step``-th frame, in chunks (in one batch when the frames are already square at ``resolution``: the
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

Params that cannot work stop the stage with one line naming them (``check_params``): an ``fps``
that gives no whole number of audio samples per frame (``audio_rate / fps``), a ``clip_length``
longer than every video, a split left without clips.

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
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.data.clip_extraction import PrepareError, VideoResult, VideoSummary, screen_video
from pipeline.data.frame_rate import is_whole, whole_rates
from pipeline.data.listing import check_listing
from pipeline.params import DataParams, ParamsError, PrepareParams
from pipeline.data.prepare_pool import _decode_all
from pipeline.data.shard_writing import ShardWriter
from pipeline.data.datasets.catalog import list_inputs
from pipeline.data.sources import SPLITS, Listing, VideoSource
from pipeline.data.splits import SplitError, draw_splits
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
    if not p.fps > 0:
        raise ParamsError(f"prepare.fps: must be > 0, got {p.fps}")
    if p.audio and not is_whole(p.audio_rate / p.fps):
        rates = ", ".join(str(f) for f in whole_rates(p.audio_rate, range(5, 61)))
        raise ParamsError(
            f"prepare.fps: {p.fps:g} fps with prepare.audio_rate {p.audio_rate} gives "
            f"{p.audio_rate / p.fps:.2f} audio samples per frame, not a whole number; set "
            f"prepare.fps to one of {rates} (or prepare.audio_rate to a multiple of the fps)")


def _screen(listing: Listing, params: PrepareParams) -> tuple[list[VideoSource], list[VideoResult]]:
    """The videos to decode, and the ones screened out. Only when some split is drawn are the
    videos screened first (``screen_video``), so that only usable ones are drawn into splits;
    the demo's and a manifest's given splits go straight to decoding."""
    if all(v.split for v in listing.videos):
        return listing.videos, []
    screened = [(v, screen_video(v, params)) for v in tqdm(
        listing.videos, desc="prepare: screening", unit="video", file=sys.stderr,
        disable=len(listing.videos) < 100)]  # containers only: ~10 ms a video
    return [v for v, bad in screened if bad is None], [bad for _, bad in screened if bad]


def _with_splits(videos: list[VideoSource], data: DataParams) -> list[VideoSource]:
    """``videos`` with every empty split drawn (``pipeline.data.splits.draw_splits``)."""
    if all(v.split for v in videos):
        return videos
    splits = draw_splits([v.split_key or v.video_id for v in videos], [v.split for v in videos],
                         data.val_fraction, data.test_fraction)
    return [dataclasses.replace(v, split=s) for v, s in zip(videos, splits)]


def _no_clip_error(results: list[VideoSummary | VideoResult], total: int, params: PrepareParams,
                   rejected_csv: Path) -> PrepareError:
    """Why nothing could be made: a clip longer than every readable video names the params;
    else the rejects file."""
    readable = [r for r in results if r.length > 0]
    lengths = [r.length for r in readable if r.rejected and r.rejected.startswith("too short")]
    if lengths and len(lengths) == len(readable):
        need = (params.clip_length - 1) * params.frame_step + 1
        return PrepareError(
            f"prepare.clip_length: {params.clip_length} frames × frame_step "
            f"{params.frame_step} need {need} frames at prepare.fps {params.fps:g} "
            f"({need / params.fps:.2f} s), the longest video has {max(lengths)} "
            f"({max(lengths) / params.fps:.2f} s); lower prepare.clip_length or "
            f"prepare.frame_step, or raise prepare.fps")
    return PrepareError(f"no clip could be made from {total} input(s); see {rejected_csv}")


# --------------------------------------------------------------------------- stage


def run(data: DataParams, params: PrepareParams, out_dir: Path, logger: Any,
        listing: Path | None = None) -> dict[str, float]:
    """Decode the videos ``data`` lists into clip shards under ``out_dir``; return metrics.

    ``listing``: the listing stage's file (``pipeline.data.listing``): the inputs must still be
    the ones it lists (else a one-line error: rerun ``dvc repro``); None: no check.
    Writes ``{train,val,test}/clips-%05d.tar``, ``manifest.parquet``, ``rejected.csv`` and
    ``classes.json`` (docs/CONTRACTS.md "Clip shards"). Raises :class:`PrepareError` when not a
    single clip could be made or a split got none (after writing ``rejected.csv``, which says
    why).
    """
    start = time.perf_counter()
    check_params(params)
    out_dir = Path(out_dir)
    found = list_inputs(data)
    if listing is not None:  # the inputs DVC filed this run under (the listing stage's file)
        check_listing(listing, found, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean(out_dir)
    rejected_csv = out_dir / "rejected.csv"
    videos, screened = _screen(found, params)
    try:
        videos = _with_splits(videos, data)
    except SplitError as err:
        _write_rejects(rejected_csv, found.rejected, screened)
        raise PrepareError(f"{err} (data.path {data.path!r}; unusable inputs: {rejected_csv})"
                           ) from None
    listing_rejects = [*found.rejected, *((r.video.source, r.rejected) for r in screened)]

    writers = {split: ShardWriter(out_dir / split, params.shard_max_bytes) for split in SPLITS}
    manifest = _ManifestWriter(out_dir / "manifest.parquet")
    clips = {split: 0 for split in SPLITS}
    videos_in = {split: 0 for split in SPLITS}
    frames_decoded = 0
    outcomes: list[VideoSummary | VideoResult] = list(screened)
    rejected_tmp = out_dir / "rejected.csv.tmp"
    try:
        with open(rejected_tmp, "w", newline="", encoding="utf-8") as handle:
            rejects = csv.writer(handle, lineterminator="\n")
            rejects.writerow(["source", "reason"])
            rejects.writerows(listing_rejects)
            num_rejected = len(listing_rejects)
            decoded = contextlib.closing(_decode_all(videos, params, writers))
            progress = tqdm(total=len(videos), desc="prepare", unit="video", file=sys.stderr)
            with decoded as results, progress:  # closing stops the decoding processes at once
                for summary, placements in results:
                    progress.update()
                    outcomes.append(summary)
                    if summary.rejected:
                        rejects.writerow([summary.video.source, summary.rejected])
                        num_rejected += 1
                        continue
                    videos_in[summary.video.split] += 1
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
    os.replace(rejected_tmp, rejected_csv)
    shards = {split: len(writer.close()) for split, writer in writers.items()}
    manifest.close()
    write_json(out_dir / "classes.json", found.classes, indent=1, sort_keys=False,
               ensure_ascii=False)

    seconds = time.perf_counter() - start
    metrics = {
        "num_inputs": float(len(found.videos) + len(found.rejected)),
        "num_rejected": float(num_rejected),
        "num_clips": float(sum(clips.values())),
        **{f"clips_{split}": float(n) for split, n in clips.items()},
        **{f"videos_{split}": float(n) for split, n in videos_in.items()},
        **{f"shards_{split}": float(n) for split, n in shards.items()},
        "frames_decoded": float(frames_decoded),
        "seconds": seconds,
        "frames_per_second": frames_decoded / seconds if seconds > 0 else 0.0,
    }
    logger.log_metrics(metrics)
    logger.set_tag("prepare.out_dir", str(out_dir))
    logger.log_artifact(rejected_csv)
    logger.log_artifact(out_dir / "classes.json")
    if not metrics["num_clips"]:
        raise _no_clip_error(outcomes, int(metrics["num_inputs"]), params, rejected_csv)
    empty = [split for split in ("train", "test") if not clips[split]]
    if empty:  # nothing to train on, or nothing to evaluate: stop here, not stages later
        have = ", ".join(f"{videos_in[s]} {s}" for s in SPLITS)
        raise PrepareError(
            f"the {' and '.join(empty)} split got no clip (usable videos: {have}; unusable: "
            f"{rejected_csv}); add videos, or give splits that fill train and test")
    if not clips["val"]:  # the training stages then hold videos out of train (data.splits)
        print("prepare: the val split got no clip: validation holds out train videos",
              file=sys.stderr)
    return metrics


def _write_rejects(path: Path, rows: list[tuple[str, str]], more: list[VideoResult]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["source", "reason"])
        writer.writerows(rows)
        writer.writerows((r.video.source, r.rejected) for r in more)
    os.replace(tmp, path)


PATHS = {
    "listing": (None, "the listing stage's file the inputs must match (default: no check)"),
    "out": ("data/clips", "output folder"),
}


def summary(metrics: dict[str, float], args: argparse.Namespace) -> str:
    return (f"{int(metrics['num_clips'])} clips ({int(metrics['clips_train'])} train / "
            f"{int(metrics['clips_val'])} val / {int(metrics['clips_test'])} test), "
            f"{int(metrics['num_rejected'])} rejected (see {Path(args.out) / 'rejected.csv'}), "
            f"{metrics['frames_per_second']:.0f} frames/s → {args.out}")


def main(argv: list[str] | None = None) -> None:
    stage_main("prepare", __doc__, PATHS,
               lambda p, a, log: run(p["data"], p["prepare"], Path(a.out), log,
                                     listing=Path(a.listing) if a.listing else None),
               sections=("data", "prepare"), check=lambda p: check_params(p["prepare"]),
               summary=summary, argv=argv)


if __name__ == "__main__":
    main()
