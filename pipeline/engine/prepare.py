"""``prepare`` on a Dask cluster: the workers decode videos, this process writes the shards.

The worker function is the single-machine one (``pipeline.data.clip_extraction.process_video``:
decode, resize, cut clips, encode their tar members); only the distributor differs from
``pipeline.data.prepare_pool``. Results come back in input order and this process places each
clip in its shard (``ShardWriter.place``) and writes it, so the shards, the manifest and
``rejected.csv`` are byte-identical to a single-machine run with any number of workers. Pixels
travel from the workers to this process once (encoded members); memory holds at most
2 videos per worker.
"""

from __future__ import annotations

from typing import Any, Iterator

from pipeline.data.clip_extraction import VideoSummary, process_video
from pipeline.data.shard_writing import Placement, ShardWriter, write_placed
from pipeline.data.sources import VideoSource
from pipeline.engine.cluster import DaskEngine
from pipeline.params import PrepareParams


def decode_video(video: VideoSource, params: PrepareParams) -> tuple[VideoSummary, list[dict[str, Any]]]:
    """On a worker: one video → its summary (manifest rows, sizes, or why it was rejected) and
    its clips' encoded tar members."""
    result = process_video(video, params)
    samples = result.samples()
    return result.summary(samples), samples


def decode_on(engine: DaskEngine, videos: list[VideoSource], params: PrepareParams,
              writers: dict[str, ShardWriter]) -> Iterator[tuple[VideoSummary, list[Placement]]]:
    """What ``prepare_pool._decode_all`` yields (each video's summary and its clips' placements,
    in input order), with the decoding done by ``engine``'s workers."""
    for video, (summary, samples) in engine.ordered(decode_video, videos,
                                                    describe=lambda v: str(v.path),
                                                    shared=(params,)):
        writer = writers[video.split]
        placements = [writer.place(size) for size in summary.sizes]
        write_placed(placements, samples)
        for placement in placements:
            writer.done(placement)
        yield summary, placements
