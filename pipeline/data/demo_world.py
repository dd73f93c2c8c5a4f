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

This module holds the configuration, the gripper paths, the push physics, the sound and
``render_video``; what a video is made of (``WorldConfig``, ``CLASSES``, ``SceneObjects``,
``DemoVideo``) is in ``pipeline.data.demo_scene``, and the table texture, the distance fields and
the frame compositor (``_Renderer``) in ``pipeline.data.demo_render``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from pipeline.data.demo_render import _Renderer, _table
from pipeline.data.demo_scene import PALETTE, CLASSES, DemoVideo, SceneObjects, WorldConfig

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


def _place_objects(cfg: WorldConfig, rng: np.random.Generator, path: np.ndarray) -> SceneObjects:
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    res, sc = cfg.resolution, cfg.scale
    half = rng.uniform(*cfg.object_radius, size=n) * sc
    is_box = rng.random(n) < 0.5
    radius = np.where(is_box, half * 1.15, half)  # a box collides like a disc between in/out radius
    colour = PALETTE[rng.choice(len(PALETTE), size=n, replace=False)]
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
    return SceneObjects(centre, radius, half, is_box, rng.uniform(0, np.pi / 2, size=n), colour)


class _Motion(NamedTuple):
    centres: np.ndarray  # (K, N, 2) object centres per substep
    angles: np.ndarray  # (K, N) object rotations per substep
    push: np.ndarray  # (K,) total push depth per substep (0 = no contact)
    onsets: list[tuple[int, int]]  # (substep, object) where a push starts


def _simulate(cfg: WorldConfig, path: np.ndarray, objects: SceneObjects) -> _Motion:
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

