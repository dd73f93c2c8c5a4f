"""Self-supervision of the flow module F: augmented, blurred, occluded context (§3.2, App. F).

The autoencoder reconstructs a static image x from its own latent code and a context made from
x itself (§3.2, "Training procedure"; App. F, Fig. F1):

    A(x) = W(x, a_c)                  augmentation by a flow a_c: rotation, scaling, translation,
                                      elastic deformation and random combinations of these
    x_c  = o_c ⊗ B(A(x))              B a Gaussian blur, o_c an occlusion mask (1 = visible)
    f_c  ≈ inverse of a_c             the flow "from A(x) to x": W(A(x), f_c) ≈ x (App. C)
    o'_c = W(o_c, f_c)                the visibility of x's pixels in the context

and F is trained by the contextual loss of Eq. (7) at intermediate resolution levels r_k.

Choices the paper leaves open (documented here, fields of ``AugmentConfig``):
- Inverse flow: affine-only samples use the exact analytic inverse (App. C: "For affine
  transformations, the exact inverse flow can be determined analytically"); samples with an
  elastic component use Alg. C1 (``ccvs_models.flow_inversion``) on the composed flow.
  ``analytic_affine_inverse=False`` sends every sample through Alg. C1.
- o_c also marks as occluded the parts of A(x) whose source falls outside x (the zero padding of
  the warp): they carry no information, like an occluder.
- Mask target and the sign of m: Eq. (1) writes d = σ(m) ⊗ d + (1 − σ(m)) ⊗ e', so σ(m) = 1
  keeps the decoded features and σ(m) = 0 takes the warped context. Fig. F1 shows the "Real Mask"
  white (1) where the context is occluded and says the mask is white when the source is z_s.
  Eq. (7) taken literally with o_c = 1 on visible pixels would ask for the opposite, so we read
  it with Fig. F1: the target of σ(m̂_c) is ``mask_target = 1 − o'_c`` (1 where the context
  is occluded). ``visibility = o'_c`` is returned as well.
- Flow term of Eq. (7): Fig. F1 says flows are compared "within the visible context areas"; a
  flow cannot be recovered where the context is occluded, so ``contextual_loss`` weights the
  squared flow error by o'_c and averages over visible pixels (``weight_flow_by_visibility``).
- Range defaults are ours (the paper gives none), sized for 64×64 BAIR-like frames.

Flow convention (shared with ``ccvs_models.flow``): (B, 2, H, W) in pixels, channel 0 = x
(columns), channel 1 = y (rows); W(x, f)(p) = x(p + f(p)), bilinear, ``align_corners=True``.
Randomness: every draw comes from the ``torch.Generator`` passed in (CPU draws, then moved to the
input's device), so a seed gives the same context on any device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ccvs_models.flow import warp as flow_warp
from ccvs_models.flow_inversion import analytic_affine_inverse, invert_flow, pixel_grid


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the App. F augmentations (the paper gives no values; ours suit 64×64 frames)."""

    p_rotation: float = 0.5  # chance a sample is rotated (the components combine at random)
    rotation_degrees: float = 10.0  # angle drawn uniformly in [-rotation_degrees, rotation_degrees]
    p_scale: float = 0.5  # chance a sample is scaled
    scale_range: tuple[float, float] = (0.9, 1.1)  # isotropic zoom factor, drawn uniformly
    p_translation: float = 0.5  # chance a sample is translated
    translation: float = 0.08  # max shift per axis as a fraction of the width / height
    p_elastic: float = 0.5  # chance a sample gets an elastic deformation
    elastic_amplitude: float = 2.0  # max displacement of the elastic field's control points (px)
    elastic_grid: int = 5  # control points per side; fewer = smoother deformation
    p_blur: float = 0.5  # chance the context is blurred (B)
    blur_sigma: tuple[float, float] = (0.3, 1.2)  # Gaussian std of B in pixels, drawn uniformly
    p_occlusion: float = 0.5  # chance the context gets occluders (o_c)
    occluders: tuple[int, int] = (1, 3)  # number of occluders (rectangles or ellipses), inclusive
    occluder_size: tuple[float, float] = (0.2, 0.5)  # occluder side / diameter, fraction of frame
    p_blank: float = 0.0  # chance the whole context is occluded (o_c = 0): x must then come from
    # its tokens alone, which keeps E, Q informative while F could copy (ours, not in the paper)
    occluder_fill: str = "zero"  # what the occluded context shows: "zero" (x_c = o_c ⊗ B(A(x)),
    # the paper) or "other": another sample of the batch there, augmented and blurred alike —
    # content that looks valid but is wrong, the way a stale context is after motion (the mask
    # target stays "use the tokens" there). Ours, not in the paper.
    analytic_affine_inverse: bool = True  # exact inverse for affine-only samples (App. C)
    inversion_sigma: float = 1.0  # std (cells) of the 3×3 Gaussian B of Alg. C1

    def __post_init__(self) -> None:
        probabilities = ("p_rotation", "p_scale", "p_translation", "p_elastic", "p_blur",
                         "p_occlusion", "p_blank")
        for name in probabilities:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{name}: a probability in [0, 1], got {value}")
        for name in ("scale_range", "blur_sigma", "occluders", "occluder_size"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"AugmentConfig.{name}: expected (low, high), got {(lo, hi)}")
        if self.scale_range[0] <= 0:
            raise ValueError(f"AugmentConfig.scale_range: must be positive, got {self.scale_range}")
        if self.blur_sigma[0] < 0 or self.occluders[0] < 0 or self.occluder_size[0] < 0:
            raise ValueError("AugmentConfig: blur_sigma, occluders and occluder_size must be >= 0")
        if self.elastic_grid < 2:
            raise ValueError(f"AugmentConfig.elastic_grid: at least 2, got {self.elastic_grid}")
        if self.occluder_fill not in ("zero", "other"):
            raise ValueError(f"AugmentConfig.occluder_fill: 'zero' or 'other', got "
                             f"{self.occluder_fill!r}")


