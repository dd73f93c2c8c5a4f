"""The flow module F: warping W, matching, refinement and fusion (§3.2 Eq. (1), App. A Fig. A1-(2),
App. D Eq. (9)).

At a decoder level r_k, F estimates, for each context frame i, a flow f_i^k from the encoded
context features e_i^k to the decoded features d_s^k and a fusion-mask logit m_i^k, coarse to
fine (Fig. A1-(2), after LiteFlowNet):

- *match*: a local correlation cost volume between d_s^k and the neighbours of each location in
  W(e_i^k, f_i^{k−1}↑) (the context warped by the upsampled coarser flow), then 2D convs on it
  give a residual flow and mask;
- *refine*: 2D convs on concat[d_s^k, W(e_i^k, f_i^k), f_i^k, m_i^k] give a second residual update
  (d and e enter match and refine through a shared 1×1 projection, see `FlowLevel`);
- *fuse*: App. D Eq. (9) aggregates the c warped contexts e'_i = W(e_i, f_i) and masks m_i with the
  confidences s_i = (1 − σ(m_i)) / Σ_j (1 − σ(m_j)), then Eq. (1) updates
  d_s^k = σ(m_a) ⊗ d_s^k + (1 − σ(m_a)) ⊗ e'_a. With c = 1, s_1 = 1 and this *is* Eq. (1).

Conventions (the training stage's L_c of Eq. (7) and the augmentations must use the same):

- A flow is (B, 2, h, w) in **pixels of its own level**; channel 0 is the horizontal (x, to the
  right) displacement, channel 1 the vertical (y, down) one. (Alg. C1 writes (dh, dw): swap.)
- W is **backward** warping: ``warp(e, f)[y, x] = e[y + f_y(y, x), x + f_x(y, x)]``, bilinear,
  ``grid_sample(align_corners=True)`` so pixel centres sit on integer coordinates. Outside the
  frame it repeats the border (``padding_mode="border"``, the default) or reads zeros
  (``"zeros"``, e.g. for warping an occlusion mask).
- The mask logit m: σ(m) → 1 keeps the decoded d (context occluded/irrelevant), σ(m) → 0 takes the
  warped context (App. B: "white when the source is z_s, black when it is context through F").

Multi-frame F folds the c context frames into the batch (one conv pass for all of them).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------- warping W


def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, 2, h, w) fp32 pixel coordinates (x, y)."""
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((gx, gy), dim=0)[None]


def warp(
    features: torch.Tensor, flow: torch.Tensor, padding_mode: str = "border"
) -> torch.Tensor:
    """W: backward-warp ``features`` (B, C, h, w) by ``flow`` (B, 2, h, w) → (B, C, h, w).

    ``out[:, :, y, x] = features[:, :, y + flow[:, 1, y, x], x + flow[:, 0, y, x]]`` (bilinear;
    flow in pixels, channel 0 = x, channel 1 = y). Zero flow returns ``features`` unchanged; an
    integer flow moves content by whole pixels. Sampling is done in fp32; the result has the
    dtype of ``features``.
    "Unchanged" holds up to grid_sample's fp32 normalisation of the sampling coordinates (about
    1e-6 px, so ~1e-5 on unit-scale features at 64×64); an exact gather-based bilinear warp was
    2.5× slower forward + backward on CPU.
    """
    if features.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"warp: expected features (B, C, h, w) and flow (B, 2, h, w), got "
            f"{tuple(features.shape)} and {tuple(flow.shape)}"
        )
    if features.shape[0] != flow.shape[0] or features.shape[-2:] != flow.shape[-2:]:
        raise ValueError(
            f"warp: features {tuple(features.shape)} and flow {tuple(flow.shape)} differ in "
            "batch or spatial size"
        )
    b, _, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        coords = _base_grid(h, w, features.device) + flow.float()
        # Normalise pixel coordinates to [-1, 1] for align_corners=True (pixel 0 → -1, w−1 → 1).
        scale = torch.tensor(
            [2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], device=features.device
        ).view(1, 2, 1, 1)
        grid = (coords * scale - 1.0).permute(0, 2, 3, 1)
        out = F.grid_sample(
            features.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=True
        )
    return out.to(features.dtype)


