"""Alg. C1 (App. C): flow inversion by exact scatter + iterative Gaussian fill."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ccvs_models.flow_inversion import analytic_affine_inverse, invert_flow, pixel_grid

torch.set_num_threads(1)
H = W = 48


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Reference backward warp W(x, f)(p) = x(p + f(p)) (the shared convention), written here."""
    h, w = x.shape[-2:]
    c = pixel_grid(h, w)[None] + flow
    grid = torch.stack([2 * c[:, 0] / (w - 1) - 1, 2 * c[:, 1] / (h - 1) - 1], -1)
    return F.grid_sample(x, grid, align_corners=True)


def affine(deg: float, scale: float, shift: tuple[float, float], h: int = H, w: int = W):
    """Matrix/offset of the sampling map S(p) = M (p − c) + c + t, and its flow S(p) − p."""
    a = math.radians(deg)
    m = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    c = torch.tensor([(w - 1) / 2, (h - 1) / 2])
    off = c - m @ c + torch.tensor(shift)
    p = pixel_grid(h, w)
    flow = (m @ p.flatten(1) + off[:, None]).view(2, h, w) - p
    return m[None], off[None], flow[None]


def smooth_image(h: int = H, w: int = W) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([torch.sin(4 * x + 2 * y), torch.cos(3 * y - x), torch.sin(5 * x * y)])
    return img[None]


AFFINES = {
    "rotation": (15.0, 1.0, (0.0, 0.0)),
    "zoom_in": (0.0, 0.8, (0.0, 0.0)),
    "zoom_out": (0.0, 1.2, (0.0, 0.0)),
    "translation": (0.0, 1.0, (5.3, -3.7)),
    "combination": (-12.0, 1.1, (-2.5, 4.0)),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_matches_analytic_inverse_on_cells_with_preimage(name: str) -> None:
    m, off, g = affine(*AFFINES[name])
    inv = invert_flow(g)
    exact = analytic_affine_inverse(m, off, H, W)
    src = pixel_grid(H, W)[None] + exact  # preimage of each cell
    has_pre = ((src >= 0) & (src <= H - 1)).all(1)
    err = (inv.flow - exact).norm(dim=1)
    assert has_pre.float().mean() > 0.6
    assert err[has_pre].max() < 1.0
    assert err[has_pre].mean() < 0.3
    # the fill leaves no hole: every cell completed, no zero where the true inverse is not zero
    assert bool(inv.complete.all())
    nonzero = exact.norm(dim=1) > 1e-3
    assert bool((inv.flow.norm(dim=1)[nonzero] > 0).all())
    assert 0.3 < float(inv.exact_fraction) <= 1.0


def test_fill_interpolates_holes_accurately() -> None:
    # S(p) = 1.25 (p − c) + c spreads the sources 1.25 px apart: ~36 % of the cells inside the
    # image get no direct mapping and are filled; they stay within a pixel of the true inverse.
    m, off, g = affine(0.0, 1.25, (0.0, 0.0))
    inv = invert_flow(g)
    exact = analytic_affine_inverse(m, off, H, W)
    src = pixel_grid(H, W)[None] + exact
    has_pre = ((src >= 0) & (src <= H - 1)).all(1)
    filled = ~inv.exact_mask[:, 0] & has_pre
    assert filled.float().sum() / has_pre.float().sum() > 0.25
    err = (inv.flow - exact).norm(dim=1)
    assert err[filled].max() < 1.0


def test_zero_flow_is_its_own_inverse() -> None:
    inv = invert_flow(torch.zeros(2, 2, 16, 20))
    assert torch.equal(inv.flow, torch.zeros(2, 2, 16, 20))
    assert torch.equal(inv.exact_fraction, torch.ones(2))


def test_integer_translation_is_inverted_exactly_everywhere() -> None:
    g = torch.zeros(1, 2, 16, 16)
    g[:, 0], g[:, 1] = 3.0, -2.0
    inv = invert_flow(g)
    # exact cells get −g; the uncovered border is filled by averaging identical neighbours
    assert torch.allclose(inv.flow[:, 0], torch.full((1, 16, 16), -3.0))
    assert torch.allclose(inv.flow[:, 1], torch.full((1, 16, 16), 2.0))
    assert float(inv.exact_fraction) == pytest.approx((16 - 3) * (16 - 2) / 256)


def test_composition_restores_the_image() -> None:
    # Elastic-like smooth random flow: W(W(x, a), f) ≈ x on the interior, much better than W(x, a).
    gen = torch.Generator().manual_seed(0)
    coarse = (torch.rand(1, 2, 4, 4, generator=gen) * 2 - 1) * 3.0
    a = F.interpolate(coarse, size=(H, W), mode="bicubic", align_corners=True)
    inv = invert_flow(a)
    x = smooth_image()
    back = warp(warp(x, a), inv.flow)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))
    err = (back - x)[inner].abs().mean()
    baseline = (warp(x, a) - x)[inner].abs().mean()
    assert err < 0.02
    assert err < baseline / 5
    assert 0.6 < float(inv.exact_fraction) < 1.0


