"""Does a control steer? Metrics of each control on synthesized videos (the ``evaluate`` stage).

The paper measures controls by image quality: Table 3's "+ state" and "+ end frame" rows (SSIM,
FVD), Table D4's control-point consistency (C.P.C.: SSIM of the last synthesized frame with the
real end frame), Table D3's sound ablation. On the demo world a control can be checked directly,
because what it asks for is known:

- **state** (§4 state-conditioned BAIR): the position estimator of App. A, run on the SYNTHESIZED
  frames, gives the trajectory the video shows; ``trajectory_error`` is its mean distance in
  pixels to the trajectory that was asked for (the real clip's), over the synthesized frames.
  Plain prediction is the reference: the same error without the control.
- **end frame** (App. E point-to-point, Table D4 C.P.C.): SSIM/PSNR of the frame at the end
  frame's index against the real end frame (the stage scores it from its per-frame scores);
  prediction's frame at the same index is the reference.
- **sound** (§4 AudioSet-Drums; the demo's track is a hum whose loudness and pitch follow the
  gripper's speed, plus clicks when a push starts: ``pipeline.data.demo_world.motion_sound``):
  ``sound_sync`` is the Pearson correlation, over one video's frame intervals, between the speed
  of the synthesized gripper (from its estimated trajectory, smoothed) and the track's loudness envelope
  (``loudness_envelope``: per interval the median RMS of short windows, so a 40 ms click does not
  count as motion). The real clips' own correlation is the ceiling; prediction's is the floor.
- **class** (App. E Weizmann / UCF-101): a small softmax regression on shape features of the
  trajectory (``trajectory_features``), fitted on the real train clips' trajectories and their
  labels (``fit_trajectory_classifier``), recovers the class a synthesized video moves like;
  ``class_accuracy`` is how often that is the class that was asked for. Chance is 1 / K; the
  classifier's accuracy on the real clips is the ceiling (and on the clips' own decoded tokens,
  the ``reconstruction`` task, the ceiling through the autoencoder).

Everything here is model-free maths on numpy arrays (the classifier is a fitted linear map); the
stage runs the estimator and passes trajectories in.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

# --------------------------------------------------------------------------- trajectories


def trajectory_error(pred: np.ndarray, target: np.ndarray, first: int) -> np.ndarray:
    """pred (B, S, n, 2) estimated positions of S samples per input, target (B, n, 2) the asked-for
    trajectory (pixels) → (B, S) mean Euclidean distance over frames t ≥ ``first`` (the synthesized
    ones)."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.ndim != 4 or target.shape != (pred.shape[0], pred.shape[2], 2):
        raise ValueError(f"trajectory_error: pred (B, S, n, 2) and target (B, n, 2), got "
                         f"{pred.shape} and {target.shape}")
    if not 0 <= first < pred.shape[2]:
        raise ValueError(f"trajectory_error: first = {first} leaves no frame of {pred.shape[2]}")
    d = np.linalg.norm(pred[:, :, first:] - target[:, None, first:], axis=-1)
    return d.mean(axis=-1)


def speed(xy: np.ndarray) -> np.ndarray:
    """(..., n, 2) positions → (..., n − 1) pixels moved from frame t to t + 1."""
    return np.linalg.norm(np.diff(np.asarray(xy, np.float64), axis=-2), axis=-1)


