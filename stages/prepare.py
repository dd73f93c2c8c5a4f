"""Stage ``prepare``: decode videos and cut them into clip shards (the paper's §4 data setup).

The paper trains on fixed-length clips (16 frames for the BAIR/Kinetics tables, §4) at a fixed
square resolution (64×64 or 256×256), with audio for AudioSet-Drums, annotated arm positions for
BAIR (the 500 hand-labelled frames) and layouts for Cityscapes (App. E). This stage turns any set
of videos (``pipeline.sources``: the demo world, a folder/glob, a manifest CSV) into exactly that:

1. decode each video (``pipeline.media``: decord, PyAV fallback) keeping every ``frame_step``-th
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
3. write webdataset shards per split (``pipeline.shards``), ``manifest.parquet`` (one row per
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

    python -m stages.prepare --params params.yaml --out data/clips
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.atomic import write_json
from pipeline.media import MediaError, iter_frames, probe, probe_with_audio, read_audio
from pipeline.params import DataParams, ParamsError, PrepareParams, load_section
from pipeline.shards import Placement, ShardWriter, encode_sample, sample_nbytes, write_placed
from pipeline.sources import SPLITS, SourceError, VideoSource, list_sources

MANIFEST_COLUMNS = (
    "key", "video_id", "split", "label", "label_id", "shard", "first_frame", "num_frames",
    "frame_step", "fps", "has_audio", "has_positions", "has_layout", "source",
)  # fmt: skip
_CHUNK = 64  # frames decoded (at native size) at a time


class PrepareError(RuntimeError):
    """The stage cannot go on (bad params, nothing usable); one line."""


# --------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class Crop:
    """Resize-short-side-then-center-crop as one source box: ``box`` (x0, y0, x1, y1) in source
    pixels (edges), mapped onto ``size`` × ``size`` output pixels with scale ``scale``."""

    box: tuple[float, float, float, float]
    scale: float
    size: int

    @classmethod
    def center(cls, height: int, width: int, size: int) -> "Crop":
        short = min(height, width)
        x0, y0 = (width - short) / 2, (height - short) / 2
        return cls((x0, y0, x0 + short, y0 + short), size / short, size)

    @property
    def identity(self) -> bool:
        return self.box == (0, 0, self.size, self.size)

    def image(self, array: np.ndarray, resample: int) -> np.ndarray:
        """(H, W[, 3]) uint8 → (size, size[, 3])."""
        if self.identity:
            return array
        out = Image.fromarray(array).resize((self.size, self.size), resample, box=self.box)
        return np.asarray(out)

    def frames(self, batch: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 → (n, size, size, 3), bilinear (antialiased when shrinking)."""
        if self.identity:
            return batch
        return np.stack([self.image(f, Image.BILINEAR) for f in batch])

    def layouts(self, batch: np.ndarray) -> np.ndarray:
        """(n, H, W) uint8 class maps → (n, size, size), nearest (no new class values)."""
        if self.identity:
            return batch
        return np.stack([self.image(f, Image.NEAREST) for f in batch])

    def points(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) pixel-centre coordinates (x right, y down) → output pixel coordinates."""
        origin = np.array(self.box[:2], dtype=np.float64)
        return ((xy + 0.5 - origin) * self.scale - 0.5).astype(np.float32)


# --------------------------------------------------------------------------- one video


@dataclasses.dataclass
class Clip:
    """One clip of a video: where it starts among the kept frames, and what comes with it."""

    key: str  # <video_id>_<clip:04d>
    start: int  # index of its first frame in VideoResult.frames
    audio: np.ndarray | None  # float32 (samples,) at audio_rate, or None when audio is off
    positions: np.ndarray  # float32 (T, 2), NaN where not annotated
    meta: dict[str, Any]  # the sample's json
    row: dict[str, Any]  # its manifest row (without the shard, known once written)


@dataclasses.dataclass
class VideoResult:
    """What decoding one input gives: the processed frames (held once, not once per overlapping
    clip) and its clips; or a rejection."""

    video: VideoSource
    rejected: str | None = None
    frames: np.ndarray | None = None  # uint8 (N, S, S, 3), the kept frames after resize/crop
    layout: np.ndarray | None = None  # uint8 (N, S, S) when the video has layouts
    clips: list[Clip] = dataclasses.field(default_factory=list)
    clip_length: int = 0
    frames_decoded: int = 0

    def samples(self) -> list[dict[str, Any]]:
        """The encoded sample of each clip; arrays are views, serialised when written."""
        out = []
        for clip in self.clips:
            window = slice(clip.start, clip.start + self.clip_length)
            out.append(encode_sample(
                clip.key,
                self.frames[window],
                clip.meta,
                audio=clip.audio,
                positions=clip.positions,
                layout=None if self.layout is None else self.layout[window],
            ))  # fmt: skip
        return out

    def summary(self, samples: list[dict[str, Any]]) -> "VideoSummary":
        """What the parent needs to place the clips (no pixels)."""
        return VideoSummary(
            self.video, self.rejected, self.frames_decoded, [c.row for c in self.clips],
            [sample_nbytes(sample) for sample in samples],
        )  # fmt: skip


@dataclasses.dataclass
class VideoSummary:
    """A decoded video as the parent sees it: rows and byte sizes of its clips, or a rejection."""

    video: VideoSource
    rejected: str | None
    frames_decoded: int
    rows: list[dict[str, Any]]  # manifest rows, without the shard
    sizes: list[int]  # bytes each clip's sample takes in a shard


def clip_starts(num_kept: int, clip_length: int, clip_stride: int) -> list[int]:
    """Start indices (in kept frames) of every full clip."""
    return list(range(0, num_kept - clip_length + 1, clip_stride))


def _load_layout(path: str, num_frames: int, height: int, width: int) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            layout = archive["layout"]
    except (OSError, KeyError, ValueError) as err:
        raise MediaError(path, f"cannot read the layout file ({err})") from None
    if layout.ndim != 3 or layout.dtype != np.uint8:
        raise MediaError(path, f"layout must be uint8 (T, H, W), got {layout.dtype} {layout.shape}")
    if layout.shape[0] < num_frames:
        raise MediaError(path, f"layout has {layout.shape[0]} frames, the video {num_frames}")
    if layout.shape[1] * width != layout.shape[2] * height:
        raise MediaError(
            path, f"layout is {layout.shape[1]}x{layout.shape[2]}, the video {height}x{width}"
        )
    return layout


def _positions(video: VideoSource, num_kept: int, step: int, crop: Crop) -> np.ndarray:
    """(num_kept, 2) float32 positions in output pixels, NaN where not annotated."""
    out = np.full((num_kept, 2), np.nan, np.float32)
    for frame, x, y in video.positions:
        if frame % step == 0 and frame // step < num_kept:
            out[frame // step] = crop.points(np.array([[x, y]]))[0]
    return out


def process_video(video: VideoSource, params: PrepareParams) -> VideoResult:
    """Decode ``video`` and cut it into clips (runs in a decoding process).

    Any problem with the input (unreadable, too short, no audio when required, a bad layout
    file) becomes ``VideoResult.rejected``, a one-line reason.
    """
    try:
        return _process(video, params)
    except MediaError as err:
        return VideoResult(video, rejected=err.problem if err.path == video.path else str(err))


def _process(video: VideoSource, p: PrepareParams) -> VideoResult:
    audio = None
    if p.audio and p.decoder != "decord":  # probe and audio in one opening of the file (PyAV)
        info, audio = probe_with_audio(video.path, audio_rate=p.audio_rate)
    else:
        info = probe(video.path)
    need = (p.clip_length - 1) * p.frame_step + 1
    if info.num_frames < need:
        return VideoResult(video, rejected=_too_short(info.num_frames, need, p))

    crop = Crop.center(info.height, info.width, p.resolution)
    expected = -(-info.num_frames // p.frame_step)
    chunks = iter_frames(
        video.path, frame_step=p.frame_step, chunk_size=_batch_frames(expected, crop),
        backend=p.decoder, threads=1, info=info,
    )  # fmt: skip
    frames = _gather((crop.frames(chunk) for chunk in chunks), expected)
    num_kept = len(frames)
    starts = clip_starts(num_kept, p.clip_length, p.clip_stride)
    if not starts:  # the container over-counted its frames
        return VideoResult(video, rejected=_too_short((num_kept - 1) * p.frame_step + 1, need, p))

    per_clip = 0
    if p.audio:
        if p.decoder == "decord":
            audio = read_audio(video.path, audio_rate=p.audio_rate, backend=p.decoder, info=info)
        if audio is None and p.missing_audio == "reject":
            return VideoResult(video, rejected="no audio track (prepare.missing_audio: reject)")
        per_clip = int(round(p.clip_length * p.frame_step * p.audio_rate / info.fps))

    layout = None
    if video.layout_path:
        raw = _load_layout(video.layout_path, info.num_frames, info.height, info.width)
        layout = Crop.center(raw.shape[1], raw.shape[2], p.resolution).layouts(
            raw[: num_kept * p.frame_step : p.frame_step]
        )
    positions = _positions(video, num_kept, p.frame_step, crop)

    result = VideoResult(
        video, frames=frames, layout=layout, clip_length=p.clip_length, frames_decoded=num_kept
    )
    for index, start in enumerate(starts):
        first = start * p.frame_step
        key = f"{video.video_id}_{index:04d}"
        clip_audio = None
        if p.audio:
            clip_audio = np.zeros(per_clip, np.float32)
            if audio is not None:
                begin = max(int(round((info.start_time + first / info.fps) * p.audio_rate)), 0)
                piece = audio[begin : begin + per_clip]
                clip_audio[: len(piece)] = piece
        clip_pos = positions[start : start + p.clip_length]
        meta = {
            "video_id": video.video_id,
            "source": video.source,
            "split": video.split,
            "label": video.label,
            "label_id": video.label_id,
            "fps": info.fps / p.frame_step,
            "first_frame": first,
            "frame_step": p.frame_step,
            "audio_rate": p.audio_rate if p.audio else 0,
            "audio_silent": bool(p.audio and audio is None),
            "resolution": p.resolution,
        }
        row = {
            "key": key,
            "video_id": video.video_id,
            "split": video.split,
            "label": video.label,
            "label_id": video.label_id,
            "first_frame": first,
            "num_frames": p.clip_length,
            "frame_step": p.frame_step,
            "fps": info.fps / p.frame_step,
            "has_audio": bool(p.audio and audio is not None),
            "has_positions": bool(np.isfinite(clip_pos).any()),
            "has_layout": layout is not None,
            "source": video.source,
        }
        result.clips.append(Clip(key, start, clip_audio, clip_pos, meta, row))
    return result


def _batch_frames(expected: int, crop: Crop) -> int:
    """Frames decoded at a time: all of them when they are already at the output size (the decoded
    batch is then the video's frames, with no copy into a gathered array: ~5 % of the stage's
    CPU in ``bench/prepare.py``), else ``_CHUNK`` (native-size frames held only a chunk at a time)."""
    return max(expected, _CHUNK) if crop.identity else _CHUNK


def _gather(chunks: Iterator[np.ndarray], expected: int) -> np.ndarray:
    """Chunks of frames → one array: the chunk itself when it holds the whole video, else the
    chunks copied once into an array sized from the container's count (grown if it under-counted)."""
    frames, count = None, 0
    for chunk in chunks:
        if frames is None and len(chunk) >= expected:
            frames, count = chunk, len(chunk)
            continue
        if frames is None or count + len(chunk) > len(frames):
            grown = np.empty((max(expected, 2 * count, count + len(chunk)), *chunk.shape[1:]), chunk.dtype)
            if count:
                grown[:count] = frames[:count]
            frames = grown
        frames[count : count + len(chunk)] = chunk
        count += len(chunk)
    if frames is None:  # pragma: no cover - iter_frames raises MediaError first
        raise RuntimeError("no frames to gather")
    return frames[:count]


