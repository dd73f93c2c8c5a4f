"""A procedurally rendered robot-pushing world: the embedded demo dataset.

It stands in for BAIR robot pushing (paper §4, "BAIR"; App. A "Position estimator") so the
whole pipeline runs with no download. Each video shows a textured table seen from above, a
dark gripper on an arm reaching in from the top edge, and 2–4 coloured discs and boxes that
the gripper pushes when it touches them; the arm passes over objects, so there are occlusions
and, as objects are pushed away, disocclusions. Every video also carries what the paper's
conditioning signals need:

- ``positions`` (T, 2): the gripper's (x, y) per frame — pixel coordinates, x to the right,
  y down, origin at the centre of the top-left pixel (docs/CONTRACTS.md) — the ground truth
  behind §4's position-conditioned synthesis (the paper hand-annotates 500 BAIR frames);
- ``layout`` (T, H, W): semantic layouts, 0 background, 1 gripper (head and arm), 2.. objects
  (App. E, layout-conditioned synthesis);
- ``audio``: a motor hum whose pitch and loudness follow the gripper's speed, plus a click when
  it starts pushing an object (the sound-conditioned synthesis of §4 / App. A "Sound autoencoder");
- ``label``: the motion pattern that shaped the trajectory (class-conditioned synthesis).

Rendering is numpy only: shapes are signed distance fields turned into anti-aliased coverage,
composited over the table. One ``(config, seed)`` pair always gives the same arrays.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "sweep_horizontal", "sweep_vertical", "zigzag", "random_walk")

# Saturated object colours (RGB in [0, 1]), far from the gripper's dark grey.
_PALETTE = np.array(
    [
        [0.86, 0.18, 0.16],  # red
        [0.15, 0.62, 0.25],  # green
        [0.16, 0.38, 0.86],  # blue
        [0.95, 0.80, 0.15],  # yellow
        [0.95, 0.50, 0.10],  # orange
        [0.60, 0.25, 0.80],  # purple
        [0.10, 0.72, 0.78],  # cyan
    ],
    dtype=np.float32,
)
_LIGHT = np.array([-0.6, -0.8], dtype=np.float32)  # light comes from the upper left (x, y)
_STEEL = np.array([1.0, 1.0, 1.07], dtype=np.float32)  # the gripper's slightly bluish grey


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Size and dynamics of the demo world. Lengths are given for a 64-pixel frame and scaled."""

    resolution: int = 64  # frames are resolution × resolution (even, for H.264)
    num_frames: int = 32  # T, frames per video
    fps: int = 10  # frames per second (sets the audio length: num_frames / fps seconds)
    min_objects: int = 2  # objects per video are drawn in [min_objects, max_objects]
    max_objects: int = 4
    audio_rate: int = 16000  # audio samples per second
    min_speed: float = 1.5  # gripper speed range in pixels per frame (at 64 px)
    max_speed: float = 3.0
    gripper_radius: float = 4.5  # radius of the gripper head (at 64 px)
    arm_width: float = 1.6  # half-width of the arm (at 64 px)
    object_radius: tuple[float, float] = (4.0, 6.5)  # object size range (at 64 px)
    margin: float = 8.0  # the gripper stays this far inside the frame (at 64 px)
    substeps: int = 4  # physics / audio steps per frame (pushes cannot tunnel through objects)

    def __post_init__(self) -> None:
        if self.resolution < 16 or self.resolution % 2:
            raise ValueError(f"resolution must be an even number >= 16, got {self.resolution}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if not 0 <= self.min_objects <= self.max_objects <= len(_PALETTE):
            raise ValueError(
                f"need 0 <= min_objects <= max_objects <= {len(_PALETTE)}, "
                f"got {self.min_objects}, {self.max_objects}"
            )
        if self.fps <= 0 or self.audio_rate <= 0 or self.substeps <= 0:
            raise ValueError("fps, audio_rate and substeps must be positive")

    @property
    def scale(self) -> float:
        return self.resolution / 64.0


@dataclasses.dataclass(frozen=True)
class DemoVideo:
    """One rendered video with its ground truth."""

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    audio: np.ndarray  # float32 (num_frames / fps * audio_rate,) mono in [-1, 1]
    positions: np.ndarray  # float32 (T, 2) gripper head centre (x, y) in pixels
    layout: np.ndarray  # uint8 (T, H, W): 0 background, 1 gripper, 2 + i object i
    label: int  # index into CLASSES
    object_positions: np.ndarray  # float32 (T, N, 2) object centres (x, y)
    contacts: np.ndarray  # bool (T,) the gripper pushed some object during frame t → t+1
    speed: np.ndarray  # float32 (T,) gripper speed in pixels per frame from frame t to t + 1
    click_times: np.ndarray  # float32 (M,) seconds at which a push starts (a click in the audio)

    @property
    def label_name(self) -> str:
        return CLASSES[self.label]


# --------------------------------------------------------------------------- trajectories


def _bounds(cfg: WorldConfig) -> tuple[float, float]:
    m = cfg.margin * cfg.scale
    return m, cfg.resolution - 1 - m


def _smooth_wobble(rng: np.random.Generator, s: np.ndarray, amplitude: float) -> np.ndarray:
    """(len(s), 2) slow smooth offsets: a sum of two random low-frequency sines per axis."""
    out = np.zeros((len(s), 2), np.float64)
    for axis in range(2):
        for _ in range(2):
            freq = rng.uniform(0.02, 0.06)  # cycles per frame
            out[:, axis] += amplitude * np.sin(2 * np.pi * freq * s + rng.uniform(0, 2 * np.pi))
    return out / 2


def _circle(rng, cfg, s, speed):
    lo, hi = _bounds(cfg)
    radius = rng.uniform(0.2, 0.3) * cfg.resolution
    centre = rng.uniform(lo + radius, hi - radius, size=2)
    omega = rng.choice([-1, 1]) * speed / radius
    phase = rng.uniform(0, 2 * np.pi)
    angle = omega * s + phase
    return centre + radius * np.stack([np.cos(angle), np.sin(angle)], -1)


def _sweep(axis: int):
    def sweep(rng, cfg, s, speed):
        lo, hi = _bounds(cfg)
        amp = rng.uniform(0.25, 0.33) * cfg.resolution
        centre = rng.uniform(lo + amp, hi - amp)
        omega = speed * (np.pi / 2) / amp  # mean speed of A sin(ωs) is 2Aω/π
        main = centre + amp * np.sin(omega * s + rng.uniform(0, 2 * np.pi))
        other = rng.uniform(lo + 6 * cfg.scale, hi - 6 * cfg.scale)
        cross = other + 4 * cfg.scale * np.sin(2 * np.pi * s / len(s) * cfg.substeps)
        out = np.empty((len(s), 2))
        out[:, axis], out[:, 1 - axis] = main, cross
        return out

    return sweep


def _zigzag(rng, cfg, s, speed):
    """Sideways strokes along x while drifting steadily from one edge to the other along y."""
    lo, hi = _bounds(cfg)
    amp = rng.uniform(0.22, 0.3) * cfg.resolution
    centre = rng.uniform(lo + amp, hi - amp)
    omega = speed * (np.pi / 2) / amp
    # a softened triangle wave: straight strokes, rounded turns
    wave = (2 / np.pi) * np.arcsin(0.97 * np.sin(omega * s + rng.uniform(0, 2 * np.pi)))
    x = centre + amp * wave / (2 / np.pi * np.arcsin(0.97))
    t = s / max(s[-1], 1e-6)
    y0, y1 = (lo, hi) if rng.random() < 0.5 else (hi, lo)
    y = y0 + (y1 - y0) * t
    return np.stack([x, y], -1)


def _random_walk(rng, cfg, s, speed):
    """A velocity that drifts smoothly (Ornstein–Uhlenbeck), reflected at the bounds."""
    lo, hi = _bounds(cfg)
    n, dt = len(s), 1.0 / cfg.substeps
    pos = np.empty((n, 2))
    pos[0] = rng.uniform(lo, hi, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    turn = 0.0
    for k in range(1, n):
        turn = 0.9 * turn + rng.normal(0, 0.09)
        heading += turn
        step = speed * dt * np.array([np.cos(heading), np.sin(heading)])
        p = pos[k - 1] + step
        for axis in range(2):  # bounce off the walls: mirror the heading
            if not lo <= p[axis] <= hi:
                p[axis] = np.clip(p[axis], lo, hi)
                heading = np.pi - heading if axis == 0 else -heading
        pos[k] = p
    return pos


_PATTERNS: dict[str, Callable] = {
    "circle": _circle,
    "sweep_horizontal": _sweep(0),
    "sweep_vertical": _sweep(1),
    "zigzag": _zigzag,
    "random_walk": _random_walk,
}


def gripper_path(cfg: WorldConfig, label: int, rng: np.random.Generator) -> np.ndarray:
    """(T · substeps, 2) gripper centre at times s = k / substeps (frames), shaped by ``label``."""
    s = np.arange(cfg.num_frames * cfg.substeps) / cfg.substeps
    speed = rng.uniform(cfg.min_speed, cfg.max_speed) * cfg.scale
    path = _PATTERNS[CLASSES[label]](rng, cfg, s, speed)
    path = path + _smooth_wobble(rng, s, 1.0 * cfg.scale)
    lo, hi = _bounds(cfg)
    return np.clip(path, lo, hi)


# --------------------------------------------------------------------------- physics


@dataclasses.dataclass(frozen=True)
class _Objects:
    centre: np.ndarray  # (N, 2) float64
    radius: np.ndarray  # (N,) collision radius
    half: np.ndarray  # (N,) half side (boxes) or radius (discs)
    is_box: np.ndarray  # (N,) bool
    angle: np.ndarray  # (N,) box rotation
    colour: np.ndarray  # (N, 3)


def _place_objects(cfg: WorldConfig, rng: np.random.Generator, path: np.ndarray) -> _Objects:
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    res, sc = cfg.resolution, cfg.scale
    half = rng.uniform(*cfg.object_radius, size=n) * sc
    is_box = rng.random(n) < 0.5
    radius = np.where(is_box, half * 1.15, half)  # a box collides like a disc between in/out radius
    colour = _PALETTE[rng.choice(len(_PALETTE), size=n, replace=False)]
    centre = np.zeros((n, 2))
    g_r = cfg.gripper_radius * sc
    for i in range(n):
        for attempt in range(200):
            if i == 0 and attempt < 100:
                # the first object sits near where the gripper will be mid-video: a push is sure
                k = int(rng.uniform(0.25, 0.6) * len(path))
                c = path[k] + rng.normal(0, 2.0 * sc, size=2)
            else:
                c = rng.uniform(radius[i] + 1, res - 2 - radius[i], size=2)
            clear_of_gripper = np.linalg.norm(c - path[0]) > g_r + radius[i] + 2 * sc
            clear_of_others = all(
                np.linalg.norm(c - centre[j]) > radius[i] + radius[j] + 1.5 * sc for j in range(i)
            )
            inside = np.all(c >= radius[i]) and np.all(c <= res - 1 - radius[i])
            if clear_of_gripper and clear_of_others and inside:
                break
        centre[i] = c
    return _Objects(centre, radius, half, is_box, rng.uniform(0, np.pi / 2, size=n), colour)


class _Motion(NamedTuple):
    centres: np.ndarray  # (K, N, 2) object centres per substep
    angles: np.ndarray  # (K, N) object rotations per substep
    push: np.ndarray  # (K,) total push depth per substep (0 = no contact)
    onsets: list[tuple[int, int]]  # (substep, object) where a push starts


def _simulate(cfg: WorldConfig, path: np.ndarray, objects: _Objects) -> _Motion:
    """Push objects along the gripper path (kinematic: no inertia, no friction model).

    When the gripper head overlaps an object, the object is moved out along the line between
    their centres — so it is displaced in the push direction — then objects overlapping each
    other are separated. An off-centre push turns a box a little.
    """
    n, k_steps = len(objects.radius), len(path)
    res = cfg.resolution
    g_r = cfg.gripper_radius * cfg.scale
    centres = np.zeros((k_steps, n, 2))
    angles = np.zeros((k_steps, n))
    push = np.zeros(k_steps)
    onsets: list[tuple[int, int]] = []
    c = objects.centre.copy()
    angle = objects.angle.copy()
    prev_g = path[0]
    touching = np.zeros(n, bool)
    for k in range(k_steps):
        g = path[k]
        motion = g - prev_g
        prev_g = g
        now = np.zeros(n, bool)
        for i in range(n):
            d = c[i] - g
            dist = float(np.hypot(*d))
            reach = g_r + objects.radius[i]
            if dist < reach:
                direction = d / dist if dist > 1e-6 else np.array([0.0, 1.0])
                c[i] = c[i] + direction * (reach - dist)
                push[k] += reach - dist
                now[i] = True
                # torque ~ how far off-centre the push is: cross(gripper motion, contact normal)
                lever = motion[0] * direction[1] - motion[1] * direction[0]
                angle[i] += 0.08 * lever * objects.is_box[i]
        for _ in range(2):  # separate objects that ended up overlapping each other
            for i in range(n):
                for j in range(i + 1, n):
                    d = c[j] - c[i]
                    dist = float(np.hypot(*d))
                    reach = objects.radius[i] + objects.radius[j]
                    if dist < reach:
                        direction = d / dist if dist > 1e-6 else np.array([1.0, 0.0])
                        shift = direction * (reach - dist) / 2
                        c[i] -= shift
                        c[j] += shift
        c = np.clip(c, objects.radius[:, None], res - 1 - objects.radius[:, None])
        onsets += [(k, i) for i in np.flatnonzero(now & ~touching)]
        touching = now
        centres[k], angles[k] = c, angle
    return _Motion(centres, angles, push, onsets)


# --------------------------------------------------------------------------- rendering


def _smooth_noise(rng: np.random.Generator, size: int, cells: tuple[int, int]) -> np.ndarray:
    """(size, size) value noise in [0, 1]: a random (cy+1, cx+1) grid, smoothstep-interpolated."""
    cy, cx = cells
    grid = rng.random((cy + 1, cx + 1))
    u = np.linspace(0, cy, size, endpoint=False) + cy / (2 * size)
    v = np.linspace(0, cx, size, endpoint=False) + cx / (2 * size)
    iy, ix = np.minimum(u.astype(int), cy - 1), np.minimum(v.astype(int), cx - 1)
    fy, fx = u - iy, v - ix
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[iy][:, ix] * (1 - fx) + grid[iy][:, ix + 1] * fx
    bottom = grid[iy + 1][:, ix] * (1 - fx) + grid[iy + 1][:, ix + 1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def _table(cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 table: wood-like grain and blotches, lit from the upper left."""
    res = cfg.resolution
    grain = _smooth_noise(rng, res, (24, 3))  # stretched along x: wood grain
    blotch = 0.6 * _smooth_noise(rng, res, (4, 4)) + 0.4 * _smooth_noise(rng, res, (9, 9))
    base = np.array([0.74, 0.62, 0.47]) + rng.uniform(-0.05, 0.05, size=3)
    shade = 0.86 + 0.12 * grain + 0.12 * (blotch - 0.5)
    yy, xx = np.mgrid[0:res, 0:res] / (res - 1)
    light = 1.08 - 0.18 * (0.6 * xx + 0.8 * yy)  # brighter towards the light
    vignette = 1 - 0.18 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2
    table = base * (shade * light * vignette)[..., None]
    return np.clip(table, 0, 1).astype(np.float32)


def _coverage(sdf: np.ndarray, softness: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of the region sdf < 0 (one-pixel ramp; wider for soft shadows)."""
    return np.clip(0.5 - sdf / softness, 0.0, 1.0)


# Shape distance fields: (h, w) pixel coordinates → signed distance in pixels (< 0 inside).
# Scalars go through float() so float32 grids stay float32 (NumPy 2 promotes on np.float64).


def _disc_sdf(xx, yy, c, r):
    return np.hypot(xx - float(c[0]), yy - float(c[1])) - float(r)


def _box_sdf(xx, yy, c, half, angle, rounding):
    """A square of half side ``half`` turned by ``angle``, corners rounded by ``rounding``."""
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    dx, dy = xx - float(c[0]), yy - float(c[1])
    inner = float(half - rounding)
    qx = np.abs(cos * dx + sin * dy) - inner
    qy = np.abs(-sin * dx + cos * dy) - inner
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0) - float(rounding)


def _capsule_sdf(xx, yy, a, b, r):
    """A capsule: distance to the segment a→b minus r."""
    ax, ay = float(a[0]), float(a[1])
    bx, by = float(b[0]) - ax, float(b[1]) - ay
    t = np.clip(((xx - ax) * bx + (yy - ay) * by) / max(bx * bx + by * by, 1e-9), 0, 1)
    return np.hypot(xx - ax - t * bx, yy - ay - t * by) - float(r)


class _Renderer:
    """Composites one frame: table, soft shadows, objects, then the arm and head on top.

    Each shape is evaluated only inside its bounding window, which keeps a 64 × 64 frame at a
    fraction of a millisecond.
    """

    def __init__(
        self, cfg: WorldConfig, objects: _Objects, table: np.ndarray, arm_base: np.ndarray
    ):
        self.cfg, self.objects, self.table, self.arm_base = cfg, objects, table, arm_base
        res = cfg.resolution
        self.yy, self.xx = np.mgrid[0:res, 0:res].astype(np.float32)

    def _window(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        res = self.cfg.resolution
        rows = slice(min(max(math.floor(y0), 0), res), min(max(math.ceil(y1) + 1, 0), res))
        cols = slice(min(max(math.floor(x0), 0), res), min(max(math.ceil(x1) + 1, 0), res))
        return rows, cols

    def _around(self, centre: np.ndarray, extent: float, dx: float = 0.0, dy: float = 0.0):
        x, y = centre[0] + dx, centre[1] + dy
        return self._window(x - extent, x + extent, y - extent, y + extent)

    def _object_sdf(self, i, centre, angle, win, dx=0.0, dy=0.0) -> np.ndarray:
        xx, yy = self.xx[win] - dx, self.yy[win] - dy
        o = self.objects
        if o.is_box[i]:
            return _box_sdf(xx, yy, centre, o.half[i], angle, 1.2 * self.cfg.scale)
        return _disc_sdf(xx, yy, centre, o.half[i])

    def _gripper_sdf(self, gripper, win, dx=0.0, dy=0.0):
        cfg, sc = self.cfg, self.cfg.scale
        xx, yy = self.xx[win] - dx, self.yy[win] - dy
        head = _disc_sdf(xx, yy, gripper, cfg.gripper_radius * sc)
        arm = _capsule_sdf(xx, yy, self.arm_base, gripper, cfg.arm_width * sc)
        return head, arm

    def _gripper_window(self, gripper, pad, dx=0.0, dy=0.0):
        g_r = self.cfg.gripper_radius * self.cfg.scale + pad
        xs = (self.arm_base[0] + dx, gripper[0] + dx)
        return self._window(min(xs) - g_r, max(xs) + g_r, 0, gripper[1] + dy + g_r)

    def frame(self, gripper: np.ndarray, centres: np.ndarray, angles: np.ndarray):
        """RGB float32 (H, W, 3) in [0, 1] and layout uint8 (H, W) for one instant."""
        cfg, o, sc = self.cfg, self.objects, self.cfg.scale
        arm_r = cfg.arm_width * sc
        res = cfg.resolution

        # shadows fall to the lower right; the gripper is higher up, so its shadow is further
        shadow = np.zeros((res, res), np.float32)
        for i in range(len(o.radius)):
            dx, dy = 1.0 * sc, 1.4 * sc
            win = self._around(centres[i], o.radius[i] + 3, dx, dy)
            cov = 0.35 * _coverage(self._object_sdf(i, centres[i], angles[i], win, dx, dy), 2.0)
            shadow[win] = np.maximum(shadow[win], cov)
        dx, dy = 2.5 * sc, 3.5 * sc
        win = self._gripper_window(gripper, 3 * sc, dx, dy)
        head, arm = self._gripper_sdf(gripper, win, dx, dy)
        shadow[win] = np.maximum(shadow[win], 0.3 * _coverage(np.minimum(head, arm), 2.5 * sc))
        img = self.table * (1 - shadow)[..., None]
        layout = np.zeros((res, res), np.uint8)

        for i in range(len(o.radius)):
            win = self._around(centres[i], o.radius[i] + 2)
            sdf = self._object_sdf(i, centres[i], angles[i], win)
            alpha = _coverage(sdf)
            # a soft highlight towards the light and a darker rim give the objects some volume
            half = float(o.half[i])
            rel_x = (self.xx[win] - float(centres[i][0])) / half
            rel_y = (self.yy[win] - float(centres[i][1])) / half
            rim = np.clip(sdf / half + 1, 0, 1)
            lit = 0.9 - 0.22 * (rel_x * _LIGHT[0] + rel_y * _LIGHT[1]) + 0.15 * rim
            colour = np.clip(o.colour[i] * lit[..., None], 0, 1)
            img[win] += (colour - img[win]) * alpha[..., None]
            layout[win][alpha >= 0.5] = 2 + i

        win = self._gripper_window(gripper, 2)
        head, arm = self._gripper_sdf(gripper, win)
        # the arm: a grey metal bar reaching in from above the top edge, shaded across its width
        arm_alpha = _coverage(arm)
        across = np.clip(-arm / arm_r, 0, 1)
        arm_colour = (0.38 + 0.22 * across)[..., None] * _STEEL
        img[win] += (arm_colour - img[win]) * arm_alpha[..., None]
        # the head: a dark disc with a slightly lighter ring and a small highlight
        head_alpha = _coverage(head)
        ring = np.exp(-((head + 1.3 * sc) ** 2) / (0.5 * sc * sc))
        hx = self.xx[win] - float(gripper[0] - 1.4 * sc)
        hy = self.yy[win] - float(gripper[1] - 1.6 * sc)
        spot = np.exp(-(hx * hx + hy * hy) / (1.5 * sc * sc))
        head_colour = (0.12 + 0.12 * ring + 0.18 * spot)[..., None] * _STEEL
        img[win] += (head_colour - img[win]) * head_alpha[..., None]
        layout[win][np.maximum(arm_alpha, head_alpha) >= 0.5] = 1
        return img, layout


# --------------------------------------------------------------------------- sound


def motion_sound(
    speed: np.ndarray,
    onsets: np.ndarray,
    num_samples: int,
    steps_per_second: float,
    audio_rate: int,
    scale: float = 1.0,
    click_pitch: np.ndarray | None = None,
) -> np.ndarray:
    """Mono float32 (num_samples,) in [-1, 1]: a hum following ``speed`` plus contact clicks.

    speed: (K,) gripper speed in pixels per frame at K evenly spaced steps, ``steps_per_second``
        of them per second; ``scale`` = resolution / 64 so the pitch does not depend on size.
    onsets: (M,) step indices at which a push starts; click_pitch: (M,) Hz per click.
    The hum's fundamental is 90 Hz at rest and rises 40 Hz per pixel/frame of speed; its
    loudness rises with speed too, so both pitch and energy carry the motion.
    """
    t = np.arange(num_samples) / audio_rate
    step_time = np.arange(len(speed)) / steps_per_second
    v = np.interp(t, step_time, speed / scale)
    freq = 90.0 + 40.0 * v
    phase = 2 * np.pi * np.cumsum(freq) / audio_rate
    loud = 0.03 + 0.07 * np.clip(v / 3.0, 0, 1.5)
    hum = loud * (np.sin(phase) + 0.45 * np.sin(2 * phase) + 0.2 * np.sin(3 * phase + 0.5))
    out = hum
    if len(onsets):
        pitch = np.full(len(onsets), 2000.0) if click_pitch is None else np.asarray(click_pitch)
        length = int(0.04 * audio_rate)
        tc = np.arange(length) / audio_rate
        for step, f in zip(onsets, pitch):
            start = int(round(step / steps_per_second * audio_rate))
            if start >= num_samples:
                continue
            click = 0.45 * np.exp(-tc / 0.006) * np.sin(2 * np.pi * f * tc)
            end = min(num_samples, start + length)
            out[start:end] += click[: end - start]
    return np.clip(out, -1, 1).astype(np.float32)


# --------------------------------------------------------------------------- public API


def render_video(cfg: WorldConfig, seed: int, label: int | None = None) -> DemoVideo:
    """Render one video of the demo world; the same (cfg, seed, label) gives the same arrays.

    label: the motion pattern (index into CLASSES); drawn from the seed when None.
    """
    rng = np.random.default_rng(seed)
    if label is None:
        label = int(rng.integers(len(CLASSES)))
    if not 0 <= label < len(CLASSES):
        raise ValueError(f"label must be in [0, {len(CLASSES)}), got {label}")
    res, sub, T = cfg.resolution, cfg.substeps, cfg.num_frames

    table = _table(cfg, rng)
    path = gripper_path(cfg, label, rng)  # (T * sub, 2)
    objects = _place_objects(cfg, rng, path)
    arm_base = np.array([rng.uniform(0.3, 0.7) * res, -0.45 * res])
    motion = _simulate(cfg, path, objects)
    centres, angles, push, onsets = motion

    renderer = _Renderer(cfg, objects, table, arm_base)
    frames = np.empty((T, res, res, 3), np.uint8)
    layout = np.empty((T, res, res), np.uint8)
    for t in range(T):
        k = t * sub
        img, layout[t] = renderer.frame(path[k], centres[k], angles[k])
        frames[t] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)

    step_speed = np.linalg.norm(np.diff(path, axis=0, append=path[-1:]), axis=-1) * sub
    step_speed[-1] = step_speed[-2]
    onset_steps = np.array([k for k, _ in onsets], dtype=np.int64)
    # smaller objects click higher
    click_pitch = np.array([1000.0 + 8000.0 / (1 + objects.half[i] / cfg.scale) for _, i in onsets])
    num_samples = int(round(T / cfg.fps * cfg.audio_rate))
    audio = motion_sound(
        step_speed, onset_steps, num_samples, sub * cfg.fps, cfg.audio_rate, cfg.scale, click_pitch
    )
    # frame t → t + 1 spans substeps t·sub + 1 … (t + 1)·sub
    contacts = np.append(push[1:], 0.0).reshape(T, sub).sum(axis=1) > 0
    return DemoVideo(
        frames=frames,
        audio=audio,
        positions=path[::sub].astype(np.float32),
        layout=layout,
        label=int(label),
        object_positions=centres[::sub].astype(np.float32),
        contacts=contacts,
        speed=step_speed.reshape(T, sub).mean(axis=1).astype(np.float32),
        click_times=(onset_steps / (sub * cfg.fps)).astype(np.float32),
    )