def upsample_flow(flow: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize a flow (B, 2, h, w) to ``size`` = (H, W), rescaling its pixel units.

    Coarse-to-fine step of F: a ×2 finer level gets the flow upsampled ×2 and multiplied by 2.
    """
    h, w = flow.shape[-2:]
    if (h, w) == tuple(size):
        return flow
    up = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    ratio = torch.tensor([size[1] / w, size[0] / h], device=flow.device, dtype=flow.dtype)
    return up * ratio.view(1, 2, 1, 1)


def upsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize mask logits (B, 1, h, w) to ``size`` (values unchanged)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- match: cost volume


class _Correlation(torch.autograd.Function):
    """Cost volume with a hand-written backward.

    Autograd through (2r+1)² slices of a padded tensor would allocate a zero-filled padded
    gradient per displacement; here both gradients are accumulated in place in one buffer each,
    which makes the backward pass several times faster on CPU. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, d: torch.Tensor, e: torch.Tensor, radius: int) -> torch.Tensor:
        b, c, h, w = d.shape
        side = 2 * radius + 1
        padded = F.pad(e, (radius, radius, radius, radius))
        out = d.new_empty(b, side * side, h, w)
        for i in range(side * side):
            dy, dx = divmod(i, side)
            torch.sum(d * padded[:, :, dy : dy + h, dx : dx + w], dim=1, out=out[:, i])
        ctx.radius = radius
        ctx.save_for_backward(d, e)
        return out.div_(c)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        d, e = ctx.saved_tensors
        r = ctx.radius
        b, c, h, w = d.shape
        side = 2 * r + 1
        grad = grad / c
        padded = F.pad(e, (r, r, r, r))
        grad_d = torch.zeros_like(d) if ctx.needs_input_grad[0] else None
        grad_padded = torch.zeros_like(padded) if ctx.needs_input_grad[1] else None
        for i in range(side * side):
            dy, dx = divmod(i, side)
            g = grad[:, i : i + 1]
            if grad_d is not None:
                grad_d.addcmul_(g, padded[:, :, dy : dy + h, dx : dx + w])
            if grad_padded is not None:
                grad_padded[:, :, dy : dy + h, dx : dx + w].addcmul_(g, d)
        grad_e = grad_padded[:, :, r : r + h, r : r + w] if grad_padded is not None else None
        return grad_d, grad_e, None


def correlation(d: torch.Tensor, e: torch.Tensor, radius: int) -> torch.Tensor:
    """Local cost volume between ``d`` and the (2r+1)² neighbours of each location in ``e``.

    Args:
        d: (B, C, h, w) decoded features d_s^k.
        e: (B, C, h, w) (warped) context features.
        radius: r, the largest displacement looked at in each direction.

    Returns:
        (B, (2r+1)², h, w); channel ``(dy + r) * (2r+1) + (dx + r)`` holds
        ``mean_c d[c, y, x] · e[c, y + dy, x + dx]`` (zero outside ``e``).

    Plain torch: one product per displacement (a loop over (2r+1)² shifts, never over pixels),
    always in float32 (the output too; under bf16 autocast the next conv casts it): these are
    elementwise products, which bf16 does not speed up on CPU — the loop measured 3× slower in
    bf16 than in fp32 at 16×16, r = 3; an unfold or a shifted-stack formulation was slower still.
    """
    if d.shape != e.shape or d.dim() != 4:
        raise ValueError(
            "correlation: d and e must both be (B, C, h, w), got "
            f"{tuple(d.shape)}, {tuple(e.shape)}"
        )
    if radius < 0:
        raise ValueError(f"correlation: radius must be ≥ 0, got {radius}")
    dtype = torch.promote_types(torch.promote_types(d.dtype, e.dtype), torch.float32)
    return _Correlation.apply(d.to(dtype).contiguous(), e.to(dtype).contiguous(), radius)