class AugmentationFlow(NamedTuple):
    flow: torch.Tensor  # (B, 2, H, W) a_c: A(x) = W(x, a_c)
    inverse: torch.Tensor  # (B, 2, H, W) f_c: W(A(x), f_c) ≈ x
    exact_fraction: torch.Tensor  # (B,) share of cells inverted exactly (1 for analytic inverses)


class SelfSupervision(NamedTuple):
    context: torch.Tensor  # (B, 3, H, W) x_c = o_c ⊗ B(A(x))
    flow_target: torch.Tensor  # (B, 2, H, W) f_c, flow from A(x) to x (target of f̂_c, Eq. 7)
    mask_target: torch.Tensor  # (B, 1, H, W) 1 − o'_c, target of σ(m̂_c) (1 = context occluded)
    visibility: torch.Tensor  # (B, 1, H, W) o'_c = W(o_c, f_c) in [0, 1] (1 = visible in x_c)
    aug_flow: torch.Tensor  # (B, 2, H, W) a_c
    occlusion: torch.Tensor  # (B, 1, H, W) o_c in context coordinates (1 = visible)
    exact_fraction: torch.Tensor  # (B,) share of f_c obtained exactly


class LevelTargets(NamedTuple):
    flow: torch.Tensor  # (B, 2, h_k, w_k) f_c at level r_k, in level pixels
    mask: torch.Tensor  # (B, 1, h_k, w_k) mask target at level r_k
    visibility: torch.Tensor  # (B, 1, h_k, w_k) o'_c at level r_k


class ContextualLoss(NamedTuple):
    total: torch.Tensor  # scalar L_c = flow + mask (Eq. 7)
    flow: torch.Tensor  # scalar ‖f_c − f̂_c‖² term
    mask: torch.Tensor  # scalar ‖o'_c − σ(m̂_c)‖² term (with our mask_target)


# --------------------------------------------------------------------------- warping


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """W(x, f)(p) = x(p + f(p)) with zero padding: the shared W of ``ccvs_models.flow``.

    Zeros outside the frame (not the border repeat F uses for features): a pixel whose source
    lies outside x holds no content, and an occlusion mask warped from outside reads "occluded".
    """
    return flow_warp(x, flow, padding_mode="zeros")


# --------------------------------------------------------------------------- random draws


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def _bernoulli(n: int, p: float, gen: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=gen, dtype=torch.float64) < p


