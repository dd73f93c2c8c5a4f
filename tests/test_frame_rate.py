"""One frame rate for every video (pipeline.data.frame_rate), the timeline it reads
(media.probe(timeline=True), iter_frames(indices=...)) and the dataset splits drawn among the
usable videos (pipeline.data.splits.draw_splits)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from own_videos import encode, scene
from pipeline.data import media
from pipeline.data.frame_rate import is_whole, output_count, resample_indices, whole_rates
from pipeline.data.splits import SplitError, draw_splits, hash_split

# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("fps", [10, 25, 30000 / 1001, 30, 60])
def test_a_video_at_the_target_rate_maps_onto_itself(fps):
    exact = np.arange(50) / fps
    assert np.array_equal(resample_indices(exact, fps), np.arange(50))
    rounded = np.round(exact, 3)  # mp4 muxers keep 29.97 fps times to the millisecond
    assert np.array_equal(resample_indices(rounded, fps), np.arange(50))


def test_faster_sources_drop_frames_and_slower_ones_repeat_them():
    thirty = np.arange(60) / 30  # 2 s
    assert resample_indices(thirty, 10).tolist() == list(range(0, 60, 3))
    five = np.arange(10) / 5  # 2 s at 5 fps → 20 frames at 10 fps, each shown twice
    assert resample_indices(five, 10).tolist() == [i // 2 for i in range(20)]
    pal = np.arange(50) / 25  # 25 → 10: the nearest frame in time
    idx = resample_indices(pal, 10)
    assert len(idx) == 20 and np.all(np.abs(pal[idx] - np.arange(20) / 10) <= 0.5 / 25 + 1e-9)
    assert idx[1] == 2  # 0.1 s lies halfway between 0.08 and 0.12: a tie keeps the earlier


def test_variable_rate_follows_time_not_frame_count():
    times = np.array([0.0, 0.033, 0.066, 0.5, 0.52, 0.54, 1.0])  # a burst, a pause, a burst
    idx = resample_indices(times, 10)
    ticks = np.arange(len(idx)) / 10
    nearest = np.abs(times[None, :] - ticks[:, None]).argmin(axis=1)
    assert idx.tolist() == nearest.tolist()
    assert idx.tolist()[:6] == [0, 2, 2, 3, 3, 3]  # through the pause: the nearer frame
    assert np.all(np.diff(idx) >= 0)


def test_output_count_and_start_offset():
    assert output_count(np.arange(32) / 30, 10) == 11  # 32/30 s → frames at 0 … 1.0 s
    assert output_count(np.array([5.0]), 10) == 1
    shifted = 2.5 + np.arange(30) / 30  # a stream starting at 2.5 s: ticks count from its start
    assert resample_indices(shifted, 10).tolist() == list(range(0, 30, 3))
    with pytest.raises(ValueError):
        resample_indices(np.arange(3.0), 0)


def test_whole_samples_per_frame():
    assert is_whole(16000 / 10) and is_whole(48000 / 25) and not is_whole(16000 / 30)
    assert not is_whole(16000 / (30000 / 1001))
    assert 10 in whole_rates(16000) and 30 not in whole_rates(16000)


# --------------------------------------------------------------------------- timeline


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    times = [0, 33, 66, 166, 206, 246, 446, 479, 512, 545, 611, 677, 710, 743, 776, 826, 876]
    frames = scene(len(times), 32, 64, seed=1)
    path = encode(tmp_path_factory.mktemp("vfr") / "phone.mp4", frames, Fraction(30),
                  times_ms=times)
    return path, np.array(times) / 1000, frames


def test_probe_reads_the_frames_presentation_times(vfr):
    path, times, _ = vfr
    info = media.probe(path, timeline=True)
    np.testing.assert_allclose(info.frame_times, times, atol=1e-6)
    assert media.probe(path).frame_times is None  # only when asked: it reads every packet
    same, audio = media.probe_with_audio(path, audio_rate=8000, timeline=True)
    assert audio is None and np.array_equal(same.frame_times, info.frame_times)


@pytest.mark.parametrize("backend", media.available_backends())
def test_frames_picked_by_index_repeats_included(vfr, backend):
    path, _, _ = vfr
    every = np.concatenate(list(media.iter_frames(path, backend=backend)))
    picked = np.concatenate(list(media.iter_frames(path, indices=[0, 0, 3, 3, 3, 7, 16, 40],
                                                   chunk_size=3, backend=backend)))
    assert len(picked) == 7  # index 40 does not exist: dropped
    np.testing.assert_array_equal(picked, every[[0, 0, 3, 3, 3, 7, 16]])
    with pytest.raises(ValueError, match="non-decreasing"):
        next(media.iter_frames(path, indices=[3, 1], backend=backend))


# --------------------------------------------------------------------------- splits


def test_drawn_splits_follow_the_hash_when_every_split_is_filled():
    keys = [f"video_{i}.mp4" for i in range(200)]
    drawn = draw_splits(keys, [""] * 200, 0.1, 0.1)
    assert drawn == [hash_split(k, 0.1, 0.1) for k in keys]
    more = draw_splits(keys + ["new.mp4"], [""] * 201, 0.1, 0.1)
    assert more[:200] == drawn  # adding a video moves no other one


@pytest.mark.parametrize("n", [3, 4, 5, 7, 17])
def test_every_split_gets_a_video_from_three_on(n):
    keys = [f"clip {i}.mp4" for i in range(n)]
    drawn = draw_splits(keys, [""] * n, 0.1, 0.1)
    assert {s: drawn.count(s) >= 1 for s in ("train", "val", "test")} == {
        "train": True, "val": True, "test": True}
    assert drawn == draw_splits(list(keys), [""] * n, 0.1, 0.1)  # deterministic
    by_hash = [hash_split(k, 0.1, 0.1) for k in keys]
    assert sum(a != b for a, b in zip(drawn, by_hash)) <= 2  # only what fills an empty split moves


def test_too_few_videos_name_the_counts():
    with pytest.raises(SplitError, match=r"2 usable video\(s\) \(\d train, \d val, \d test\)"):
        draw_splits(["a", "b"], ["", ""], 0.1, 0.1)
    with pytest.raises(SplitError, match="in \\[0, 1\\)"):
        draw_splits(["a", "b", "c"], ["", "", ""], 0.5, 0.5)


def test_given_splits_are_kept_and_the_rest_fill_what_is_missing():
    keys = ["a", "b", "c", "d"]
    drawn = draw_splits(keys, ["train", "train", "", ""], 0.0, 0.0)
    assert drawn[:2] == ["train", "train"] and sorted(drawn[2:]) == ["test", "val"]
    with pytest.raises(SplitError, match="0 test"):
        draw_splits(keys, ["train", "train", "val", "val"], 0.1, 0.1)