# --------------------------------------------------------------------------- fuse: Eq. (1), (9)


def fuse_single(d: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. (1): d = σ(m) ⊗ d + (1 − σ(m)) ⊗ e'.  d, warped: (B, C, h, w); mask: (B, 1, h, w)."""
    keep = torch.sigmoid(mask)
    return keep * d + (1.0 - keep) * warped


class Aggregate(NamedTuple):
    """Eq. (9) over c context frames."""

    warped: torch.Tensor  # (B, C, h, w) e'_a = Σ_i s_i ⊗ e'_i
    mask: torch.Tensor  # (B, 1, h, w) m_a = Σ_i s_i ⊗ m_i (logits)
    confidence: torch.Tensor  # (B, c, 1, h, w) s_i, sums to 1 over i


def aggregate_context(warped: torch.Tensor, masks: torch.Tensor) -> Aggregate:
    """App. D Eq. (9): confidence-weighted average of the c warped contexts.

    Args:
        warped: (B, c, C, h, w) e'_i = W(e_i, f_i).
        masks: (B, c, 1, h, w) mask logits m_i.

    s_i = (1 − σ(m_i)) / Σ_j (1 − σ(m_j)) is computed as softmax_i(log(1 − σ(m_i))) =
    softmax_i(logsigmoid(−m_i)): the same ratio, but it cannot divide by zero when every σ(m_j) → 1
    (it then tends to the ratio of the small terms, as the exact formula does), so no ε is needed,
    and Σ_i s_i = 1 holds to rounding. For c = 1, s_1 = 1 exactly.
    """
    if warped.dim() != 5 or masks.dim() != 5 or masks.shape[2] != 1:
        raise ValueError(
            f"aggregate_context: expected warped (B, c, C, h, w) and masks (B, c, 1, h, w), got "
            f"{tuple(warped.shape)} and {tuple(masks.shape)}"
        )
    confidence = torch.softmax(F.logsigmoid(-masks.float()), dim=1).to(masks.dtype)
    return Aggregate(
        warped=(confidence * warped).sum(1),
        mask=(confidence * masks).sum(1),
        confidence=confidence,
    )


def fuse(
    d: torch.Tensor, warped: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, Aggregate]:
    """Eq. (9) then Eq. (1): d (B, C, h, w), warped (B, c, C, h, w), masks (B, c, 1, h, w)."""
    agg = aggregate_context(warped, masks)
    return fuse_single(d, agg.warped, agg.mask), agg


# --------------------------------------------------------------------------- one level of F


def unit_rms(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each location of (N, C, h, w) to unit root-mean-square over channels.

    F's matching features go through this: the correlation of two of them is then their cosine
    similarity (in [−1, 1]) whatever the scale of E's and D's features. Without it the cost
    volume of a freshly initialised model has a std of ~0.005, F's conv heads see almost
    nothing and the fusion mask stays at its initial value for the whole short demo training.
    """
    return t * torch.rsqrt(t.float().pow(2).mean(1, keepdim=True) + eps).to(t.dtype)



class FlowLevelOutput(NamedTuple):
    """F at one decoder level r_k."""

    d: torch.Tensor  # (B, C, h, w) fused decoder features (Eq. (1) with Eq. (9))
    flow: torch.Tensor  # (B, c, 2, h, w) \hat f_i^k in pixels of this level (x, y)
    mask: torch.Tensor  # (B, c, 1, h, w) \hat m_i^k logits
    fused_mask: torch.Tensor  # (B, 1, h, w) m_a^k logits (= mask[:, 0] when c = 1)
    confidence: torch.Tensor  # (B, c, 1, h, w) s_i^k of Eq. (9)


def _conv_stack(in_ch: int, hidden: int, out_ch: int, slope: float) -> nn.Sequential:
    """Three 3×3 convs with LeakyReLU; the last one starts at zero (F starts from the prior)."""
    last = nn.Conv2d(hidden, out_ch, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden, 3, padding=1),
        nn.LeakyReLU(slope),
        nn.Conv2d(hidden, hidden, 3, padding=1),
        nn.LeakyReLU(slope),
        last,
    )


class FlowLevel(nn.Module):
    """F at one resolution level (Fig. A1-(2)): match → refine → fuse.

    Matching and refinement work on a shared 1×1 projection of the features (``corr_dim``
    channels, LiteFlowNet-style matching features) scaled to unit RMS per location
    (``unit_rms``: the cost volume is a cosine similarity); the fusion uses the full features e^k.
    This is a speed choice (the cost volume and the refine convs cost grows with their input
    channels); the paper does not say which features F's convs see.

    Args:
        channels: C, channels of d_s^k and e^k at this level.
        radius: r of the correlation (match looks (2r+1)² displacements around W(e, f↑)).
        hidden: channels of the match / refine conv stacks.
        corr_dim: channels of the projection. 0 = use the features themselves.
        negative_slope: LeakyReLU slope.
        mask_init: the mask logit used when no prior mask is given (the coarsest F level);
            negative = start by taking the context (σ(m) < 0.5).
    """

    def __init__(
        self,
        channels: int,
        radius: int = 3,
        hidden: int = 32,
        corr_dim: int = 16,
        negative_slope: float = 0.2,
        mask_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.radius = radius
        self.mask_init = mask_init
        self.negative_slope = negative_slope
        self.key = nn.Conv2d(channels, corr_dim, 1) if corr_dim > 0 else nn.Identity()
        key_ch = corr_dim if corr_dim > 0 else channels
        self.match = _conv_stack((2 * radius + 1) ** 2, hidden, 3, negative_slope)
        self.refine = _conv_stack(2 * key_ch + 3, hidden, 3, negative_slope)

    def forward(
        self,
        d: torch.Tensor,
        context: torch.Tensor,
        flow: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> FlowLevelOutput:
        """Estimate f_i^k, m_i^k for every context frame and fuse them into d.

        Args:
            d: (B, C, h, w) decoded features d_s^k.
            context: (B, c, C, h, w) encoded context features e_i^k, c ≥ 1.
            flow: (B, c, 2, h, w) prior flow (the coarser level's, already upsampled), or None
                for zero.
            mask: (B, c, 1, h, w) prior mask logits (upsampled), or None for ``mask_init``.
        """
        b, c, ch, h, w = context.shape
        if d.shape != (b, ch, h, w):
            raise ValueError(
                f"FlowLevel: d {tuple(d.shape)} does not match context {tuple(context.shape)}"
            )
        n = b * c
        # Fold the c frames into the batch: every frame is matched against the same d.
        e_n = context.reshape(n, ch, h, w)
        f = d.new_zeros(n, 2, h, w) if flow is None else flow.reshape(n, 2, h, w)
        m = d.new_full((n, 1, h, w), self.mask_init) if mask is None else mask.reshape(n, 1, h, w)
        key_d = unit_rms(self.key(d))
        key_d = key_d.unsqueeze(1).expand(b, c, *key_d.shape[1:]).reshape(n, -1, h, w)
        key_e = unit_rms(self.key(e_n))

        # match: cost volume between d and the context warped by the prior flow.
        cost = correlation(key_d, warp(key_e, f), self.radius)
        delta = self.match(F.leaky_relu(cost, self.negative_slope))
        f = f + delta[:, :2]
        m = m + delta[:, 2:]

        # refine: residual update from features, flow and mask.
        delta = self.refine(torch.cat((key_d, warp(key_e, f), f, m), dim=1))
        f = f + delta[:, :2]
        m = m + delta[:, 2:]

        # fuse: Eq. (9) + Eq. (1), with the context warped by the final flow.
        warped = warp(e_n, f).view(b, c, ch, h, w)
        m = m.view(b, c, 1, h, w)
        fused, agg = fuse(d, warped, m)
        return FlowLevelOutput(
            d=fused,
            flow=f.view(b, c, 2, h, w),
            mask=m,
            fused_mask=agg.mask,
            confidence=agg.confidence,
        )