def sample_augmentation(
    batch: int,
    h: int,
    w: int,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> AugmentationFlow:
    """Draw a_c (App. F) for a batch and compute its inverse f_c (analytic or Alg. C1).

    Each sample independently gets a rotation, a scaling, a translation and an elastic field
    with the config's probabilities, composed as A(x) = W(W(x, affine), elastic): x is sampled
    at S(p) = M (p + e(p) − c) + c + t (M = scale · rotation about the frame centre c, t the
    shift, e the elastic field), and a_c(p) = S(p) − p.
    Returns AugmentationFlow(flow a_c, inverse f_c, exact_fraction), each (B, ...) on ``device``.
    """
    g = generator
    # Draw everything first, in a fixed order, in float64 on the CPU (cheap: O(B) numbers plus
    # the coarse elastic grid), so the result does not depend on the device.
    rot = _bernoulli(batch, cfg.p_rotation, g)
    angle = _uniform(batch, -cfg.rotation_degrees, cfg.rotation_degrees, g) * math.pi / 180
    sca = _bernoulli(batch, cfg.p_scale, g)
    scale = _uniform(batch, *cfg.scale_range, g)
    tra = _bernoulli(batch, cfg.p_translation, g)
    shift = torch.stack(
        [_uniform(batch, -cfg.translation, cfg.translation, g) * w,
         _uniform(batch, -cfg.translation, cfg.translation, g) * h], dim=1
    )
    ela = _bernoulli(batch, cfg.p_elastic, g)
    coarse = 2 * torch.rand(batch, 2, cfg.elastic_grid, cfg.elastic_grid, generator=g) - 1

    angle = torch.where(rot, angle, torch.zeros_like(angle))
    scale = torch.where(sca, scale, torch.ones_like(scale))
    shift = torch.where(tra[:, None], shift, torch.zeros_like(shift))
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    matrix = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # (B,2,2)
    centre = torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=torch.float64)
    offset = centre - (matrix @ centre) + shift  # S(p) = M (p - c) + c + t = M p + offset

    matrix = matrix.to(device=device, dtype=dtype)
    offset = offset.to(device=device, dtype=dtype)
    elastic = F.interpolate(
        coarse.to(device=device, dtype=dtype) * cfg.elastic_amplitude,
        size=(h, w), mode="bicubic", align_corners=True,
    ) * ela.to(device=device, dtype=dtype)[:, None, None, None]

    p = pixel_grid(h, w, dtype=dtype, device=device)[None]  # (1, 2, H, W)
    moved = (p + elastic).flatten(2)  # (B, 2, HW)
    sampled = matrix @ moved + offset[:, :, None]
    flow = sampled.view(batch, 2, h, w) - p

    inverse = torch.empty_like(flow)
    exact = torch.ones(batch, dtype=dtype, device=device)
    numeric = ela.clone() if cfg.analytic_affine_inverse else torch.ones(batch, dtype=torch.bool)
    numeric = numeric.to(device)
    if bool((~numeric).any()):
        inverse[~numeric] = analytic_affine_inverse(matrix[~numeric], offset[~numeric], h, w)
    if bool(numeric.any()):
        inv = invert_flow(flow[numeric], sigma=cfg.inversion_sigma)
        inverse[numeric] = inv.flow
        exact[numeric] = inv.exact_fraction
    return AugmentationFlow(flow=flow, inverse=inverse, exact_fraction=exact)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """B: per-sample separable Gaussian blur with reflect padding.

    x: (B, C, H, W); sigma: (B,) std in pixels (0 = identity). Returns (B, C, H, W).
    """
    b, c, h, w = x.shape
    sigma = sigma.to(device=x.device, dtype=x.dtype)
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    radius = min(radius, (min(h, w) - 1))  # reflect padding needs radius < size
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp(min=1e-6)[:, None]
    k = torch.exp(-(t[None] ** 2) / (2 * safe**2))
    delta = (t == 0).to(x.dtype)[None].expand_as(k)
    k = torch.where(sigma[:, None] > 1e-3, k, delta)
    k = k / k.sum(1, keepdim=True)  # (B, K)
    k = k.repeat_interleave(c, 0)  # one kernel per (sample, channel)
    y = x.reshape(1, b * c, h, w)
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.view(b, c, h, w)


