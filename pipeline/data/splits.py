"""Splits by whole videos: the dataset's train / val / test, and the one hold-out rule.

**Dataset splits** (:func:`draw_splits`, used by ``prepare`` for every video whose source gives no
split: a folder, a manifest row with an empty split). Each video gets a number u in [0, 1) from a
stable hash of its key (its path relative to the folder), the same on any machine; the videos are
ordered by u and the first ``test_fraction`` of the unit interval goes to test, the next
``val_fraction`` to val, the rest to train, so adding a video never moves another one, except
that **every split gets at least one video**: when a split would be empty, the video(s) nearest
to its interval move into it (a folder of 17 videos at 10 % / 10 % gets one test video, not
none). Fewer than 3 videos cannot fill three splits: :class:`SplitError` names the counts.
Splits a source gives (the demo's, a manifest's) are kept as they are and count toward the
minimum.

**Hold-out** (:func:`holdout_mask`, :func:`holdout_keys`): when a stage needs validation items
and the data have no val split. Items (clips, annotated frames) are held out by *whole videos*, so
no held-out item shares a video (and, for overlapping clips, frames) with a training item. Videos
are drawn in a seeded random order until the held-out items reach ``fraction`` of all items; at
least one video always stays in training, and a single video is never split (nothing is held
out). The same ``(ids, fraction, seed)`` give the same split on any machine.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from pipeline.errors import UserError

SPLITS = ("train", "val", "test")


class SplitError(UserError, ValueError):
    """The videos cannot fill every split; one line with the counts and the fix."""


def hash_unit(key: str) -> float:
    """A stable number in [0, 1) from ``key`` (same key → same number, on any machine)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / 16**12


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise SplitError(
            f"data.val_fraction + data.test_fraction must be in [0, 1), got "
            f"{val_fraction} + {test_fraction}"
        )


def hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    """train / val / test of one key by its hash alone (no minimum per split)."""
    _check_fractions(val_fraction, test_fraction)
    u = hash_unit(key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def draw_splits(keys: Sequence[str], given: Sequence[str], val_fraction: float,
                test_fraction: float) -> list[str]:
    """The split of every video: ``given[i]`` when it names one, else drawn by hash (above).

    ``keys``: one stable key per video (unique); ``given``: "" where the source gives no split.
    Every split ends with at least one video; raises :class:`SplitError` when that is impossible.
    """
    _check_fractions(val_fraction, test_fraction)
    if len(keys) != len(given):
        raise ValueError(f"draw_splits: {len(keys)} keys but {len(given)} given splits")
    fixed = {s: sum(1 for g in given if g == s) for s in SPLITS}
    free = sorted((hash_unit(k), i) for i, (k, g) in enumerate(zip(keys, given)) if not g)
    u = [v for v, _ in free]
    n_test = sum(1 for v in u if v < test_fraction)
    n_val = sum(1 for v in u if test_fraction <= v < test_fraction + val_fraction)
    # the minimum of one video per split, taken from the neighbouring interval
    if fixed["test"] + n_test == 0 and len(u) > n_val + n_test:
        n_test = 1
    if fixed["val"] + n_val == 0 and len(u) > n_val + n_test:
        n_val = 1
    while fixed["train"] + len(u) - n_test - n_val == 0 and n_test + n_val > 0:
        if n_val >= n_test and fixed["val"] + n_val > 1:
            n_val -= 1
        elif fixed["test"] + n_test > 1:
            n_test -= 1
        else:
            break
    out = list(given)
    for rank, (_, i) in enumerate(free):
        out[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    counts = {s: sum(1 for o in out if o == s) for s in SPLITS}
    if min(counts.values()) == 0:
        have = ", ".join(f"{counts[s]} {s}" for s in SPLITS)
        if len(keys) < len(SPLITS):
            raise SplitError(f"{len(keys)} usable video(s) ({have}): every split (train, val, test) "
                             f"needs at least one video; add videos")
        raise SplitError(f"the splits would be {have}: every split needs at least one video; "
                         f"leave some manifest rows' split empty (drawn by hash) or give each "
                         f"split a video")
    return out


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