def _too_short(frames: int, need: int, p: PrepareParams) -> str:
    noun = "frame" if frames == 1 else "frames"
    return (
        f"too short: {frames} {noun}, a clip needs {need} "
        f"(clip_length {p.clip_length} × frame_step {p.frame_step})"
    )


# --------------------------------------------------------------------------- decoding, writing


def _start_method() -> str:
    """``fork`` on Linux: a worker starts in milliseconds instead of re-importing av/decord/numpy
    (``spawn`` costs ~1 s per worker, as much as decoding a dozen small videos). The workers only
    decode files and write bytes, so they need none of the parent's threads or locks.
    Elsewhere (macOS, Windows) the platform's safe default, ``spawn``."""
    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


def _place(summary: VideoSummary, writers: dict[str, ShardWriter]) -> list[Placement]:
    writer = writers[summary.video.split]
    return [writer.place(size) for size in summary.sizes]


def _decode_all(
    videos: list[VideoSource], params: PrepareParams, writers: dict[str, ShardWriter]
) -> Iterator[tuple[VideoSummary, list[Placement]]]:
    """Decode ``videos`` and write their clips into ``writers`` (one per split); yield, in input
    order, each video's summary and its clips' placements (their shards)."""
    if params.workers <= 1 or len(videos) <= 1:
        for video in videos:
            result = process_video(video, params)
            samples = result.samples()
            summary = result.summary(samples)
            placements = _place(summary, writers)
            write_placed(placements, samples)
            for placement in placements:
                writers[video.split].done(placement)
            yield summary, placements
        return
    pool = _Pool(params)
    try:
        yield from pool.run(videos, writers)
    finally:
        pool.close()


