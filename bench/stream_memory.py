"""Benchmark of the training data path: the shard stream against loading the set in memory.

Writes N and 2N clip shards in the real on-disk format (``encode_sample``: a 16-frame 64×64 RGB
clip and its metadata, ~197 KB a sample, 8 MB shards), then, each in a fresh process so that the
peak RSS (``ru_maxrss``) is its own:

- ``stream``: :class:`pipeline.data.stream.ShardStream` (shuffle blocks of ``--shuffle`` samples,
  one item per clip: its frames as float32) batched by 8 for one epoch;
- ``memory``: what the stages did before streaming: every clip of the split decoded into a list
  (``iter_clips``), then random batches of 8 for as many items.

With ``--stage autoencoder`` the two paths are the autoencoder stage's own, with its params
(``params.yaml``: batch sizes, video steps, context frames): ``stream`` is
``pipeline.training.autoencoder.batches.clip_stream`` (the stage's ``ShardStream`` of
``ClipCrops`` items → ``ClipBatches``: image steps of frames with their context rows, video steps
of windows), ``memory`` what the stage did before: ``load_clips`` (every train clip stacked in
one array) then ``make_batch_stream`` over it; one epoch's worth of items (clip visits) each.

Reported per path and size: peak RSS (MB), samples/s (items: clips or clip visits), and the RSS
ratio 2N / N. Targets (issue #20): the stream's peak RSS grows ≤ 1.1× when the data double; its
samples/s is not lower than the in-memory path's at demo size. This measures the data path alone
(no model), which is what differs between the two; the stages add their model and optimizer,
the same on both paths.

    python -m bench.stream_memory                    # N = 200 clips (the demo's train split is ~190)
    python -m bench.stream_memory --clips 400 --shuffle 32
    python -m bench.stream_memory --stage autoencoder
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BATCH = 8


def _write(folder: Path, clips: int) -> None:
    from pipeline.data.shard_writing import ShardWriter, encode_sample

    rng = np.random.default_rng(0)
    with ShardWriter(folder / "train", 8 << 20) as writer:
        for i in range(clips):
            frames = rng.integers(0, 256, (16, 64, 64, 3), np.uint8)
            writer.write(encode_sample(f"v{i:05d}_0000", frames, {"i": i}))


def clip_item(sample, rng) -> list:
    return [sample["frames"].astype(np.float32) / 255.0]


def stack(items, step):
    import torch

    return torch.from_numpy(np.stack(items))


def _stream(folder: Path, shuffle: int) -> tuple[int, float]:
    from pipeline.data.shards import list_shards
    from pipeline.data.stream import FixedBatch, ShardStream

    urls = tuple(list_shards(folder, "train"))
    stream = ShardStream(urls, clip_item, stack, FixedBatch(BATCH), seed=0, shuffle=shuffle)
    return _one_epoch(stream(0), len)


def _one_epoch(it, items) -> tuple[int, float]:
    """(items, seconds) of a stream iterator's first epoch; ``items(batch)`` counts a batch's."""
    t0 = time.perf_counter()
    seen = 0
    for batch in it:
        seen += items(batch)
        if it.positions[0]["epoch"] > 0:
            break
    return seen, time.perf_counter() - t0


def _ae_params(shuffle: int):
    import dataclasses

    from pipeline.params import load_section

    params = load_section("autoencoder", Path(__file__).resolve().parents[1] / "params.yaml")
    return dataclasses.replace(params, loop=dataclasses.replace(params.loop, shuffle_block=shuffle))


def _batch_items(batch) -> int:
    return len(batch[0])  # ImageBatch.frames / VideoBatch.clips: one row per item


def _ae_stream(folder: Path, shuffle: int) -> tuple[int, float]:
    from pipeline.data.shards import list_shards
    from pipeline.training.autoencoder.batches import clip_stream

    stream = clip_stream(list_shards(folder, "train"), _ae_params(shuffle), (16, 64, 64), str(folder))
    return _one_epoch(stream(0), _batch_items)


def _ae_memory(folder: Path, shuffle: int) -> tuple[int, float]:
    from pipeline.training.autoencoder.batches import make_batch_stream
    from stages.autoencoder import load_clips

    params = _ae_params(shuffle)
    t0 = time.perf_counter()
    clips = load_clips(folder, "train").frames
    seen = 0
    for batch in make_batch_stream(clips, params, params.loop.seed)(0):
        seen += _batch_items(batch)
        if seen >= len(clips):
            break
    return seen, time.perf_counter() - t0


def _memory(folder: Path) -> tuple[int, float]:
    import torch

    from pipeline.data.shards import iter_clips

    t0 = time.perf_counter()
    clips = [s["frames"] for s in iter_clips(folder, "train")]
    rng = np.random.default_rng(0)
    seen = 0
    while seen < len(clips):
        pick = rng.integers(0, len(clips), BATCH)
        batch = torch.from_numpy(np.stack([clips[i].astype(np.float32) / 255.0 for i in pick]))
        seen += len(batch)
    return seen, time.perf_counter() - t0


def child(path: str, folder: str, shuffle: int, stage: str) -> None:
    if stage == "autoencoder":
        run = _ae_stream if path == "stream" else _ae_memory
        seen, secs = run(Path(folder), shuffle)
    else:
        seen, secs = _stream(Path(folder), shuffle) if path == "stream" else _memory(Path(folder))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(json.dumps({"seen": seen, "secs": secs, "rss_mb": rss}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--shuffle", type=int, default=16)
    parser.add_argument("--stage", choices=("generic", "autoencoder"), default="generic",
                        help="generic: one float clip per item; autoencoder: the AE stage's batches")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.shuffle, args.stage)
        return
    print(f"data path: {args.stage}, N = {args.clips}, shuffle block {args.shuffle}", flush=True)
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.clips, 2 * args.clips):
            _write(Path(tmp) / str(n), n)
        for n in (args.clips, 2 * args.clips):
            for path in ("memory", "stream"):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.stream_memory", "--shuffle", str(args.shuffle),
                     "--stage", args.stage, "--child", path, str(Path(tmp) / str(n))],
                    check=True, capture_output=True, text=True).stdout
                results[path, n] = r = json.loads(out.strip().splitlines()[-1])
                print(f"{path:6s} N={n:4d}: peak RSS {r['rss_mb']:7.0f} MB, "
                      f"{r['seen'] / r['secs']:7.1f} samples/s", flush=True)
    for path in ("memory", "stream"):
        a, b = results[path, args.clips], results[path, 2 * args.clips]
        print(f"{path}: RSS 2N/N = {b['rss_mb'] / a['rss_mb']:.2f}x")
    m, s = results["memory", args.clips], results["stream", args.clips]
    print(f"stream / memory samples/s at N: {(s['seen'] / s['secs']) / (m['seen'] / m['secs']):.2f}x")


if __name__ == "__main__":
    main()