def sample_occlusion(
    batch: int,
    h: int,
    w: int,
    cfg: AugmentConfig,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """o_c: (B, 1, H, W) with 1 = visible and 0 under random rectangles / ellipses (and 0
    everywhere for a ``p_blank`` share of the samples)."""
    g = generator
    k = max(cfg.occluders[1], 1)
    occluded = _bernoulli(batch, cfg.p_occlusion, g)
    count = torch.randint(cfg.occluders[0], cfg.occluders[1] + 1, (batch,), generator=g)
    count = torch.where(occluded, count, torch.zeros_like(count))
    cx = torch.rand(batch, k, generator=g, dtype=torch.float64) * (w - 1)
    cy = torch.rand(batch, k, generator=g, dtype=torch.float64) * (h - 1)
    lo, hi = cfg.occluder_size
    rx = (lo + (hi - lo) * torch.rand(batch, k, generator=g, dtype=torch.float64)) * w / 2
    ry = (lo + (hi - lo) * torch.rand(batch, k, generator=g, dtype=torch.float64)) * h / 2
    ellipse = torch.rand(batch, k, generator=g) < 0.5
    active = torch.arange(k)[None] < count[:, None]  # (B, K)

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype)[:, :, None, None]

    grid = pixel_grid(h, w, dtype=dtype, device=device)
    dx = (grid[0][None, None] - dev(cx)) / dev(rx).clamp(min=1e-6)  # (B, K, H, W)
    dy = (grid[1][None, None] - dev(cy)) / dev(ry).clamp(min=1e-6)
    in_rect = (dx.abs() <= 1) & (dy.abs() <= 1)
    in_ellipse = dx**2 + dy**2 <= 1
    shape = torch.where(ellipse.to(device)[:, :, None, None], in_ellipse, in_rect)
    hidden = (shape & active.to(device)[:, :, None, None]).any(1, keepdim=True)
    if cfg.p_blank > 0:  # drawn last (and only then), so p_blank = 0 keeps the other draws
        blank = _bernoulli(batch, cfg.p_blank, g).to(device)
        hidden = hidden | blank[:, None, None, None]
    return (~hidden).to(dtype)


def make_context(
    x: torch.Tensor, cfg: AugmentConfig = AugmentConfig(), generator: torch.Generator | None = None
) -> SelfSupervision:
    """Build the self-supervised context of §3.2 / App. F from static frames x.

    x: (B, 3, H, W) frames (any range; occluded pixels become 0). The context has x's dtype; the
    flows and masks are fp32 (fp64 for fp64 input) whatever x's dtype.
    Returns SelfSupervision with x_c = o_c ⊗ B(A(x)), the flow target f_c, the mask target
    1 − o'_c and o'_c = W(o_c, f_c). Deterministic given ``generator``. With
    ``cfg.occluder_fill = "other"`` (and B > 1) the occluded pixels show B(A(x)) of the previous
    sample in the batch instead of zeros; the targets are the same.
    """
    if x.ndim != 4:
        raise ValueError(f"make_context: expected frames (B, C, H, W), got {tuple(x.shape)}")
    b, _, h, w = x.shape
    out_dtype = x.dtype
    # Pixel coordinates need fp32 at least (bf16 cannot hold 63.25); the context is cast back.
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    with torch.no_grad():
        aug = sample_augmentation(b, h, w, cfg, generator, device=x.device, dtype=dtype)
        occlusion = sample_occlusion(b, h, w, cfg, generator, device=x.device, dtype=dtype)
        blurred = _bernoulli(b, cfg.p_blur, generator)
        sigma = _uniform(b, *cfg.blur_sigma, generator)
        sigma = torch.where(blurred, sigma, torch.zeros_like(sigma))

        augmented = warp(x, aug.flow)  # A(x) = W(x, a_c)
        # Cells of A(x) whose source lies outside x hold padding, not content: occluded too.
        inside = warp(torch.ones_like(x[:, :1]), aug.flow) > 0.999
        occlusion = occlusion * inside.to(x.dtype)
        context = occlusion * gaussian_blur(augmented, sigma)  # x_c = o_c ⊗ B(A(x))
        if cfg.occluder_fill == "other" and b > 1:  # sample i's occluders show sample i − 1
            context = context + (1 - occlusion) * gaussian_blur(augmented.roll(1, 0), sigma)
        visibility = warp(occlusion, aug.inverse).clamp(0, 1)  # o'_c = W(o_c, f_c)
    return SelfSupervision(
        context=context.to(out_dtype),
        flow_target=aug.inverse,
        mask_target=1.0 - visibility,
        visibility=visibility,
        aug_flow=aug.flow,
        occlusion=occlusion,
        exact_fraction=aug.exact_fraction,
    )


