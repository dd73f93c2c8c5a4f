"""Training data as a stream of webdataset shards: shuffle blocks, a rank × worker split, exact resume.

Every training stage reads its training set through :class:`ShardStream`, never the whole set in
memory: memory holds one shuffle block per reader, whatever the dataset's size.

**Order.** Epoch e visits the shards in an order shuffled by (seed, e), the same on every rank.
A reader (one DataLoader worker of one rank; consumer c of C = world size × workers) takes every
C-th shard of that order when there are at least C shards, else every shard and every C-th sample
of the epoch (sample g of the epoch's order, g mod C = c; the shards' sample counts are read from
their tar headers once), so no reader idles on a one-shard split.
A stage turns each sample into training items (``to_items``: the windows, frames or patches of
a clip; its randomness is seeded by (seed, epoch, shard, sample), so it does not depend on who
reads the sample). Items are shuffled in blocks: the items of ``shuffle`` consecutive samples are
collected, permuted with a generator seeded by (seed, epoch, reader, block) and emitted; then the
next block. Batches are consecutive items (``make_batch(items, step)``; ``batch_size(step)`` items
for the batch of training step ``step``).

**Position.** After each batch the reader's position is a plain dict ``{"epoch", "shard",
"sample", "block", "offset"}``: the epoch, where the current block starts (its shard's position
in the reader's list, the sample index in that shard), the block's number and how many of its
items were emitted. Resuming at a position reopens that shard, reads past the samples before it
without decoding them, rebuilds the block (same samples, same seeds → same items, same
permutation) and skips ``offset`` items: the resumed stream is the uninterrupted one, exactly.
``pipeline.training.loop.fit`` saves every rank's position in its checkpoints
(``stream_state``) and hands it back on resume.

**Workers.** With ``workers`` > 0 a rank reads through a ``torch.utils.data.DataLoader`` of that
many processes, each a reader of its own; the loader takes batches from them in turn, so batch k
of the rank comes from worker k mod W. The rank's position is every worker's position and which
worker is next; a resumed loader's worker w plays worker (next + w) mod W, so the order of batches
continues exactly. Changing ``workers`` or the world size changes the split (a resumed run then
restarts the stream at the checkpoint's step from a fresh order, with a warning from ``fit``).

Bad data stop the stream with one line naming the shard (:class:`pipeline.data.shard_writing.ShardError`)
or the URL (:class:`pipeline.data.storage.StorageError`); a reader that has no sample at all (more
readers than samples) is an error naming the split's size.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset

from pipeline.data.shards import count_samples, iter_shard
from pipeline.errors import UserError

ItemFn = Callable[[dict[str, Any], np.random.Generator], Sequence[Any]]
BatchFn = Callable[[list[Any], int], Any]


class StreamError(UserError, ValueError):
    """The stream cannot be read as asked (no samples for a reader, no items at all)."""


def start_position() -> dict[str, int]:
    return {"epoch": 0, "shard": 0, "sample": 0, "block": 0, "offset": 0}


def epoch_order(count: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The shards' order in ``epoch`` (the same on every rank)."""
    order = list(range(count))
    if shuffle:
        random.Random(f"{seed}-shards-{epoch}").shuffle(order)
    return order


class _Reader:
    """A reader's samples in one epoch from a position: (sample, shard position, sample index)."""

    def __init__(self, urls: Sequence[str], mine: list[int], offsets: list[int] | None,
                 consumer: int, consumers: int, shard: int, sample: int):
        self.urls, self.mine, self.offsets = urls, mine, offsets
        self.consumer, self.consumers = consumer, consumers
        self.shard, self.sample = shard, sample  # where the next sample is looked for
        self._it: Iterator[dict[str, Any]] | None = None

    def _select(self, start: int) -> Callable[[int], bool]:
        if self.offsets is None:  # whole shards per reader
            return lambda i: i >= start
        first, c, n = self.offsets[self.shard], self.consumer, self.consumers
        return lambda i: i >= start and (first + i) % n == c

    def next(self) -> tuple[dict[str, Any], int] | None:
        """The next sample of this reader and its shard's number; None at the end of the epoch.
        ``shard`` / ``sample`` then point past it."""
        while self.shard < len(self.mine):
            number = self.mine[self.shard]
            if self._it is None:
                self._it = iter_shard(self.urls[number], select=self._select(self.sample))
            sample = next(self._it, None)
            if sample is None:
                self._it = None
                self.shard, self.sample = self.shard + 1, 0
                continue
            self.sample = sample["index"] + 1
            return sample, number
        return None

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]
            self._it = None


