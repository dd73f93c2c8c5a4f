"""Rendering of the demo world (pipeline/data/demo_world.py): the table and the frame compositor.

Numpy only: shapes (discs, rounded boxes, the gripper's head and arm capsule) are signed distance
fields turned into anti-aliased coverage, composited over a procedurally textured table with soft
shadows. ``pipeline.data.demo_world.render_video`` drives this with the simulated gripper path and
object motion; the simulation itself stays in demo_world.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: demo_world imports this module
    from pipeline.data.demo_scene import WorldConfig, SceneObjects


_LIGHT = np.array([-0.6, -0.8], dtype=np.float32)  # light comes from the upper left (x, y)
_STEEL = np.array([1.0, 1.0, 1.07], dtype=np.float32)  # the gripper's slightly bluish grey


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
        self, cfg: WorldConfig, objects: SceneObjects, table: np.ndarray, arm_base: np.ndarray
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