def smooth(xy: np.ndarray, width: int) -> np.ndarray:
    """(..., n, 2) → the same, each position averaged with up to ``width`` // 2 neighbours on
    either side, as many on both sides (fewer near the ends, none at the ends), so a motion at
    constant velocity is left as it is: the estimator jitters on blurry decoded frames, which
    speeds (``sound_sync``) and velocity signs (the class features) would read as motion."""
    xy = np.asarray(xy, np.float64)
    n = xy.shape[-2]
    if width <= 1 or n < 3:
        return xy
    cs = np.concatenate([np.zeros_like(xy[..., :1, :]), np.cumsum(xy, axis=-2)], axis=-2)
    i = np.arange(n)
    half = np.minimum(np.minimum(i, n - 1 - i), width // 2)
    return (cs[..., i + half + 1, :] - cs[..., i - half, :]) / (2 * half + 1)[:, None]


# --------------------------------------------------------------------------- sound


def loudness_envelope(audio: np.ndarray, num_frames: int, windows: int = 8) -> np.ndarray:
    """audio (..., samples) of a clip of ``num_frames`` frames → (..., num_frames) loudness per
    frame interval [t, t + 1): the median RMS of ``windows`` equal windows inside the interval
    (a short click raises one window, not the median; the hum's loudness follows the speed)."""
    a = np.asarray(audio, np.float64)
    per = a.shape[-1] // num_frames
    if per < windows:
        raise ValueError(f"loudness_envelope: {a.shape[-1]} samples for {num_frames} frames "
                         f"leave fewer than {windows} samples per frame")
    seg = a[..., : per * num_frames].reshape(*a.shape[:-1], num_frames, windows, per // windows)
    return np.median(np.sqrt((seg ** 2).mean(axis=-1)), axis=-1)


def pearson(a: np.ndarray, b: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """Pearson correlation along the last axis (broadcast); NaN where either side is constant."""
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a ** 2).sum(-1) * (b ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > eps, (a * b).sum(-1) / np.maximum(den, eps), np.nan)


def sound_sync(pred: np.ndarray, envelope: np.ndarray, first: int,
               smooth_width: int = 5) -> np.ndarray:
    """pred (B, S, n, 2) estimated positions, envelope (B, n) loudness per frame interval → (B, S)
    Pearson correlation of the gripper's speed with the loudness over the intervals [t, t + 1)
    that end on a synthesized frame (t ≥ first − 1). The speed is taken on the trajectory
    ``smooth``-ed over ``smooth_width`` frames: a speed is a difference of two estimates, and on
    the demo's blurry decoded frames their jitter drowned it (on the 24 test clips' own decoded
    tokens: 0.16 unsmoothed, 0.38 over 5 frames; the real frames 0.74 / 0.76; the decoded clips
    against another clip's track −0.08 / −0.21). A video whose gripper does not move (constant speed, e.g. identical frames) scores 0:
    it follows nothing of the track."""
    v = speed(smooth(pred, smooth_width))  # (B, S, n − 1), interval t = frame t → t + 1
    lo = max(first - 1, 0)
    e = np.asarray(envelope, np.float64)[:, None, lo:v.shape[-1]]
    return np.nan_to_num(pearson(v[..., lo:], e), nan=0.0)


# --------------------------------------------------------------------------- class

FEATURES = ("abs_dx", "abs_dy", "mean_turn", "abs_turn", "straightness", "drift_y", "drift_x",
            "flips_x", "flips_y", "speed_cv", "extent_x", "extent_y", "speed")


def trajectory_features(xy: np.ndarray, moving: float = 0.3, speed_scale: float = 3.0) -> np.ndarray:
    """(..., n, 2) positions in pixels → (..., len(FEATURES)) shape features of the motion, mostly
    scale-free (ratios to the path length or mean speed): how much of the motion is along x and
    along y, the mean signed and absolute turning angle between successive steps (over steps that
    move ≥ ``moving`` px), the straightness and the x / y drift (net displacement over path),
    how often the x and y velocities change sign, the speed's coefficient of variation, the x and
    y extents over the path, and the mean speed / ``speed_scale``. Circles turn steadily, sweeps
    move along one axis and flip, zigzags drift along y while flipping along x, random walks
    do none of these consistently."""
    xy = np.asarray(xy, np.float64)
    v = np.diff(xy, axis=-2)
    s = np.linalg.norm(v, axis=-1)
    mean_s = s.mean(-1) + 1e-6
    path = s.sum(-1) + 1e-6
    angle = np.arctan2(v[..., 1], v[..., 0])
    turn = np.angle(np.exp(1j * (angle[..., 1:] - angle[..., :-1])))
    ok = (s[..., 1:] > moving) & (s[..., :-1] > moving)
    count = np.maximum(ok.sum(-1), 1)
    net = xy[..., -1, :] - xy[..., 0, :]
    flips = (np.diff(np.sign(v), axis=-2) != 0).mean(-2)  # (..., 2)
    feats = [np.abs(v[..., 0]).mean(-1) / mean_s, np.abs(v[..., 1]).mean(-1) / mean_s,
             np.abs(np.where(ok, turn, 0).sum(-1) / count), np.where(ok, np.abs(turn), 0).sum(-1) / count,
             np.linalg.norm(net, axis=-1) / path, np.abs(net[..., 1]) / path, np.abs(net[..., 0]) / path,
             flips[..., 0], flips[..., 1], s.std(-1) / mean_s,
             np.ptp(xy[..., 0], axis=-1) / path, np.ptp(xy[..., 1], axis=-1) / path,
             mean_s / speed_scale]
    return np.stack(feats, axis=-1)


@dataclasses.dataclass(frozen=True)
class TrajectoryClassifier:
    """Softmax regression on standardized ``trajectory_features`` of smoothed trajectories."""

    mean: np.ndarray  # (F,) feature means of the training trajectories
    scale: np.ndarray  # (F,) feature standard deviations
    weight: np.ndarray  # (F, K)
    bias: np.ndarray  # (K,)
    frames: int  # trajectory length it was fitted on
    smooth: int  # moving-average width applied before the features

    @property
    def num_classes(self) -> int:
        return int(self.bias.shape[0])

    def predict(self, xy: np.ndarray) -> np.ndarray:
        """(..., n, 2) trajectories → (...,) class ids."""
        z = (trajectory_features(smooth(xy, self.smooth)) - self.mean) / self.scale
        return np.argmax(z @ self.weight + self.bias, axis=-1)

    def accuracy(self, xy: np.ndarray, labels: np.ndarray) -> float:
        """Share of trajectories (B, ..., n, 2) classified as their input's label, labels (B,)."""
        pred = self.predict(xy)
        lab = np.asarray(labels).reshape(np.shape(labels) + (1,) * (pred.ndim - np.ndim(labels)))
        return float((pred == lab).mean())


def fit_trajectory_classifier(xy: np.ndarray, labels: np.ndarray, num_classes: int,
                              l2: float = 1e-2, jitter: float = 2.0, copies: int = 4,
                              smooth_width: int = 3, seed: int = 0) -> TrajectoryClassifier:
    """Fit on real trajectories xy (N, n, 2) with labels (N,) in [0, num_classes): L-BFGS on the
    L2-regularized cross-entropy, float64, from zeros. The real trajectories are used as they are
    and ``copies`` more times with Gaussian ``jitter`` (pixels, seeded): the estimator is less
    sure of itself on synthesized frames than on real ones (on the demo's blurry decoded frames
    it is off by 1–7 px per frame), and a classifier fitted on clean trajectories only reads
    that jitter as turns and flips. Needs ≥ 2 classes present."""
    xy, labels = np.asarray(xy, np.float64), np.asarray(labels, np.int64)
    if xy.ndim != 3 or xy.shape[-1] != 2 or len(xy) != len(labels):
        raise ValueError(f"fit_trajectory_classifier: xy (N, n, 2) and labels (N,), got "
                         f"{xy.shape} and {labels.shape}")
    if len(np.unique(labels)) < 2:
        raise ValueError("fit_trajectory_classifier: the trajectories carry fewer than 2 classes")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"fit_trajectory_classifier: labels outside [0, {num_classes})")
    rng = np.random.default_rng(seed)
    noisy = [xy + rng.normal(0.0, jitter, xy.shape) for _ in range(copies if jitter > 0 else 0)]
    feats = trajectory_features(smooth(np.concatenate([xy, *noisy]), smooth_width))
    labels = np.tile(labels, 1 + len(noisy))
    mean, scale = feats.mean(0), feats.std(0) + 1e-6
    x = torch.from_numpy((feats - mean) / scale)
    y = torch.from_numpy(labels)
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return TrajectoryClassifier(mean, scale, w.detach().numpy().copy(), b.detach().numpy().copy(),
                                frames=xy.shape[1], smooth=smooth_width)


# --------------------------------------------------------------------------- per task


@dataclasses.dataclass(frozen=True)
class ControlReference:
    """What the controls asked for, per evaluated input (B of them), and how to check it."""

    trajectory: np.ndarray | None  # (B, n, 2) the real clips' trajectories (None: no estimator)
    envelope: np.ndarray | None  # (B, n) loudness per frame interval (None: no sound)
    labels: np.ndarray | None  # (B,) class ids
    classifier: TrajectoryClassifier | None  # None: no labelled train trajectories

    def rows(self, idx: slice) -> ControlReference:
        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return ControlReference(pick(self.trajectory), pick(self.envelope), pick(self.labels),
                                self.classifier)

    def real(self) -> dict[str, float]:
        """The same measures on the real clips (the ceilings): sound sync and class accuracy."""
        out: dict[str, float] = {}
        if self.trajectory is None:
            return out
        real = self.trajectory[:, None]
        if self.envelope is not None:
            out["sound_sync"] = _nanmean(sound_sync(real, self.envelope, 1))
        if self.classifier is not None and self.labels is not None:
            out["class_accuracy"] = self.classifier.accuracy(
                self.trajectory[:, : self.classifier.frames], self.labels)
        return out

    def score(self, pred: np.ndarray | None, first: int) -> dict[str, float]:
        """pred (B, S, n, 2) estimated trajectories of the synthesized videos (None: no estimator)
        → ``trajectory_error_px``, ``sound_sync``, ``class_accuracy`` (those it can measure)."""
        if pred is None or self.trajectory is None:
            return {}
        n = pred.shape[2]
        target = self.trajectory[:, :n]
        out = {"trajectory_error_px": float(trajectory_error(pred, target, first).mean())}
        if self.envelope is not None and n >= 3:
            out["sound_sync"] = _nanmean(sound_sync(pred, self.envelope[:, :n], first))
        c = self.classifier
        if c is not None and self.labels is not None and n >= c.frames:
            out["class_accuracy"] = c.accuracy(pred[:, :, : c.frames], self.labels)
        return out


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
