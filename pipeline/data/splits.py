"""The one hold-out rule: when a stage needs validation items and the data have no val split.

Items (clips, annotated frames) are held out by *whole videos*, so no held-out item shares a video
(and, for overlapping clips, frames) with a training item. Videos are drawn in a seeded random
order until the held-out items reach ``fraction`` of all items; at least one video always stays in
training, and a single video is never split (nothing is held out). The same ``(ids, fraction,
seed)`` give the same split on any machine.

The dataset's own splits (train / val / test) come from ``pipeline.data.sources``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def video_of_key(key: str) -> str:
    """The video id of a clip key ``<video-id>_<clip-index>`` (docs/CONTRACTS.md)."""
    return key.rsplit("_", 1)[0]


def holdout_mask(videos: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask over items (``videos[i]`` = the video of item i): True = held out.

    Whole videos in a seeded order until at least ``fraction`` of the items (at least one item
    when ``fraction`` > 0); never every video; all False for ``fraction`` ≤ 0 or a single video.
    """
    n = len(videos)
    held = np.zeros(n, dtype=bool)
    unique = sorted(set(videos))
    if fraction <= 0 or len(unique) < 2:
        return held
    target = max(1, int(round(fraction * n)))
    rng = np.random.default_rng([seed, 7])
    video_of = np.asarray(videos)
    for vid in rng.permutation(unique)[:-1]:  # at least one video stays in training
        if held.sum() >= target:
            break
        held |= video_of == vid
    return held


def holdout_keys(keys: Sequence[str], fraction: float = 0.1, seed: int = 0) -> set[str]:
    """The clip keys held out by :func:`holdout_mask` (clips grouped by their video)."""
    mask = holdout_mask([video_of_key(k) for k in keys], fraction, seed)
    return {k for k, m in zip(keys, mask) if m}