def reader_items(urls: Sequence[str], consumer: int, consumers: int, seed: int, shuffle: int,
                 to_items: ItemFn, position: dict[str, int] | None = None
                 ) -> Iterator[tuple[Any, dict[str, int]]]:
    """Endless (item, position after it) of reader ``consumer`` of ``consumers`` (see module doc)."""
    if not urls:
        raise StreamError("no shards to stream")
    pos = dict(position or start_position())
    epoch = pos["epoch"]
    fresh = pos == start_position()
    by_shard = len(urls) >= consumers
    counts = None if by_shard else [count_samples(u) for u in urls]
    while True:
        order = epoch_order(len(urls), seed, epoch, shuffle > 0)
        mine = order[consumer::consumers] if by_shard else order
        offsets = None if counts is None else list(np.cumsum([0] + [counts[i] for i in order]))
        reader = _Reader(urls, mine, offsets, consumer, consumers, pos["shard"], pos["sample"])
        block, offset, produced, samples = pos["block"], pos["offset"], 0, 0
        try:
            while True:
                start = (reader.shard, reader.sample)
                items: list[Any] = []
                taken = 0
                while taken < max(shuffle, 1):
                    got = reader.next()
                    if got is None:
                        break
                    sample, number = got
                    rng = np.random.default_rng([seed, epoch, number, sample["index"]])
                    items.extend(to_items(sample, rng))
                    taken += 1
                samples += taken
                if taken == 0:
                    break
                if shuffle > 1:
                    random.Random(f"{seed}-block-{epoch}-{consumer}-{block}").shuffle(items)
                for k in range(offset, len(items)):
                    produced += 1
                    yield items[k], {"epoch": epoch, "shard": start[0], "sample": start[1],
                                     "block": block, "offset": k + 1}
                block, offset = block + 1, 0
        finally:
            reader.close()
        if fresh and samples == 0:
            raise StreamError(
                f"reader {consumer} of {consumers} (ranks × data workers) has no sample in "
                f"{len(urls)} shard(s): fewer samples than readers; use fewer "
                f"training.data_workers or ranks")
        if fresh and produced == 0:
            raise StreamError(f"{samples} samples in {len(urls)} shard(s) gave no training item "
                              f"(first shard {urls[0]})")
        epoch += 1
        pos = {**start_position(), "epoch": epoch}
        fresh = True


def reader_batches(urls: Sequence[str], consumer: int, consumers: int, seed: int, shuffle: int,
                   to_items: ItemFn, make_batch: BatchFn, batch_size: Callable[[int], int],
                   steps: Iterator[int], position: dict[str, int] | None = None
                   ) -> Iterator[tuple[Any, dict[str, int]]]:
    """(batch, position after it) for each training step of ``steps`` this reader serves."""
    items = reader_items(urls, consumer, consumers, seed, shuffle, to_items, position)
    for step in steps:
        chunk, where = [], position or start_position()
        for _ in range(batch_size(step)):
            item, where = next(items)
            chunk.append(item)
        yield make_batch(chunk, step), where


@dataclasses.dataclass(frozen=True)
class FixedBatch:
    """``batch_size`` of a stream whose every step takes the same number of items."""

    size: int

    def __call__(self, step: int) -> int:
        return self.size


