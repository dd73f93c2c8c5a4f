"""One frame rate for every video: which source frame is shown at each tick of the target rate.

The paper's datasets each come at one fixed rate (§4 "Datasets"; BAIR, Kinetics, AudioSet-Drums
and App. E's), and every later stage assumes one: the sound patches tie ``cols_per_frame`` STFT
columns to a frame (App. A "Sound autoencoder"), T's time positions count frames. A folder of
ordinary videos mixes 25, 29.97 and 30 fps, and phones record variable frame rates, so
``prepare`` resamples every video to ``prepare.fps`` by time:

    output frame k is shown at  t_k = t_0 + k / fps      (t_0: the first frame's time)
    and holds the source frame whose presentation time is nearest to t_k (ties: the earlier one),

for every ``t_k`` before the end of the last source frame (its time + the median frame gap),
rounded to the nearest whole frame. A video already at ``fps`` maps onto itself (even when its
container rounds times to the millisecond, as mp4 muxers do for 29.97 fps); a slower source
repeats frames, a faster one drops them, a variable-rate one is sampled by when its frames were
shown, not by their count. Nothing is interpolated: every output frame is a real frame.

Audio keeps its own clock (``pipeline.data.media``: sample 0 at time 0 of the file); a clip's
audio starts at ``t_k`` of its first frame and lasts ``clip_length · frame_step / fps`` seconds,
which is a whole number of samples only when ``audio_rate / fps`` is one (:func:`is_whole`;
``prepare`` checks it).
"""

from __future__ import annotations

import numpy as np

_WHOLE = 1e-6  # tolerance of "a whole number" for rates given as decimals (29.97)
_TIE = 1e-9  # seconds: two frames this close to equidistant from a tick are a tie


def output_count(times: np.ndarray, fps: float) -> int:
    """Frames at ``fps`` in a video whose frames are shown at ``times`` (seconds, ascending)."""
    times = np.asarray(times, dtype=np.float64)
    if times.size == 0:
        return 0
    gap = float(np.median(np.diff(times))) if times.size > 1 else 1.0 / fps
    duration = times[-1] + gap - times[0]
    return max(1, int(np.floor(duration * fps + 0.5)))


def resample_indices(times: np.ndarray, fps: float) -> np.ndarray:
    """int64 (K,): the source frame shown at each output tick t_k = times[0] + k / fps.

    ``times``: presentation times (seconds, ascending, unique) of the source frames. The result
    is non-decreasing; at the source's own rate it is ``0, 1, …, len(times) − 1``.
    """
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"times must be a non-empty 1-D array, got shape {times.shape}")
    ticks = times[0] + np.arange(output_count(times, fps)) / fps
    right = np.clip(np.searchsorted(times, ticks, side="left"), 1, times.size - 1) \
        if times.size > 1 else np.zeros(ticks.size, np.int64)
    if times.size == 1:
        return right.astype(np.int64)
    left = right - 1
    nearer_left = (ticks - times[left]) <= (times[right] - ticks) + _TIE  # a tie: the earlier
    return np.where(nearer_left, left, right).astype(np.int64)


def is_whole(value: float) -> bool:
    """``value`` is a whole number (up to the rounding of a decimal rate)."""
    return abs(value - round(value)) <= _WHOLE * max(1.0, abs(value))


def whole_rates(audio_rate: int, candidates: range = range(1, 121)) -> list[int]:
    """Integer frame rates in ``candidates`` that give a whole number of samples per frame."""
    return [f for f in candidates if audio_rate % f == 0]


__all__ = ["is_whole", "output_count", "resample_indices", "whole_rates"]
