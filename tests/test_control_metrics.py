"""The control metrics (pipeline/evaluation/control_metrics.py) point the right way on inputs whose
answer is known: a video that follows the asked trajectory scores a lower error than one that does
not, a gripper whose speed follows the demo's sound track is in sync and a reversed one is not,
and the demo world's motion classes are recovered from their trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.demo_scene import CLASSES, WorldConfig
from pipeline.data.demo_world import gripper_path, motion_sound, render_video
from pipeline.evaluation import control_metrics as cm

CFG = WorldConfig(num_frames=16)


def _path(label: int, seed: int) -> np.ndarray:
    """(16, 2) gripper positions of a demo video of class ``label`` (one per frame)."""
    return gripper_path(CFG, label, np.random.default_rng(seed))[:: CFG.substeps]


# --------------------------------------------------------------------------- trajectory error


def test_following_the_trajectory_beats_not_following_it():
    target = np.stack([_path(0, 1), _path(3, 2)])  # (B=2, n, 2)
    rng = np.random.default_rng(0)
    follows = target[:, None] + rng.normal(0, 0.5, (2, 3, 16, 2))  # estimator-like noise
    still = np.repeat(target[:, None, :1], 16, axis=2).repeat(3, axis=1)  # the first frame held
    other = np.stack([_path(1, 7), _path(2, 8)])[:, None].repeat(3, axis=1)
    e_follow, e_still, e_other = (cm.trajectory_error(p, target, 1).mean()
                                  for p in (follows, still, other))
    assert e_follow < 1.0 < 2 * e_follow < e_still
    assert e_follow < e_other


def test_trajectory_error_is_the_mean_distance_over_synthesized_frames_only():
    target = np.zeros((1, 4, 2))
    pred = np.zeros((1, 2, 4, 2))
    pred[0, 0, 1:] = [3.0, 4.0]  # 5 px off on frames 1-3
    pred[0, 1, 0] = [100.0, 0.0]  # off only on the given frame 0: not scored
    err = cm.trajectory_error(pred, target, first=1)
    np.testing.assert_allclose(err, [[5.0, 0.0]])
    with pytest.raises(ValueError):
        cm.trajectory_error(pred, target[:, :3], first=1)


# --------------------------------------------------------------------------- sound


def _sound(speed_per_frame: np.ndarray, onsets: np.ndarray | None = None) -> np.ndarray:
    """The demo world's track for a gripper speed profile (one value per frame)."""
    n = len(speed_per_frame)
    onsets = np.zeros(0, np.int64) if onsets is None else onsets
    samples = int(n / CFG.fps * CFG.audio_rate)
    return motion_sound(np.repeat(speed_per_frame, CFG.substeps), onsets, samples,
                        CFG.substeps * CFG.fps, CFG.audio_rate)


def test_loudness_envelope_follows_the_hum_and_ignores_a_click():
    speed = np.linspace(0.0, 4.0, 16)
    env = cm.loudness_envelope(_sound(speed), 16)
    assert env.shape == (16,) and np.all(np.diff(env[1:-1]) > 0)  # louder as the gripper speeds up
    clicked = cm.loudness_envelope(_sound(speed, onsets=np.array([4 * 5 + 1])), 16)
    rms = np.sqrt((_sound(speed, onsets=np.array([21])).reshape(16, -1) ** 2).mean(1))
    assert abs(clicked[5] - env[5]) < 0.1 * env[5]  # the median window ignores the click ...
    assert rms[5] > 1.5 * env[5]  # ... which the plain RMS of the frame counts as loudness


def test_a_gripper_that_moves_with_the_sound_is_in_sync_and_a_reversed_one_is_not():
    rng = np.random.default_rng(3)
    speed = 1.5 + 1.5 * np.sin(np.linspace(0, 2 * np.pi, 16)) ** 2  # speeds up and slows down
    env = cm.loudness_envelope(_sound(speed), 16)[None]  # (B=1, n)

    def walk(v: np.ndarray) -> np.ndarray:  # a path moving v[t] px from frame t to t + 1
        steps = v[:15, None] * np.array([np.cos(0.3), np.sin(0.3)])
        return np.concatenate([[[20.0, 20.0]], 20.0 + np.cumsum(steps, 0)])

    synced = np.stack([walk(speed) + rng.normal(0, 0.1, (16, 2)) for _ in range(3)])[None]
    reversed_ = np.stack([walk(speed.max() + speed.min() - speed) for _ in range(3)])[None]
    still = np.full((1, 3, 16, 2), 20.0)
    s_sync, s_rev, s_still = (cm.sound_sync(p, env, 1) for p in (synced, reversed_, still))
    assert s_sync.shape == (1, 3)
    assert s_sync.mean() > 0.8 and s_rev.mean() < -0.5
    np.testing.assert_array_equal(s_still, 0.0)  # a still video follows nothing


