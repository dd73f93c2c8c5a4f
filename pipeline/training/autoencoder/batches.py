"""The autoencoder's training batches (§3.2 image steps, App. A video steps): ``ImageBatch``,
``VideoBatch``, which steps are video steps (``is_video_step``), and how clips become them.

One crop rule serves both data paths. A clip becomes a :class:`ClipItem` (``ClipCrops``): the
clip plus two draws from the clip's own generator: t, the frame an image step takes (with its
context rows), and t0, the start of the ``video_warmup + video_frames`` window a video step
takes. ``ClipBatches`` stacks items into the batch of a step (``ImageBatch`` on image steps,
``VideoBatch`` on video steps) and ``StepBatchSize`` says how many items a step takes
(``batch_size`` / ``video_batch_size``).

- **The stage** (:func:`clip_stream`) streams the prepare stage's clip shards through
  ``pipeline.data.stream.ShardStream``: shuffle blocks of ``training.shuffle_block`` clips,
  every clip once per epoch (one item, fresh draws each epoch: the generator is seeded by
  (seed, epoch, shard, sample)), split over ranks and ``training.data_workers``, exact resume at
  the position a checkpoint recorded. Memory: one shuffle block of clips per reader, whatever
  the dataset's size.
- **Tests and benches** (:func:`make_batch_stream`) draw from clips already in memory: the items
  of step s are clips drawn uniformly (with replacement) by a generator seeded by
  (seed, s, rank), so a resumed run sees the same batches; rank r draws from clips r, r + n, ….
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from ccvs_models.autoencoder import context_indices
from pipeline.data.stream import ShardStream
from pipeline.errors import StageError
from pipeline.params import AutoencoderParams
from pipeline.training import distributed


class ImageBatch(NamedTuple):
    frames: torch.Tensor  # uint8 (B, 1 + p, H, W, 3): x, then its p preceding frames, newest first


class VideoBatch(NamedTuple):
    clips: torch.Tensor  # uint8 (B, T, H, W, 3) consecutive frames x_0 … x_{T−1}


def is_video_step(step: int, video_every: int) -> bool:
    """Steps video_every − 1, 2·video_every − 1, … are video steps (0: never)."""
    return video_every > 0 and step % video_every == video_every - 1


class ClipItem(NamedTuple):
    """A training item: a whole clip and where each kind of step crops it."""

    frames: np.ndarray  # uint8 (T, H, W, 3)
    t: int  # the frame an image step takes
    t0: int  # the first frame of the window a video step takes


@dataclasses.dataclass(frozen=True)
class ClipCrops:
    """``to_items`` of the stream: a clip sample → one :class:`ClipItem` (none for a clip in
    ``exclude``, the held-out ones). t is uniform in [first, T), t0 in [0, T − window]. A clip of
    another shape than ``shape`` = (T, H, W) stops the stage naming it and ``where``."""

    shape: tuple[int, int, int]
    first: int  # the earliest frame an image step takes (so that its context exists)
    window: int  # frames of a video step's window (0: no video steps)
    where: str  # the clip folder, for errors
    exclude: frozenset[str] = frozenset()

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> list[ClipItem]:
        key = sample["key"]
        if key in self.exclude:
            return []
        frames = sample["frames"]
        if frames.dtype != np.uint8 or frames.shape != (*self.shape, 3):
            raise StageError(f"{self.where}: clip {key} has frames {frames.dtype} {frames.shape}, "
                             f"the first train clip uint8 {(*self.shape, 3)} (prepare writes "
                             f"clips of one size and length; re-run it)")
        num = self.shape[0]
        t = int(rng.integers(self.first, num))
        t0 = int(rng.integers(num - self.window + 1)) if self.window else 0
        return [ClipItem(frames, t, t0)]


@dataclasses.dataclass(frozen=True)
class ClipBatches:
    """``make_batch`` of the stream: items → the ``VideoBatch`` of a video step (each item's
    window from t0) or the ``ImageBatch`` of an image step (each item's frame t, then its
    context rows: the ``previous`` frames ``context_indices`` picks, newest first, the oldest
    repeated up to ``previous`` when fewer exist — identical contexts leave Eq. (9) unchanged)."""

    previous: int  # context frames an image step carries (0: self-supervised or no F)
    anchor: int  # model.context_anchor
    window: int
    video_every: int

    def __call__(self, items: Sequence[ClipItem], step: int) -> ImageBatch | VideoBatch:
        if is_video_step(step, self.video_every):
            return VideoBatch(torch.from_numpy(np.stack(
                [i.frames[i.t0 : i.t0 + self.window] for i in items])))
        return ImageBatch(torch.from_numpy(np.stack(
            [i.frames[_context_rows(i.t, self.previous, self.anchor)] for i in items])))


@dataclasses.dataclass(frozen=True)
class StepBatchSize:
    """``batch_size`` of the stream: ``video_batch_size`` items on video steps, else ``batch_size``."""

    batch_size: int
    video_batch_size: int
    video_every: int

    def __call__(self, step: int) -> int:
        return self.video_batch_size if is_video_step(step, self.video_every) else self.batch_size


def crop_rules(params: AutoencoderParams, shape: tuple[int, int, int], where: str,
               exclude: frozenset[str] = frozenset()
               ) -> tuple[ClipCrops, ClipBatches, StepBatchSize]:
    """The three pieces above for clips of ``shape`` = (T, H, W); a window longer than the clips
    is a ``ValueError`` naming the params."""
    c, anchor = params.model.context_frames, params.model.context_anchor
    previous = c if (c > 0 and not params.self_supervision) else 0
    num_frames = shape[0]
    window = params.video_warmup + params.video_frames if params.video_every else 0
    if window > num_frames:
        raise ValueError(f"video_warmup + video_frames = {window} is longer than the clips "
                         f"({num_frames} frames)")
    first = min(previous if not anchor else 1, num_frames - 1)
    return (ClipCrops(tuple(shape), first, window, where, exclude),  # type: ignore[arg-type]
            ClipBatches(previous, anchor, window, params.video_every),
            StepBatchSize(params.batch_size, params.video_batch_size, params.video_every))


def clip_stream(urls: Sequence[str], params: AutoencoderParams, shape: tuple[int, int, int],
                where: str, exclude: frozenset[str] = frozenset()) -> ShardStream:
    """``fit``'s batches streamed from the train clip shards ``urls`` (see the module doc);
    shuffle block, data workers and seed from ``params.loop``."""
    crops, batches, size = crop_rules(params, shape, where, exclude)
    loop = params.loop
    return ShardStream(tuple(urls), crops, batches, size, seed=loop.seed,
                       shuffle=loop.shuffle_block, workers=loop.data_workers)


def make_batch_stream(
    clips: np.ndarray, params: AutoencoderParams, seed: int
) -> Callable[[int], Iterator[ImageBatch | VideoBatch]]:
    """``make_batches(start_step)`` over clips in memory (tests, benches): the batch of step s
    depends on (seed, s, rank) only. clips: uint8 (N, T, H, W, 3); this rank draws from
    clips rank, rank + world, … Same items and batches as the stage's stream."""
    if clips.ndim != 5 or len(clips) == 0:
        raise ValueError(f"make_batch_stream: expected clips (N, T, H, W, 3), got {clips.shape}")
    crops, batches, size = crop_rules(params, clips.shape[1:4], "clips in memory")

    def stream(start: int) -> Iterator[ImageBatch | VideoBatch]:
        rank = distributed.rank()
        local = np.arange(len(clips))[rank :: max(distributed.world_size(), 1)]
        if len(local) == 0:
            local = np.arange(len(clips))
        step = start
        while True:
            rng = np.random.default_rng([seed, step, rank])
            idx = local[rng.integers(len(local), size=size(step))]
            items = [item for i in idx
                     for item in crops({"key": str(i), "frames": clips[i]}, rng)]
            yield batches(items, step)
            step += 1

    return stream


def _context_rows(t: int, c: int, anchor: int) -> np.ndarray:
    """Frame t then its c context frames (``context_indices``, newest first, the oldest repeated
    up to c; t = 0 repeats itself)."""
    if c == 0:
        return np.array([t])
    idx = context_indices(t, c, anchor)[::-1] or [t]
    return np.array([t] + idx + [idx[-1]] * (c - len(idx)))


__all__ = ["ClipBatches", "ClipCrops", "ClipItem", "ImageBatch", "StepBatchSize", "VideoBatch",
           "clip_stream", "crop_rules", "is_video_step", "make_batch_stream"]
