"""Flow inversion approximation (App. C, Alg. C1), batched and vectorised in torch.

Given the augmentation flow g = a_c that builds the augmented view A(x) = W(x, g) (§3.2), Alg. C1
approximates the flow f = f_c "from A(x) to x", i.e. the one with W(W(x, g), f) ≈ x.

Flow convention (shared with ``ccvs_models.flow``): a flow is a (B, 2, H, W) tensor in pixels,
channel 0 = horizontal displacement (x, along columns w), channel 1 = vertical (y, along rows h);
backward warping W(x, f)(p) = x(p + f(p)). The paper writes a flow as (dh, dw) = (g_0, g_1), so
its channel 0 is our channel 1 and vice versa; the algorithm itself is symmetric in the two axes.

Why it works with backward warping: W(x, g)(p) = x(p + g(p)), so the content of pixel p of the
augmented view comes from p + g(p) in x. At the target cell q = round(p + g(p)) the inverse flow
f(q) = −g(p) points back to p, so W(A(x), f)(q) = A(x)(p) = x(p + g(p)) ≈ x(q).

Steps (Alg. C1):
1. exact cells: every source cell p scatters −g(p) to q = round(p + g(p)) when q is inside the
   grid; the completion mask c marks the reached cells. Several sources can reach the same cell;
   the paper's sequential loop keeps the last one in raster order, and so do we (deterministic).
2. fill: repeat c' = D(c) ∧ ¬c (D: dilation along the 4 cardinal directions), i = B(f),
   w = B(c) (B: 3×3 Gaussian convolution, zero padding), f[c'] = i / w, c = c ∨ c', until every
   cell is complete. f is zero outside c, so i / w is the Gaussian-weighted mean of the completed
   neighbours. A sample with no exact cell at all (g sends everything off the grid) keeps f = 0;
   ``max_iterations`` bounds the loop whatever happens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class InvertedFlow(NamedTuple):
    flow: torch.Tensor  # (B, 2, H, W) f ≈ g^{-1}, in pixels, channels (x, y)
    exact_mask: torch.Tensor  # (B, 1, H, W) bool, cells inverted exactly (step 1 of Alg. C1)
    exact_fraction: torch.Tensor  # (B,) float, share of exactly inverted cells (≈ 0.8 in App. C)
    complete: torch.Tensor  # (B,) bool, every cell filled (False only without any exact cell)


def _gaussian3x3(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, 3, 3) Gaussian kernel B of Alg. C1 (normalisation is irrelevant: f = i / w)."""
    t = torch.tensor([-1.0, 0.0, 1.0], dtype=dtype, device=device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return (g[:, None] * g[None, :])[None, None]


def _cardinal_dilation(c: torch.Tensor) -> torch.Tensor:
    """D(c): (B, 1, H, W) bool → bool, each cell ORed with its up/down/left/right neighbours."""
    d = c.clone()
    d[..., 1:, :] |= c[..., :-1, :]
    d[..., :-1, :] |= c[..., 1:, :]
    d[..., :, 1:] |= c[..., :, :-1]
    d[..., :, :-1] |= c[..., :, 1:]
    return d


def invert_flow(
    g: torch.Tensor, *, sigma: float = 1.0, max_iterations: int | None = None
) -> InvertedFlow:
    """Approximate the inverse of flow g by Alg. C1.

    g: (B, 2, H, W) augmentation flow a_c in pixels (channel 0 = x, 1 = y).
    sigma: standard deviation (in cells) of the 3×3 Gaussian B; the paper does not give it.
    max_iterations: bound on the fill loop (default H + W, more than any hole can need).
    Returns InvertedFlow with f: (B, 2, H, W) such that W(W(x, g), f) ≈ x.
    """
    if g.ndim != 4 or g.shape[1] != 2:
        raise ValueError(f"invert_flow: expected a flow (B, 2, H, W), got {tuple(g.shape)}")
    g = g.detach()
    b, _, h, w = g.shape
    dtype = g.dtype if g.dtype.is_floating_point else torch.float32
    g = g.to(dtype)
    device = g.device
    n = h * w

    # Step 1: exact cells. Target q = round(p + g(p)), kept when inside the grid.
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype),
        torch.arange(w, device=device, dtype=dtype),
        indexing="ij",
    )
    tx = torch.round(xs + g[:, 0])  # (B, H, W)
    ty = torch.round(ys + g[:, 1])
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    target = (ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1)).long().view(b, n)
    source = torch.arange(n, device=device).expand(b, n)
    # Last writer in raster order wins, as in the paper's sequential loop: the winner of a
    # target cell is the largest source index that reaches it (-1 = none).
    src_or_none = torch.where(inside.view(b, n), source, torch.full_like(source, -1))
    winner = torch.full((b, n), -1, dtype=torch.long, device=device)
    winner.scatter_reduce_(1, target, src_or_none, reduce="amax", include_self=True)
    c = winner >= 0  # (B, N)
    g_flat = g.reshape(b, 2, n)
    f = -torch.gather(g_flat, 2, winner.clamp(min=0)[:, None].expand(b, 2, n))
    f = torch.where(c[:, None], f, torch.zeros_like(f)).view(b, 2, h, w)
    c = c.view(b, 1, h, w)
    exact = c.clone()

    # Step 2: iterative Gaussian-weighted fill from the completed neighbours.
    kernel = _gaussian3x3(sigma, dtype, device)
    limit = max_iterations if max_iterations is not None else h + w
    for _ in range(limit):
        new = _cardinal_dilation(c) & ~c  # c'
        if not bool(new.any()):  # full, or samples without any exact cell (nothing to grow)
            break
        i = F.conv2d(f.reshape(b * 2, 1, h, w), kernel, padding=1).view(b, 2, h, w)
        wgt = F.conv2d(c.to(dtype), kernel, padding=1)
        f = torch.where(new, i / wgt.clamp(min=torch.finfo(dtype).tiny), f)
        c = c | new

    return InvertedFlow(
        flow=f,
        exact_mask=exact,
        exact_fraction=exact.flatten(1).to(dtype).mean(1),
        complete=c.flatten(1).all(1),
    )


def analytic_affine_inverse(
    matrix: torch.Tensor, offset: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Exact inverse of an affine augmentation flow (App. C: "determined analytically").

    The affine flow a(p) = M p + t − p (p = (x, y) in pixels) samples x at s(p) = M p + t.
    Its inverse f satisfies q + f(q) = s^{-1}(q) = M^{-1}(q − t), so f(q) = M^{-1}(q − t) − q.
    matrix: (B, 2, 2) M acting on (x, y); offset: (B, 2) t. Returns (B, 2, H, W).
    """
    grid = pixel_grid(h, w, dtype=matrix.dtype, device=matrix.device)  # (2, H, W)
    q = grid.view(1, 2, h * w)
    minv = torch.linalg.inv(matrix)
    src = minv @ (q - offset[:, :, None])
    return (src - q).view(-1, 2, h, w)


def pixel_grid(h: int, w: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2, H, W) pixel coordinates p = (x, y): channel 0 = column index, 1 = row index."""
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device),
        torch.arange(w, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([xs, ys])


__all__ = ["InvertedFlow", "analytic_affine_inverse", "invert_flow", "pixel_grid"]
