"""The decoding processes of stage ``prepare``: ``workers`` decoders, this process and
``workers − 1`` forked processes (spawned off Linux), each running
:func:`pipeline.data.clip_extraction.process_video`. A decoding process sends back only its clips' sizes
and manifest rows; the parent, taking videos in input order, places each clip in a shard
(``ShardWriter.place``) and sends the placement back; the decoding process then writes the clip
there itself (``pwritev``), so no pixel passes through a pipe and the shards are byte-identical for
any ``workers``. At most ``2 × workers`` videos are in flight. Entry point: :func:`_decode_all`
(used by ``stages.prepare.run``, which re-exports these names).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.connection
import sys
from typing import Any, Iterator

from pipeline.data.clip_extraction import PrepareError, VideoSummary, process_video
from pipeline.params import PrepareParams
from pipeline.data.shard_writing import Placement, ShardWriter, sample_nbytes, write_placed
from pipeline.data.sources import VideoSource

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
