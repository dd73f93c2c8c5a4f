"""F (ccvs_models/flow.py): warping W, cost volume, Eq. (1), Eq. (9), one F level."""

from __future__ import annotations

import pytest
import torch

from ccvs_models.flow import (
    FlowLevel,
    aggregate_context,
    correlation,
    fuse,
    fuse_single,
    unit_rms,
    upsample_flow,
    warp,
)

torch.set_num_threads(1)


def constant_flow(b: int, h: int, w: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(b, 2, h, w)
    flow[:, 0] = dx
    flow[:, 1] = dy
    return flow


# --------------------------------------------------------------------------- W


@pytest.mark.parametrize("size", [(8, 8), (7, 12), (64, 64), (1, 5)])
def test_zero_flow_is_the_identity(size):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size)
    out = warp(x, torch.zeros(2, 2, *size))
    # Exact up to grid_sample's fp32 coordinate normalisation (~1e-6 px × local gradient).
    assert torch.allclose(out, x, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dx,dy", [(2, 0), (0, 3), (-1, 2), (3, -3), (-7, 5)])
def test_integer_flow_moves_content_exactly(dx, dy):
    torch.manual_seed(0)
    h, w = 40, 64
    x = torch.randn(1, 4, h, w)
    out = warp(x, constant_flow(1, h, w, dx, dy))
    # Backward warping: out[y, x] = in[y + dy, x + dx] (channel 0 = x, channel 1 = y).
    ys = slice(max(0, -dy), h - max(0, dy))
    xs = slice(max(0, -dx), w - max(0, dx))
    src = x[:, :, ys.start + dy : ys.stop + dy, xs.start + dx : xs.stop + dx]
    assert torch.allclose(out[:, :, ys, xs], src, atol=1e-4, rtol=0)
    # A feature that is a single bright pixel lands where the flow says.
    spike = torch.zeros(1, 1, h, w)
    spike[0, 0, 20, 30] = 1.0
    moved = warp(spike, constant_flow(1, h, w, dx, dy))
    assert moved[0, 0, 20 - dy, 30 - dx].item() == pytest.approx(1.0, abs=1e-5)
    assert moved.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_half_pixel_flow_interpolates_and_padding_modes_differ():
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5).contiguous()
    out = warp(x, constant_flow(1, 3, 5, 0.5, 0.0))
    assert torch.allclose(out[0, 0, 1, :4], torch.tensor([0.5, 1.5, 2.5, 3.5]))
    far = constant_flow(1, 3, 5, 10.0, 0.0)
    assert torch.allclose(warp(x, far, padding_mode="border"), torch.full_like(x, 4.0))
    assert torch.allclose(warp(x, far, padding_mode="zeros"), torch.zeros_like(x))


def test_warp_is_differentiable_in_features_and_flow():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    flow = (torch.rand(1, 2, 6, 6) * 2 - 1).requires_grad_()
    warp(x, flow).square().sum().backward()
    assert x.grad.abs().sum() > 0 and flow.grad.abs().sum() > 0


def test_warp_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="warp"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 4, 5))
    with pytest.raises(ValueError, match="warp"):
        warp(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


def test_upsample_flow_scales_pixel_units():
    flow = constant_flow(2, 4, 6, 1.5, -2.0)
    up = upsample_flow(flow, (8, 12))
    assert up.shape == (2, 2, 8, 12)
    assert torch.allclose(up[:, 0], torch.full((2, 8, 12), 3.0))
    assert torch.allclose(up[:, 1], torch.full((2, 8, 12), -4.0))


# --------------------------------------------------------------------------- match


@pytest.mark.parametrize("dx,dy", [(0, 0), (2, -1), (-3, 3), (1, 2)])
def test_correlation_peaks_at_the_true_shift(dx, dy):
    torch.manual_seed(0)
    r, h, w = 3, 16, 16
    # Unit feature vectors: by Cauchy–Schwarz the true match is the unique maximum.
    e = torch.nn.functional.normalize(torch.randn(2, 16, h, w), dim=1)
    # d[y, x] = e[y + dy, x + dx]: the best match of d at (y, x) is e at (y + dy, x + dx).
    d = torch.roll(e, shifts=(-dy, -dx), dims=(2, 3))
    cost = correlation(d, e, r)
    assert cost.shape == (2, (2 * r + 1) ** 2, h, w)
    best = cost.argmax(1)[:, r : h - r, r : w - r]
    assert (best == (dy + r) * (2 * r + 1) + (dx + r)).all()


def test_correlation_values_and_gradients():
    torch.manual_seed(0)
    d = torch.randn(2, 5, 6, 7, dtype=torch.double, requires_grad=True)
    e = torch.randn(2, 5, 6, 7, dtype=torch.double, requires_grad=True)
    cost = correlation(d, e, 2)
    # Channel for (dy, dx) = (1, -2) at (y, x) = (3, 4): mean_c d[c, 3, 4] · e[c, 4, 2].
    k = (1 + 2) * 5 + (-2 + 2)
    assert torch.allclose(cost[:, k, 3, 4], (d[:, :, 3, 4] * e[:, :, 4, 2]).mean(1))
    assert (cost[:, 0, 0, :] == 0).all()  # (dy, dx) = (−2, −2) falls outside e on row 0
    small_d = d[:1, :3, :4, :5].detach().clone().requires_grad_()
    small_e = e[:1, :3, :4, :5].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: correlation(a, b, 2), (small_d, small_e), fast_mode=True
    )