def _runs(placements: list[Placement]) -> list[tuple[Placement, int]]:
    """Placements as (first, count) runs of consecutive samples in one shard (a short message)."""
    runs: list[list[Any]] = []
    for placement in placements:
        if runs and runs[-1][0].path == placement.path:
            runs[-1][1] += 1
        else:
            runs.append([placement, 1])
    return [(first, count) for first, count in runs]


def _expand(runs: list[tuple[Placement, int]], samples: list[dict[str, Any]]) -> list[Placement]:
    """Inverse of :func:`_runs`, given the samples (whose sizes set the offsets)."""
    out: list[Placement] = []
    sizes = iter(sample_nbytes(sample) for sample in samples)
    for first, count in runs:
        offset = first.offset
        for _ in range(count):
            size = next(sizes)
            out.append(first._replace(offset=offset, size=size))
            offset += size
    return out


def _worker(conn: Any, params: PrepareParams, parent_end: Any = None) -> None:
    """A decoding process. Messages in: ``("task", i, video)`` (decode it, keep its encoded
    samples, answer ``("result", i, VideoSummary)``), ``("place", i, runs)`` (write the kept
    samples of video i there, answer ``("written", i)``), ``("stop",)``. An unexpected error is
    answered with ``("error", i, message)``. ``parent_end``, the parent's end of the pipe that a
    forked process inherits, is closed at once: if the parent dies (a decoder crash in it, a
    kill), reading then ends (EOF) instead of waiting forever."""
    if parent_end is not None:
        parent_end.close()
    kept: dict[int, list[dict[str, Any]]] = {}
    index = -1
    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                return
            index = message[1]
            if message[0] == "task":
                result = process_video(message[2], params)
                samples = result.samples()
                if samples:
                    kept[index] = samples
                conn.send(("result", index, result.summary(samples)))
            else:
                samples = kept.pop(index)
                write_placed(_expand(message[2], samples), samples)
                conn.send(("written", index))
    except (EOFError, KeyboardInterrupt):  # the parent is gone, or Ctrl-C (the parent handles it)
        return
    except BaseException as err:  # a bug or a write error: tell the parent, in one line
        try:
            conn.send(("error", index, " ".join(f"{type(err).__name__}: {err}".split())))
        except OSError:
            pass


