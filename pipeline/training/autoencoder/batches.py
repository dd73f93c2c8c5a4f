"""The autoencoder's training batches (§3.2 image steps, App. A video steps): ``ImageBatch``,
``VideoBatch``, which steps are video steps (``is_video_step``) and the deterministic batch
stream ``make_batch_stream`` that ``pipeline.training.loop.fit`` draws from.

Data: the train clips are loaded into memory once (the demo's ~100 clips of 16×64×64×3 bytes
take 20 MB; a large dataset needs a streaming reader instead). Under DDP rank r trains on clips
r, r + n, … (``distributed.shard``). ``make_batches(start_step)`` draws the clips and frames of
step s from a generator seeded by (seed, s, rank), so a resumed run sees the same batches.

``pipeline.training.autoencoder.task`` re-exports every name, so ``from pipeline.training.autoencoder.task import ...`` keeps
working.
"""

from __future__ import annotations

from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from ccvs_models.autoencoder import context_indices
from pipeline.training import distributed
from pipeline.params import AutoencoderParams


class ImageBatch(NamedTuple):
    frames: torch.Tensor  # uint8 (B, 1 + p, H, W, 3): x, then its p preceding frames, newest first


class VideoBatch(NamedTuple):
    clips: torch.Tensor  # uint8 (B, T, H, W, 3) consecutive frames x_0 … x_{T−1}


def is_video_step(step: int, video_every: int) -> bool:
    """Steps video_every − 1, 2·video_every − 1, … are video steps (0: never)."""
    return video_every > 0 and step % video_every == video_every - 1


def make_batch_stream(
    clips: np.ndarray, params: AutoencoderParams, seed: int
) -> Callable[[int], Iterator[ImageBatch | VideoBatch]]:
    """``make_batches(start_step)`` for ``fit``: the batch of step s depends on (seed, s, rank) only.

    clips: uint8 (N, T, H, W, 3), all train clips; this rank uses ``distributed.shard`` of them.
    Image steps draw ``batch_size`` frames (clip and time uniformly; with context from the clip,
    the c frames ``context_indices`` picks ride along: the c preceding ones, or with an anchor the
    clip's first frames and the latest ones, repeated to c when fewer exist — identical
    contexts leave Eq. (9) unchanged); video steps draw ``video_batch_size`` windows of
    ``video_warmup + video_frames`` consecutive frames.
    """
    if clips.ndim != 5 or len(clips) == 0:
        raise ValueError(f"make_batch_stream: expected clips (N, T, H, W, 3), got {clips.shape}")
    c, anchor = params.model.context_frames, params.model.context_anchor
    previous = c if (c > 0 and not params.self_supervision) else 0
    num_frames = clips.shape[1]
    window = params.video_warmup + params.video_frames
    if params.video_every and window > num_frames:
        raise ValueError(f"video_warmup + video_frames = {window} is longer than the clips "
                         f"({num_frames} frames)")

    def stream(start: int) -> Iterator[ImageBatch | VideoBatch]:
        rank = distributed.rank()
        local = np.arange(len(clips))[rank :: max(distributed.world_size(), 1)]
        if len(local) == 0:
            local = np.arange(len(clips))
        step = start
        while True:
            rng = np.random.default_rng([seed, step, rank])
            if is_video_step(step, params.video_every):
                idx = local[rng.integers(len(local), size=params.video_batch_size)]
                t0 = rng.integers(num_frames - window + 1, size=len(idx))
                windows = np.stack([clips[i, s : s + window] for i, s in zip(idx, t0)])
                yield VideoBatch(torch.from_numpy(windows))
            else:
                idx = local[rng.integers(len(local), size=params.batch_size)]
                first = min(previous if not anchor else 1, num_frames - 1)
                t = rng.integers(first, num_frames, size=len(idx))
                rows = [_context_rows(int(tt), previous, anchor) for tt in t]
                frames = np.stack([clips[i, r] for i, r in zip(idx, rows)])
                yield ImageBatch(torch.from_numpy(frames))
            step += 1

    return stream


def _context_rows(t: int, c: int, anchor: int) -> np.ndarray:
    """Frame t then its c context frames (``context_indices``, newest first, the oldest repeated
    up to c; t = 0 repeats itself)."""
    if c == 0:
        return np.array([t])
    idx = context_indices(t, c, anchor)[::-1] or [t]
    return np.array([t] + idx + [idx[-1]] * (c - len(idx)))


__all__ = ["ImageBatch", "VideoBatch", "is_video_step", "make_batch_stream"]