def _reference_alg_c1(g: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """The paper's Alg. C1 transcribed literally with Python loops (one sample, (2, H, W))."""
    _, h, w = g.shape
    f = torch.zeros_like(g)
    c = torch.zeros(h, w, dtype=torch.bool)
    for r in range(h):
        for q in range(w):
            tr, tq = round(r + float(g[1, r, q])), round(q + float(g[0, r, q]))
            if 0 <= tr < h and 0 <= tq < w:
                f[:, tr, tq] = -g[:, r, q]
                c[tr, tq] = True
    t = torch.tensor([-1.0, 0.0, 1.0])
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k = k1[:, None] * k1[None]
    while not bool(c.all()):
        grown = c.clone()
        grown[1:] |= c[:-1]
        grown[:-1] |= c[1:]
        grown[:, 1:] |= c[:, :-1]
        grown[:, :-1] |= c[:, 1:]
        new = grown & ~c
        fp = F.pad(f, (1, 1, 1, 1))
        cp = F.pad(c.float(), (1, 1, 1, 1))
        for r in range(h):
            for q in range(w):
                if new[r, q]:
                    wsum = (cp[r:r + 3, q:q + 3] * k).sum()
                    f[:, r, q] = (fp[:, r:r + 3, q:q + 3] * k).sum((1, 2)) / wsum
        c |= new
    return f


def test_vectorised_matches_the_literal_algorithm() -> None:
    # Rough flow with many collisions (several sources → one cell) and holes; the batched version
    # must reproduce the sequential algorithm, including "last writer in raster order wins".
    gen = torch.Generator().manual_seed(3)
    g = (torch.rand(3, 2, 10, 12, generator=gen) * 2 - 1) * 2.5
    inv = invert_flow(g)
    for i in range(3):
        ref = _reference_alg_c1(g[i])
        assert torch.allclose(inv.flow[i], ref, atol=1e-5), i


def test_collision_keeps_the_last_source_in_raster_order() -> None:
    g = torch.zeros(1, 2, 3, 3)
    g[0, 0, 0, 0] = 1.0  # (row 0, col 0) → col 1 ; (row 0, col 1) maps to itself afterwards
    inv = invert_flow(g)
    assert float(inv.flow[0, 0, 0, 1]) == 0.0  # cell (0, 1) keeps −g of source (0, 1) = 0
    g[0, 0, 0, 2] = -1.0  # (0, 2) → (0, 1) too, later in raster order: it wins
    inv = invert_flow(g)
    assert float(inv.flow[0, 0, 0, 1]) == 1.0


def test_flow_pointing_off_the_grid_terminates_with_zeros() -> None:
    g = torch.full((2, 2, 8, 8), 100.0)
    g[1] = 0.0  # second sample is fine
    inv = invert_flow(g)
    assert inv.complete.tolist() == [False, True]
    assert torch.equal(inv.flow[0], torch.zeros(2, 8, 8))
    assert float(inv.exact_fraction[0]) == 0.0


def test_batched_equals_per_sample_and_bad_shape_is_an_error() -> None:
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(4, 2, 12, 12, generator=gen) * 2
    batched = invert_flow(g).flow
    single = torch.cat([invert_flow(g[i:i + 1]).flow for i in range(4)])
    assert torch.allclose(batched, single)
    with pytest.raises(ValueError, match=r"\(B, 2, H, W\)"):
        invert_flow(torch.zeros(1, 3, 4, 4))