@dataclasses.dataclass(frozen=True)
class ShardStream:
    """``make_batches(start_step, state=None)`` for ``pipeline.training.loop.fit`` over shards.

    urls: the split's shards (``pipeline.data.shards.list_shards``); to_items / make_batch /
    batch_size: the stage's (module-level functions or dataclass instances, so DataLoader workers
    can receive them); shuffle: samples per shuffle block (0 = shard order, no shuffling);
    workers: DataLoader worker processes per rank (0 = read in the training process).
    """

    urls: tuple[str, ...]
    to_items: ItemFn
    make_batch: BatchFn
    batch_size: Callable[[int], int]
    seed: int
    shuffle: int
    workers: int = 0

    takes_state = True  # fit hands back the positions it checkpointed

    def __call__(self, start: int, state: dict[str, Any] | None = None) -> "StreamIterator":
        import torch.distributed as dist

        on = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if on else (0, 1)
        if state is not None and state.get("workers") != self.workers:
            state = None  # another split: a fresh order from here (fit warns when world changes)
        return StreamIterator(self, rank, world, start, state)


class StreamIterator:
    """The batches of one rank from step ``start``; ``state_dict()`` is its position after the
    last batch taken (what ``fit`` checkpoints)."""

    def __init__(self, spec: ShardStream, rank: int, world: int, start: int,
                 state: dict[str, Any] | None):
        self.spec, self.rank, self.world = spec, rank, world
        w = max(spec.workers, 1)
        self.positions: list[dict[str, int] | None] = list(state["positions"]) if state else [None] * w
        self.next_worker = int(state["next"]) if state else 0
        if spec.workers == 0:
            steps = _count(start, 1)
            self._it = (
                (batch, 0, where) for batch, where in reader_batches(
                    spec.urls, rank, world, spec.seed, spec.shuffle, spec.to_items,
                    spec.make_batch, spec.batch_size, steps, self.positions[0]))
        else:
            self._it = _loader(spec, rank, world, start, self.next_worker, self.positions)

    def __iter__(self) -> "StreamIterator":
        return self

    def __next__(self) -> Any:
        batch, worker, where = next(self._it)
        self.positions[worker] = where
        self.next_worker = (worker + 1) % max(self.spec.workers, 1)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"workers": self.spec.workers, "next": self.next_worker,
                "positions": [dict(p) if p else None for p in self.positions]}


def _count(start: int, stride: int) -> Iterator[int]:
    step = start
    while True:
        yield step
        step += stride


class _Workers(IterableDataset):
    """The DataLoader dataset of ``_loader``: each worker process reads as worker
    (rotation + its id) mod W of the rank, the batches of every W-th step from ``start``."""

    def __init__(self, spec: ShardStream, rank: int, world: int, start: int, rotation: int,
                 positions: list[dict[str, int] | None]):
        self.spec, self.rank, self.world = spec, rank, world
        self.start, self.rotation, self.positions = start, rotation, positions

    def __iter__(self) -> Iterator[tuple[Any, int, dict[str, int]]]:
        from torch.utils.data import get_worker_info

        spec, w = self.spec, get_worker_info().id
        u = (self.rotation + w) % spec.workers  # the worker this loader process plays
        steps = _count(self.start + w, spec.workers)
        for batch, where in reader_batches(spec.urls, self.rank * spec.workers + u,
                                           self.world * spec.workers, spec.seed, spec.shuffle,
                                           spec.to_items, spec.make_batch, spec.batch_size, steps,
                                           self.positions[u]):
            yield batch, u, where


def _loader(spec: ShardStream, rank: int, world: int, start: int, rotation: int,
            positions: list[dict[str, int] | None]) -> Iterator[tuple[Any, int, dict[str, int]]]:
    """Batches from ``spec.workers`` DataLoader processes, in turn: (batch, worker, position)."""
    dataset = _Workers(spec, rank, world, start, rotation, positions)
    loader = DataLoader(dataset, batch_size=None, num_workers=spec.workers, prefetch_factor=2)
    for batch, u, where in loader:
        yield batch, int(u), {k: int(v) for k, v in where.items()}
