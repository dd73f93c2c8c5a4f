"""Per-frame and per-sample video metrics of §4: SSIM, PSNR, best-of-S SSIM, DIV (Fig. 6).

Videos are (B, T, 3, H, W) tensors with values in [-1, 1] (the models' range); they are clamped
to [-1, 1] and mapped to [0, 1] before any metric, so every number here is in the units of a
[0, 1] frame (data range 1).

* ``frame_ssim`` — SSIM (Wang et al. [77]): 11 × 11 Gaussian window, σ = 1.5, K1 = 0.01,
  K2 = 0.03, 'valid' filtering, per channel then averaged. Computed by the maintained
  ``pytorch_msssim.ssim`` (falls back to ``pipeline.metrics.image.ssim``, which agrees to 1e-6,
  when that package is missing). Frames smaller than 11 pixels use the largest odd window that
  fits, as ``pipeline.metrics.image`` does.
* ``frame_psnr`` — 10 log10(1 / MSE) per frame ("directly related to the root mean squared
  error", §4); identical frames give +inf unless ``max_db`` caps it.
* ``metrics_at`` — the mean over videos at the paper's timesteps. The paper counts frames from
  t = 1 (the given first frame): Table 1 reports SSIM at t = 8 and t = 15 of 16-frame BAIR clips
  and calls t = 15 the "one-before-last" frame, so t maps to index t − 1. Timesteps beyond the
  clip are skipped with a logged note.
* ``best_of_samples`` — Table D4: per real video, the best SSIM among S synthetic samples
  ("Best", sample score = mean over frames) and the variance of that score across samples
  ("Div.").
* ``diversity`` — DIV of Fig. 6: "the mean pixel-wise distance among synthetic trajectories
  conditioned on the same input" (mean |a − b| over pixels, channels and frames, averaged over
  the S(S−1)/2 pairs of samples), on whole frames and on moving parts only, where the mask keeps
  pixels whose flow magnitude between consecutive frames is ≥ 20 % of the video's maximum.
  The paper prints DIV × 10³; values here are in [0, 1] frame units, unscaled.
* ``optical_flow`` / ``motion_mask`` — the paper used a learned flow for the mask; this is a
  classical stand-in: coarse-to-fine Horn–Schunck on grayscale (a few pyramid levels, backward
  warping between levels, a fixed number of Jacobi iterations). Good enough to tell moving from
  static pixels, not an accurate flow.
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.metrics import image as image_metrics

try:  # the maintained SSIM implementation (PyPI: pytorch-msssim)
    from pytorch_msssim import ssim as _msssim_ssim

    SSIM_BACKEND = "pytorch_msssim"
except ImportError:  # pragma: no cover - exercised only without the package
    _msssim_ssim = None
    SSIM_BACKEND = "pipeline.metrics.image"

log = logging.getLogger(__name__)

PAPER_TIMESTEPS = (8, 15)  # Table 1, BAIR 16-frame clips
LONG_TIMESTEPS = (16, 30, 45)  # longer runs (App. D)
_FRAME_CHUNK = 256  # frames per SSIM / PSNR call, bounds memory on long or large batches


# --------------------------------------------------------------------------------------------
# SSIM / PSNR per frame


def _pairs(a: torch.Tensor, b: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two videos (B, T, 3, H, W) in [-1, 1] → frames (B·T, 3, H, W) float64 in [0, 1]."""
    a = torch.as_tensor(a)
    b = torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != 5:
        raise ValueError(f"{what}: expected videos (B, T, C, H, W), got {tuple(a.shape)}")

    def unit(x: torch.Tensor) -> torch.Tensor:
        return ((x.double().clamp(-1.0, 1.0) + 1.0) / 2.0).flatten(0, 1)

    return unit(a), unit(b)