@dataclasses.dataclass
class _Worker:
    process: Any
    conn: Any
    tasks: list[int] = dataclasses.field(default_factory=list)  # videos sent, not yet answered
    kept: set[int] = dataclasses.field(default_factory=set)  # videos decoded, not yet written


class _Pool:
    """``workers`` decoders: this process and ``workers − 1`` forked decoding processes. The
    parent decodes the next video whenever no child has an answer pending, after giving each
    child a second video queued, so no child waits for the parent to finish; at most
    ``2 × workers`` videos lie between the oldest not yet placed and the newest started."""

    def __init__(self, params: PrepareParams):
        method = _start_method()
        context = multiprocessing.get_context(method)
        self.params = params
        self.workers: list[_Worker] = []
        for _ in range(params.workers - 1):
            mine, theirs = context.Pipe()
            inherited = mine if method == "fork" else None
            process = context.Process(target=_worker, args=(theirs, params, inherited), daemon=True)
            process.start()
            theirs.close()
            self.workers.append(_Worker(process, mine))
        self.finished = False

    def run(
        self, videos: list[VideoSource], writers: dict[str, ShardWriter]
    ) -> Iterator[tuple[VideoSummary, list[Placement]]]:
        by_conn = {worker.conn: worker for worker in self.workers}
        arrived: dict[int, VideoSummary] = {}  # decoded, waiting for their turn
        unwritten: dict[int, tuple[ShardWriter, list[Placement]]] = {}
        owner: dict[int, _Worker | None] = {}  # None: decoded by this process
        own: dict[int, list[dict[str, Any]]] = {}  # this process's samples, waiting for their turn
        started = placed = 0
        window = 2 * (len(self.workers) + 1)

        def give(queued: int) -> None:  # the next videos to the children holding < queued
            nonlocal started
            for worker in self.workers:
                while len(worker.tasks) < queued and started < limit:
                    worker.tasks.append(started)
                    owner[started] = worker
                    self._send(worker, ("task", started, videos[started]), videos)
                    started += 1

        while placed < len(videos) or unwritten:
            limit = min(len(videos), placed + window)
            give(1)  # an idle child first
            mine = started < limit  # a video this process can decode now
            ready = multiprocessing.connection.wait(list(by_conn), timeout=0 if mine else None)
            for conn in ready:
                worker = by_conn[conn]
                try:
                    kind, index, *payload = conn.recv()
                except (EOFError, OSError):
                    raise PrepareError(self._crashed(worker, videos)) from None
                if kind == "result":
                    arrived[index] = payload[0]
                    worker.tasks.remove(index)
                elif kind == "written":
                    writer, placements = unwritten.pop(index)
                    for placement in placements:
                        writer.done(placement)
                    worker.kept.discard(index)
                else:
                    raise PrepareError(f"{videos[index].path}: {payload[0]}")
            if mine and not ready:  # decode the next video here, each child one more queued
                index, started = started, started + 1
                owner[index] = None
                give(2)
                result = process_video(videos[index], self.params)
                own[index] = result.samples()
                arrived[index] = result.summary(own[index])
            while placed in arrived:
                summary = arrived.pop(placed)
                placements = _place(summary, writers)
                worker = owner.pop(placed)
                if worker is None:
                    write_placed(placements, own.pop(placed))
                    for placement in placements:
                        writers[summary.video.split].done(placement)
                elif placements:
                    unwritten[placed] = (writers[summary.video.split], placements)
                    worker.kept.add(placed)
                    self._send(worker, ("place", placed, _runs(placements)), videos)
                yield summary, placements
                placed += 1
        self.finished = True

    def _send(self, worker: _Worker, message: tuple, videos: list[VideoSource]) -> None:
        try:
            worker.conn.send(message)
        except OSError:  # a broken pipe: the process is gone
            raise PrepareError(self._crashed(worker, videos)) from None

    @staticmethod
    def _crashed(worker: _Worker, videos: list[VideoSource]) -> str:
        worker.process.join(timeout=1)  # reap it, for its exit code
        held = sorted(worker.kept | set(worker.tasks))
        names = ", ".join(str(videos[i].path) for i in held) or "(no video)"
        code = worker.process.exitcode
        return f"a decoding process crashed (exit code {code}) while reading or writing: {names}"

    def close(self) -> None:
        """Stop the processes: politely after a complete run, at once after an error."""
        for worker in self.workers:
            if self.finished:
                try:
                    worker.conn.send(("stop",))
                except OSError:
                    pass
            else:
                worker.process.terminate()
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():  # pragma: no cover - a stuck decoder
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


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
    listing = list_sources(data)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (sections data, prepare)")
    parser.add_argument("--out", default="data/clips", help="output folder")
    args = parser.parse_args(argv)
    try:
        data = load_section("data", args.params)
        prepare = load_section("prepare", args.params)
        check_params(prepare)
    except ParamsError as err:
        raise SystemExit(f"prepare: {err}") from None
    from pipeline.tracking import stage_run

    with stage_run("prepare", {"data": data, "prepare": prepare}, params_path=args.params) as logger:
        try:
            metrics = run(data, prepare, Path(args.out), logger)
        except (ParamsError, SourceError, PrepareError) as err:
            raise SystemExit(f"prepare: {err}") from None
    print(
        f"prepare: {int(metrics['num_clips'])} clips "
        f"({int(metrics['clips_train'])} train / {int(metrics['clips_val'])} val / "
        f"{int(metrics['clips_test'])} test), {int(metrics['num_rejected'])} rejected "
        f"(see {Path(args.out) / 'rejected.csv'}), {metrics['frames_per_second']:.0f} frames/s "
        f"→ {args.out}"
    )


if __name__ == "__main__":
    main()