# --------------------------------------------------------------------------- targets at r_k


def downsample_flow(flow: torch.Tensor, factor: int) -> torch.Tensor:
    """Flow at a coarser level: (B, 2, H, W) → (B, 2, H/factor, W/factor), in level pixels.

    Area (average) pooling of the displacement, divided by ``factor``: a level-k pixel covers
    factor × factor full-resolution pixels, so a shift of d pixels there is d / factor.
    """
    return _pool(flow, factor, "downsample_flow") / factor


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Mask at a coarser level by area pooling: (B, 1, H, W) → (B, 1, H/factor, W/factor)."""
    return _pool(mask, factor, "downsample_mask")


def _pool(t: torch.Tensor, factor: int, what: str) -> torch.Tensor:
    if factor < 1 or t.shape[-1] % factor or t.shape[-2] % factor:
        raise ValueError(f"{what}: size {tuple(t.shape[-2:])} is not divisible by factor {factor}")
    return t if factor == 1 else F.avg_pool2d(t, factor)


def targets_at(ss: SelfSupervision, size: tuple[int, int]) -> LevelTargets:
    """The Eq. (7) targets at a level r_k of spatial size (h_k, w_k) (a divisor of H, W)."""
    h, w = ss.flow_target.shape[-2:]
    if h % size[0] or w % size[1] or h // size[0] != w // size[1]:
        raise ValueError(f"targets_at: level size {size} does not divide {(h, w)} evenly")
    factor = h // size[0]
    return LevelTargets(
        flow=downsample_flow(ss.flow_target, factor),
        mask=downsample_mask(ss.mask_target, factor),
        visibility=downsample_mask(ss.visibility, factor),
    )


def contextual_loss(
    pred_flow: torch.Tensor,
    pred_mask_logits: torch.Tensor,
    flow_target: torch.Tensor,
    mask_target: torch.Tensor,
    visibility: torch.Tensor | None = None,
) -> ContextualLoss:
    """L_c of Eq. (7): ‖f_c − f̂_c‖² + ‖o'_c − σ(m̂_c)‖², means over pixels.

    pred_flow f̂_c: (B, 2, h, w); pred_mask_logits m̂_c: (B, 1, h, w); flow_target f_c and
    mask_target (= 1 − o'_c, see the module docstring) at the same size.
    visibility o'_c (B, 1, h, w) or None: when given, the flow term is the squared flow error
    (summed over x, y) weighted by o'_c and averaged over visible pixels (Fig. F1: flows are
    compared in the visible context); when None, it is averaged over all pixels.
    """
    if pred_flow.shape != flow_target.shape or pred_mask_logits.shape != mask_target.shape:
        raise ValueError(
            f"contextual_loss: prediction/target shapes differ: flow {tuple(pred_flow.shape)} vs "
            f"{tuple(flow_target.shape)}, mask {tuple(pred_mask_logits.shape)} vs "
            f"{tuple(mask_target.shape)}"
        )
    err = (pred_flow - flow_target).pow(2).sum(1, keepdim=True)  # (B, 1, h, w)
    if visibility is None:
        flow_term = err.mean()
    else:
        flow_term = (err * visibility).sum() / visibility.sum().clamp(min=1.0)
    mask_term = (torch.sigmoid(pred_mask_logits) - mask_target).pow(2).mean()
    return ContextualLoss(total=flow_term + mask_term, flow=flow_term, mask=mask_term)


__all__ = [
    "AugmentConfig",
    "AugmentationFlow",
    "ContextualLoss",
    "LevelTargets",
    "SelfSupervision",
    "contextual_loss",
    "downsample_flow",
    "downsample_mask",
    "gaussian_blur",
    "make_context",
    "sample_augmentation",
    "sample_occlusion",
    "targets_at",
    "warp",
]