def _ssim_frames(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of frames (N, C, H, W) in [0, 1] → (N,) float64."""
    h, w = x.shape[-2:]
    size = min(11, h, w)
    size -= 1 - size % 2  # odd
    if _msssim_ssim is None:
        return image_metrics.ssim(x, y, data_range=1.0, window=size)
    # the package builds its window in float32; give it a float64 one (same formula), per channel
    r = torch.arange(size, dtype=torch.float64, device=x.device) - size // 2
    g = torch.exp(-(r**2) / (2 * 1.5**2))
    win = (g / g.sum()).view(1, 1, 1, size).repeat(x.shape[1], 1, 1, 1)
    return _msssim_ssim(x, y, data_range=1.0, size_average=False, win=win, K=(0.01, 0.03))


@torch.no_grad()
def frame_ssim(real: Any, fake: Any) -> np.ndarray:
    """SSIM [77] per frame of videos (B, T, 3, H, W) in [-1, 1] → (B, T) float64 array."""
    x, y = _pairs(real, fake, "frame_ssim")
    b, t = torch.as_tensor(real).shape[:2]
    out = torch.cat([_ssim_frames(x[i:i + _FRAME_CHUNK], y[i:i + _FRAME_CHUNK])
                     for i in range(0, len(x), _FRAME_CHUNK)])
    return out.reshape(b, t).cpu().numpy()


@torch.no_grad()
def frame_psnr(real: Any, fake: Any, max_db: float | None = None) -> np.ndarray:
    """PSNR (dB, data range 1) per frame of videos (B, T, 3, H, W) in [-1, 1] → (B, T) array.

    Identical frames give +inf; with ``max_db`` every value is capped at it (keeps means finite).
    """
    x, y = _pairs(real, fake, "frame_psnr")
    b, t = torch.as_tensor(real).shape[:2]
    out = torch.cat([image_metrics.psnr(x[i:i + _FRAME_CHUNK], y[i:i + _FRAME_CHUNK], 1.0, max_db)
                     for i in range(0, len(x), _FRAME_CHUNK)])
    return out.reshape(b, t).cpu().numpy()


def metrics_at(
    values: Any,
    timesteps: tuple[int, ...] | list[int] = PAPER_TIMESTEPS,
    name: str = "ssim",
    notes: list[str] | None = None,
) -> dict[str, float]:
    """Mean over videos of per-frame values (B, T) at the paper's timesteps → {"<name>_t<t>": x}.

    Timesteps count from 1 as in the paper (t = 1 is the first frame, index t − 1). A timestep
    outside 1..T is skipped: a warning is logged and, when ``notes`` is given, a line appended.
    NaN entries are ignored; +inf PSNR values stay +inf in the mean.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"metrics_at: expected values (B, T), got shape {v.shape}")
    out: dict[str, float] = {}
    for t in timesteps:
        if not 1 <= t <= v.shape[1]:
            note = (f"{name}: timestep t={t} skipped, the videos have {v.shape[1]} frames "
                    f"(t counts from 1)")
            log.warning(note)
            if notes is not None:
                notes.append(note)
            continue
        column = v[:, t - 1]
        column = column[~np.isnan(column)]
        out[f"{name}_t{t}"] = float(column.mean()) if column.size else math.nan
    return out


class BestOfSamples(NamedTuple):
    best: np.ndarray  # (B,) best mean-over-frames SSIM among the S samples (Table D4 "Best")
    index: np.ndarray  # (B,) which sample it is
    per_frame: np.ndarray  # (B, T) the per-frame SSIM of that sample
    variance: np.ndarray  # (B,) variance over samples of the mean SSIM (Table D4 "Div.")


def best_of_samples(per_sample_ssim: Any) -> BestOfSamples:
    """Table D4: per_sample_ssim (B, S, T), SSIM of sample s of input b against the real video.

    A sample's score is its mean SSIM over the T frames given (pass the synthesised frames only);
    "Best" is the highest score of the S samples, per input; report ``best.mean()``.
    """
    v = np.asarray(per_sample_ssim, dtype=np.float64)
    if v.ndim != 3 or v.shape[1] < 1:
        raise ValueError(f"best_of_samples: expected (B, S, T), got shape {v.shape}")
    score = v.mean(axis=2)  # (B, S)
    index = score.argmax(axis=1)
    rows = np.arange(v.shape[0])
    return BestOfSamples(best=score[rows, index], index=index, per_frame=v[rows, index],
                         variance=score.var(axis=1))


# --------------------------------------------------------------------------------------------
# Optical flow (classical stand-in) and the moving-parts mask