def test_the_real_demo_videos_are_in_sync_with_their_own_track():
    videos = [render_video(CFG, seed, label=1) for seed in range(3)]  # sweeps: speed varies
    xy = np.stack([v.positions for v in videos])[:, None]
    env = np.stack([cm.loudness_envelope(v.audio, 16) for v in videos])
    own = cm.sound_sync(xy, env, 1).mean()
    swapped = cm.sound_sync(xy, np.roll(env, 1, axis=0), 1).mean()
    assert own > 0.7 and own > swapped + 0.5


# --------------------------------------------------------------------------- class


@pytest.fixture(scope="module")
def classifier() -> cm.TrajectoryClassifier:
    xy = np.stack([_path(c, 100 + 10 * c + s) for c in range(len(CLASSES)) for s in range(10)])
    labels = np.repeat(np.arange(len(CLASSES)), 10)
    return cm.fit_trajectory_classifier(xy, labels, len(CLASSES))


def test_the_demo_classes_are_recovered_from_unseen_trajectories(classifier):
    xy = np.stack([_path(c, 900 + 10 * c + s) for c in range(len(CLASSES)) for s in range(6)])
    labels = np.repeat(np.arange(len(CLASSES)), 6)
    assert classifier.accuracy(xy, labels) >= 0.8  # chance: 0.2
    shuffled = np.random.default_rng(0).permutation(labels)
    assert classifier.accuracy(xy, shuffled) < 0.5


def test_class_accuracy_counts_samples_per_input(classifier):
    xy = np.stack([_path(1, 500), _path(2, 501)])  # a horizontal and a vertical sweep
    pred = np.stack([xy, xy[::-1]], axis=1)  # sample 0: right class, sample 1: the other one
    assert classifier.accuracy(pred, np.array([1, 2])) == pytest.approx(0.5)


def test_the_classifier_needs_two_classes():
    with pytest.raises(ValueError, match="2 classes"):
        cm.fit_trajectory_classifier(np.zeros((4, 16, 2)), np.zeros(4, np.int64), 5)


# --------------------------------------------------------------------------- per task


def test_control_reference_scores_the_real_clips_as_perfect_and_nothing_else(classifier):
    videos = [render_video(CFG, seed, label=seed % len(CLASSES)) for seed in range(4)]
    xy = np.stack([v.positions for v in videos]).astype(np.float64)
    env = np.stack([cm.loudness_envelope(v.audio, 16) for v in videos])
    ref = cm.ControlReference(xy, env, np.array([v.label for v in videos]), classifier)
    real = ref.score(xy[:, None], first=1)
    assert real["trajectory_error_px"] == 0.0
    assert real["sound_sync"] == pytest.approx(ref.real()["sound_sync"])
    assert real["class_accuracy"] == ref.real()["class_accuracy"]
    still = ref.score(np.repeat(xy[:, None, :1], 16, axis=2), first=1)
    assert still["trajectory_error_px"] > 5.0 and still["sound_sync"] == 0.0
    assert ref.rows(slice(0, 2)).trajectory.shape == (2, 16, 2)
    no_estimator = cm.ControlReference(None, None, None, None)
    assert no_estimator.score(None, 1) == {} and no_estimator.real() == {}


def test_fitting_with_jitter_keeps_noisy_trajectories_in_their_class(classifier):
    """On decoded frames the estimator jitters by pixels; the default fit (jittered copies,
    smoothing) holds up there, a fit on the clean trajectories alone does not as well."""
    xy = np.stack([_path(c, 100 + 10 * c + s) for c in range(len(CLASSES)) for s in range(10)])
    labels = np.repeat(np.arange(len(CLASSES)), 10)
    clean = cm.fit_trajectory_classifier(xy, labels, len(CLASSES), jitter=0.0, smooth_width=1)
    test = np.stack([_path(c, 900 + 10 * c + s) for c in range(len(CLASSES)) for s in range(6)])
    noisy = test[:, None] + np.random.default_rng(1).normal(0, 2.0, (len(test), 8, 16, 2))
    test_labels = np.repeat(np.arange(len(CLASSES)), 6)
    assert classifier.accuracy(noisy, test_labels) > clean.accuracy(noisy, test_labels) + 0.1