# --------------------------------------------------------------------------- fuse


def test_eq9_confidences_sum_to_one_and_follow_the_formula():
    torch.manual_seed(0)
    masks = torch.randn(2, 3, 1, 4, 4) * 3
    warped = torch.randn(2, 3, 5, 4, 4)
    agg = aggregate_context(warped, masks)
    assert torch.allclose(agg.confidence.sum(1), torch.ones(2, 1, 4, 4), atol=1e-6)
    relevance = 1 - torch.sigmoid(masks)
    expected = relevance / relevance.sum(1, keepdim=True)
    assert torch.allclose(agg.confidence, expected, atol=1e-6)
    assert torch.allclose(agg.mask, (expected * masks).sum(1), atol=1e-5)
    assert torch.allclose(agg.warped, (expected * warped).sum(1), atol=1e-5)


def test_eq9_is_safe_when_every_mask_rejects_the_context():
    masks = torch.full((1, 4, 1, 2, 2), 60.0)  # σ(m) = 1 in fp32: Σ(1 − σ) is 0
    masks[:, 0] = 50.0
    agg = aggregate_context(torch.randn(1, 4, 3, 2, 2), masks)
    assert torch.isfinite(agg.confidence).all() and torch.isfinite(agg.warped).all()
    assert torch.allclose(agg.confidence.sum(1), torch.ones(1, 1, 2, 2))
    assert (agg.confidence[:, 0] > 0.99).all()  # the least-rejected frame dominates
    assert (torch.sigmoid(agg.mask) > 0.999).all()  # and the decoded features are kept


def test_eq9_prefers_the_frame_whose_mask_accepts_the_context():
    warped = torch.stack([torch.full((3, 2, 2), 1.0), torch.full((3, 2, 2), -1.0)])[None]
    masks = torch.stack([torch.full((1, 2, 2), -8.0), torch.full((1, 2, 2), 8.0)])[None]
    agg = aggregate_context(warped, masks)
    assert torch.allclose(agg.warped, torch.ones(1, 3, 2, 2), atol=1e-3)


def test_single_context_frame_reduces_exactly_to_eq1():
    torch.manual_seed(0)
    d = torch.randn(2, 5, 4, 4)
    e = torch.randn(2, 5, 4, 4)
    m = torch.randn(2, 1, 4, 4) * 2
    fused, agg = fuse(d, e[:, None], m[:, None])
    assert torch.equal(agg.confidence, torch.ones_like(agg.confidence))
    assert torch.equal(fused, fuse_single(d, e, m))
    assert torch.allclose(fused, torch.sigmoid(m) * d + (1 - torch.sigmoid(m)) * e)


# --------------------------------------------------------------------------- one level of F


def randomize_last_layers(level: FlowLevel) -> None:
    """The residual heads start at zero; give them weights so the test sees a real flow."""
    for stack in (level.match, level.refine):
        torch.nn.init.normal_(stack[-1].weight, std=0.05)
        torch.nn.init.normal_(stack[-1].bias, std=0.5)