def _gray(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] → luma (N, 1, H, W) in [0, 1] (ITU-R BT.601 weights)."""
    w = frames.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return ((frames.clamp(-1, 1) + 1) / 2 * w).sum(1, keepdim=True)


def _warp(img: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Backward warp img (N, 1, H, W) by flow (u, v) in pixels: out(x) = img(x + (u, v))."""
    n, _, h, w = img.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=img.dtype, device=img.device),
                            torch.arange(w, dtype=img.dtype, device=img.device), indexing="ij")
    gx = (xs + u[:, 0]) * (2 / max(w - 1, 1)) - 1
    gy = (ys + v[:, 0]) * (2 / max(h - 1, 1)) - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _horn_schunck(i1: torch.Tensor, i2: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                  alpha: float, beta: float, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine flow (u, v) from i1 to i2 (N, 1, H, W) by Horn–Schunck on the warped residual."""
    i2w = _warp(i2, u, v)
    dx = i1.new_tensor([[-0.5, 0.0, 0.5]]).view(1, 1, 1, 3)
    dy = dx.transpose(2, 3)
    avg = (i1 + i2w) / 2
    ix = F.conv2d(F.pad(avg, (1, 1, 0, 0), mode="replicate"), dx)
    iy = F.conv2d(F.pad(avg, (0, 0, 1, 1), mode="replicate"), dy)
    it = i2w - i1
    # Horn & Schunck's neighbourhood average (weights 1/6 edge, 1/12 corner).
    k = i1.new_tensor([[1, 2, 1], [2, 0, 2], [1, 2, 1]]).view(1, 1, 3, 3) / 12

    def mean(f: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(f, (1, 1, 1, 1), mode="replicate"), k)

    du, dv = torch.zeros_like(u), torch.zeros_like(v)
    gamma = alpha**2 + beta**2
    shrink = alpha**2 / gamma  # the β² |w|² prior pulls the neighbourhood mean towards 0
    denom = gamma + ix**2 + iy**2
    for _ in range(iterations):
        # smoothness and prior act on the total flow w = (u + du, v + dv)
        mu, mv = shrink * mean(u + du) - u, shrink * mean(v + dv) - v
        r = (ix * mu + iy * mv + it) / denom
        du, dv = mu - ix * r, mv - iy * r
    return u + du, v + dv


@torch.no_grad()
def optical_flow(frame1: torch.Tensor, frame2: torch.Tensor, levels: int = 2,
                 iterations: int = 50, alpha: float = 0.03, beta: float = 0.004) -> torch.Tensor:
    """Flow (N, 2, H, W) in pixels (x right, y down) from frame1 to frame2 (N, 3, H, W) in [-1, 1].

    Coarse-to-fine Horn–Schunck on grayscale in [0, 1]: ``levels`` pyramid levels (halving,
    stopped at 8 pixels), ``iterations`` Jacobi iterations per level, smoothness weight ``alpha``
    (intensity units) and a small prior ``beta`` on the flow magnitude (energy
    (I_x u + I_y v + I_t)² + α² ‖∇w‖² + β² ‖w‖²): without it the smoothness term spreads the motion
    of an object over a flat static background, where the data term is silent; with it, flow
    decays over ~α/β pixels away from image evidence. Defaults were tuned on moving squares over
    flat and textured backgrounds at 48–64 pixels. A classical stand-in for the learned flow the
    paper used; expect motion up to a few pixels per frame.
    """
    g1, g2 = _gray(frame1.double()), _gray(frame2.double())
    pyramid = [(g1, g2)]
    for _ in range(levels - 1):
        a, b = pyramid[-1]
        if min(a.shape[-2:]) < 16:
            break
        pyramid.append((F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)))
    u = v = None
    for a, b in reversed(pyramid):
        if u is None:
            u, v = torch.zeros_like(a), torch.zeros_like(a)
        else:  # upsample the coarser flow, doubling its pixel units
            u = 2 * F.interpolate(u, size=a.shape[-2:], mode="bilinear", align_corners=False)
            v = 2 * F.interpolate(v, size=a.shape[-2:], mode="bilinear", align_corners=False)
        u, v = _horn_schunck(a, b, u, v, alpha, beta, iterations)
    return torch.cat([u, v], dim=1).to(frame1.dtype)


@torch.no_grad()
def motion_mask(video: torch.Tensor, fraction: float = 0.2, min_peak: float = 0.05,
                **flow_kwargs: Any) -> torch.Tensor:
    """Moving pixels of video (T, 3, H, W) (or (B, T, 3, H, W)) in [-1, 1] → bool (…, T, H, W).

    Fig. 6: a pixel moves when its flow magnitude between consecutive frames is ≥ ``fraction``
    (paper: 20 %) of the maximum magnitude of the video. Frame t ≥ 1 uses the flow from t − 1 to
    t, frame 0 the flow from 0 to 1. A static video (maximum flow below ``min_peak`` pixels,
    round-off of the estimator) or a single frame gives no moving pixel. The flow is a classical
    stand-in (``optical_flow``), not the paper's learned one.
    """
    x = torch.as_tensor(video)
    batched = x.ndim == 5
    if not batched:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(f"motion_mask: expected video (T, 3, H, W) or (B, T, 3, H, W), "
                         f"got {tuple(torch.as_tensor(video).shape)}")
    b, t, _, h, w = x.shape
    if t < 2:
        mask = torch.zeros(b, t, h, w, dtype=torch.bool, device=x.device)
        return mask if batched else mask[0]
    flow = optical_flow(x[:, :-1].flatten(0, 1), x[:, 1:].flatten(0, 1), **flow_kwargs)
    mag = flow.double().norm(dim=1).view(b, t - 1, h, w)
    mag = torch.cat([mag[:, :1], mag], dim=1)  # frame 0 borrows the 0 → 1 flow
    peak = mag.flatten(1).amax(1).view(b, 1, 1, 1)
    mask = (mag >= fraction * peak) & (peak >= min_peak)
    return mask if batched else mask[0]


# --------------------------------------------------------------------------------------------
# DIV (Fig. 6)


class Diversity(NamedTuple):
    whole: np.ndarray  # (B,) DIV on whole frames, [0, 1] frame units
    moving: np.ndarray | None  # (B,) DIV on moving pixels only (NaN where the mask is empty)


@torch.no_grad()
def diversity(samples: Any, moving_mask: Any = None) -> Diversity:
    """DIV (Fig. 6): samples (B, S, T, 3, H, W) in [-1, 1], S ≥ 2 samples per input b.

    whole[b] = mean over the S(S−1)/2 pairs (i < j) of mean |x_i − x_j| over frames, channels and
    pixels, in [0, 1] frame units. With ``moving_mask`` (B, T, H, W) bool (e.g. ``motion_mask`` of
    the real video, or of all samples combined with ``.any``), moving[b] is the same mean over the
    masked pixels only (NaN when the mask of input b is empty).
    """
    x = torch.as_tensor(samples)
    if x.ndim != 6 or x.shape[1] < 2:
        raise ValueError(
            f"diversity: expected samples (B, S >= 2, T, C, H, W), got {tuple(x.shape)}")
    b, s, t, _, h, w = x.shape
    m = None
    if moving_mask is not None:
        m = torch.as_tensor(moving_mask, device=x.device).bool()
        if tuple(m.shape) != (b, t, h, w):
            raise ValueError(f"diversity: moving_mask must be (B, T, H, W) = {(b, t, h, w)}, "
                             f"got {tuple(m.shape)}")
        m = m[:, :, None].double()  # (B, T, 1, H, W), broadcast over channels
    x = (x.double().clamp(-1, 1) + 1) / 2
    whole = torch.zeros(b, dtype=torch.float64, device=x.device)
    moving = torch.zeros_like(whole)
    pairs = 0
    for i in range(s):
        for j in range(i + 1, s):
            diff = (x[:, i] - x[:, j]).abs()  # (B, T, C, H, W)
            whole += diff.flatten(1).mean(1)
            if m is not None:
                moving += (diff * m).flatten(1).sum(1)
            pairs += 1
    whole /= pairs
    moving_out = None
    if m is not None:
        count = m.flatten(1).sum(1) * x.shape[3]  # masked pixels × channels
        moving_out = (moving / pairs / count).cpu().numpy()  # 0 / 0 → NaN for an empty mask
        if (count == 0).any():
            log.warning("diversity: %d input(s) have no moving pixel; their moving-parts DIV is "
                        "NaN", int((count == 0).sum()))
    return Diversity(whole=whole.cpu().numpy(), moving=moving_out)


__all__ = [
    "BestOfSamples",
    "Diversity",
    "LONG_TIMESTEPS",
    "PAPER_TIMESTEPS",
    "SSIM_BACKEND",
    "best_of_samples",
    "diversity",
    "frame_psnr",
    "frame_ssim",
    "metrics_at",
    "motion_mask",
    "optical_flow",
]