def test_flow_level_starts_from_the_prior_and_fuses_eq1():
    torch.manual_seed(0)
    level = FlowLevel(channels=6, radius=1, hidden=8, corr_dim=4)
    d = torch.randn(2, 6, 8, 8)
    e = torch.randn(2, 1, 6, 8, 8)
    prior = torch.zeros(2, 1, 2, 8, 8)
    prior[:, :, 0] = 1.0  # one pixel to the right
    out = level(d, e, prior, torch.zeros(2, 1, 1, 8, 8))
    assert torch.equal(out.flow, prior)  # zero-initialised heads: flow = prior
    expected = 0.5 * d + 0.5 * warp(e[:, 0], prior[:, 0])
    assert torch.allclose(out.d, expected, atol=1e-6)
    assert torch.equal(out.fused_mask, out.mask[:, 0])


def test_unit_rms_and_scale_free_matching():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 4, 4) * 0.1  # E's features are ~0.1 at init (eps = 1e-6 of the MS)
    u = unit_rms(t)
    assert torch.allclose(u.pow(2).mean(1), torch.ones(2, 4, 4), atol=1e-3)
    assert torch.allclose(unit_rms(t * 30.0), u, atol=1e-3)
    # F's flow and mask do not depend on the scale of E's / D's features (tiny at init).
    level = FlowLevel(channels=6, radius=1, hidden=8, corr_dim=4)
    randomize_last_layers(level)
    torch.nn.init.zeros_(level.key.bias)
    d, e = torch.randn(2, 6, 8, 8), torch.randn(2, 1, 6, 8, 8)
    small, big = level(d * 0.1, e * 0.1), level(d, e)
    assert torch.allclose(small.flow, big.flow, atol=1e-3)
    assert torch.allclose(small.mask, big.mask, atol=1e-3)
    assert big.flow.abs().max() > 1e-3  # the heads do react to the features


def test_flow_level_without_prior_starts_at_zero_flow_and_the_mask_init():
    torch.manual_seed(0)
    level = FlowLevel(channels=6, radius=1, hidden=8, corr_dim=4, mask_init=-2.0)
    d = torch.randn(2, 6, 8, 8)
    e = torch.randn(2, 1, 6, 8, 8)
    out = level(d, e)
    assert torch.equal(out.flow, torch.zeros_like(out.flow))
    assert torch.allclose(out.mask, torch.full_like(out.mask, -2.0))
    keep = torch.sigmoid(torch.tensor(-2.0))  # ≈ 0.12: mostly the (unwarped) context
    assert torch.allclose(out.d, keep * d + (1 - keep) * e[:, 0], atol=1e-6)


def test_flow_level_folds_frames_into_the_batch_like_a_per_frame_loop():
    torch.manual_seed(0)
    level = FlowLevel(channels=6, radius=2, hidden=8, corr_dim=4)
    randomize_last_layers(level)
    d = torch.randn(2, 6, 8, 8)
    e = torch.randn(2, 3, 6, 8, 8)
    prior = torch.randn(2, 3, 2, 8, 8)
    out = level(d, e, prior, None)
    assert out.flow.shape == (2, 3, 2, 8, 8) and out.mask.shape == (2, 3, 1, 8, 8)
    for i in range(3):
        single = level(d, e[:, i : i + 1], prior[:, i : i + 1], None)
        assert torch.allclose(single.flow[:, 0], out.flow[:, i], atol=1e-5)
        assert torch.allclose(single.mask[:, 0], out.mask[:, i], atol=1e-5)
    warped = torch.stack([warp(e[:, i], out.flow[:, i]) for i in range(3)], dim=1)
    expected, _ = fuse(d, warped, out.mask)
    assert torch.allclose(out.d, expected, atol=1e-5)
    assert torch.allclose(out.confidence.sum(1), torch.ones(2, 1, 8, 8), atol=1e-6)


def test_flow_level_gradients_reach_the_context_and_every_parameter():
    torch.manual_seed(0)
    level = FlowLevel(channels=4, radius=1, hidden=8, corr_dim=4)
    randomize_last_layers(level)
    d = torch.randn(1, 4, 6, 6, requires_grad=True)
    e = torch.randn(1, 2, 4, 6, 6, requires_grad=True)
    out = level(d, e)
    (out.d.square().sum() + out.flow.square().sum() + out.mask.sum()).backward()
    assert d.grad.abs().sum() > 0 and e.grad.abs().sum() > 0
    for name, p in level.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_flow_level_rejects_mismatched_context():
    level = FlowLevel(channels=4, radius=1, hidden=8)
    with pytest.raises(ValueError, match="does not match"):
        level(torch.zeros(1, 4, 6, 6), torch.zeros(1, 2, 4, 6, 5))
