"""Self-supervised context of §3.2 / App. F: augmentation flows, blur, occlusion, Eq. (7)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ccvs_models.augment import (
    AugmentConfig,
    contextual_loss,
    downsample_flow,
    downsample_mask,
    gaussian_blur,
    make_context,
    sample_augmentation,
    sample_occlusion,
    targets_at,
    warp,
)
from ccvs_models.flow_inversion import pixel_grid

torch.set_num_threads(1)
H = W = 32
OFF = dict(p_rotation=0.0, p_scale=0.0, p_translation=0.0, p_elastic=0.0, p_blur=0.0,
           p_occlusion=0.0)


def cfg(**kw) -> AugmentConfig:
    return dataclasses.replace(AugmentConfig(**OFF), **kw)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_images(b: int = 4, h: int = H, w: int = W) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    k = torch.arange(1, b + 1, dtype=torch.float32)[:, None, None]
    channels = [torch.sin(3 * x + k * y), torch.cos(2 * y - k * x), torch.sin(4 * x * y + k)]
    return torch.stack(channels, 1)


def test_deterministic_given_generator_and_seed_sensitive() -> None:
    x = smooth_images()
    a, b = make_context(x, AugmentConfig(), gen(5)), make_context(x, AugmentConfig(), gen(5))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = make_context(x, AugmentConfig(), gen(6))
    assert not torch.equal(a.aug_flow, c.aug_flow)


def test_all_off_is_identity() -> None:
    x = smooth_images()
    ss = make_context(x, cfg(), gen())
    assert torch.allclose(ss.context, x, atol=1e-5)
    assert torch.count_nonzero(ss.aug_flow) == 0 and torch.count_nonzero(ss.flow_target) == 0
    assert torch.allclose(ss.visibility, torch.ones_like(ss.visibility))
    assert torch.allclose(ss.mask_target, torch.zeros_like(ss.mask_target))


def test_shapes_ranges_and_target_relations() -> None:
    x = smooth_images(6)
    ss = make_context(x, AugmentConfig(p_occlusion=1.0), gen(1))
    assert ss.context.shape == (6, 3, H, W)
    assert ss.flow_target.shape == ss.aug_flow.shape == (6, 2, H, W)
    assert ss.mask_target.shape == ss.visibility.shape == ss.occlusion.shape == (6, 1, H, W)
    assert set(ss.occlusion.unique().tolist()) <= {0.0, 1.0}
    assert ss.visibility.min() >= 0 and ss.visibility.max() <= 1
    assert torch.allclose(ss.mask_target, 1 - ss.visibility)
    # the context is zero exactly where o_c hides it
    assert torch.count_nonzero(ss.context * (1 - ss.occlusion)) == 0
    assert ((ss.exact_fraction > 0.5) & (ss.exact_fraction <= 1)).all()


@pytest.mark.parametrize("analytic", [True, False])
def test_inverse_flow_brings_the_context_back_onto_x(analytic: bool) -> None:
    # No blur: where x's pixel is visible in the context, W(x_c, f_c) ≈ x (and ≈ 0 where hidden).
    c = cfg(p_rotation=1.0, p_scale=1.0, p_translation=1.0, p_elastic=0.5, p_occlusion=1.0,
            analytic_affine_inverse=analytic)
    x = smooth_images(6)
    ss = make_context(x, c, gen(2))
    back = warp(ss.context, ss.flow_target)
    visible = (ss.visibility > 0.999).expand_as(x)
    hidden = (ss.visibility < 1e-3).expand_as(x)
    assert visible.float().mean() > 0.3 and hidden.float().mean() > 0.02
    assert (back - x)[visible].abs().mean() < 0.03
    assert back[hidden].abs().max() < 1e-3  # |x| <= 1, visible weight < 1e-3
    # without the inverse flow the context would not line up
    assert (ss.context - x)[visible].abs().mean() > 5 * (back - x)[visible].abs().mean()


def test_analytic_and_alg_c1_inverses_agree_on_affine_samples() -> None:
    c = cfg(p_rotation=1.0, p_scale=1.0, p_translation=1.0)
    a = sample_augmentation(4, H, W, c, gen(3))
    b = sample_augmentation(4, H, W, dataclasses.replace(c, analytic_affine_inverse=False), gen(3))
    assert torch.equal(a.flow, b.flow)
    assert torch.equal(a.exact_fraction, torch.ones(4))
    assert (b.exact_fraction < 1).any()
    src = pixel_grid(H, W)[None] + a.inverse
    has_pre = ((src >= 0) & (src <= H - 1)).all(1)
    assert (a.inverse - b.inverse).norm(dim=1)[has_pre].max() < 1.0


def test_each_component_alone() -> None:
    centre = (H // 2, W // 2)
    # translation: a constant flow, within the configured fraction of the frame
    t = sample_augmentation(8, H, W, cfg(p_translation=1.0, translation=0.1), gen()).flow
    assert torch.allclose(t, t[:, :, :1, :1].expand_as(t), atol=1e-5)
    assert t.abs().max() <= 0.1 * W + 1e-4 and t.abs().max() > 0.5
    # rotation: det 1 about the centre, so |flow| grows linearly with the radius, ~0 at the centre
    r = sample_augmentation(8, H, W, cfg(p_rotation=1.0, rotation_degrees=20), gen()).flow
    mid = r[:, :, centre[0] - 1:centre[0] + 1, centre[1] - 1:centre[1] + 1]
    assert mid.abs().max() < 0.2 and r.abs().max() > 1.0
    # scaling: radial flow (parallel to p − c)
    s = sample_augmentation(8, H, W, cfg(p_scale=1.0, scale_range=(0.8, 1.2)), gen()).flow
    rel = pixel_grid(H, W) - torch.tensor([(W - 1) / 2, (H - 1) / 2])[:, None, None]
    cross = s[:, 0] * rel[1] - s[:, 1] * rel[0]
    assert cross.abs().max() < 1e-3 and s.abs().max() > 0.5
    # elastic: bounded by ~the amplitude, smooth, not constant
    e = sample_augmentation(8, H, W, cfg(p_elastic=1.0, elastic_amplitude=2.0), gen()).flow
    assert e.abs().max() <= 2.0 * 1.3 and e.std() > 0.2
    assert (e[..., 1:] - e[..., :-1]).abs().max() < 1.0  # no folding at this amplitude


def test_combinations_are_random_per_sample() -> None:
    a = sample_augmentation(64, H, W, AugmentConfig(), gen(4))
    identity = a.flow.flatten(1).abs().amax(1) < 1e-6
    elastic_inverted = a.exact_fraction < 1
    # with p = 0.5 per component: some identity samples, some with elastic, most something
    assert 0 < int(identity.sum()) < 16
    assert 10 < int(elastic_inverted.sum()) < 54


def test_gaussian_blur() -> None:
    noise = torch.randn(3, 3, 24, 24, generator=gen())
    out = gaussian_blur(noise, torch.tensor([0.0, 0.8, 2.0]))
    assert torch.allclose(out[0], noise[0])  # sigma 0 = identity
    assert out[1].std() < 0.7 * noise[1].std() and out[2].std() < out[1].std()
    const = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(gaussian_blur(const, torch.tensor([1.0, 2.5])), const, atol=1e-6)
    assert torch.allclose(out.mean(), noise.mean(), atol=0.05)


def test_occlusion_masks() -> None:
    none = sample_occlusion(4, H, W, cfg(p_occlusion=0.0), gen())
    assert torch.equal(none, torch.ones(4, 1, H, W))
    some = sample_occlusion(16, H, W, cfg(p_occlusion=1.0, occluders=(1, 3)), gen())
    hidden = 1 - some.flatten(1).mean(1)
    assert (hidden > 0).all() and (hidden < 0.9).all()


def test_blank_context_hides_everything_and_asks_for_the_decoded_features() -> None:
    x = smooth_images(8)
    ss = make_context(x, cfg(p_blank=1.0), gen())
    assert torch.count_nonzero(ss.context) == 0
    assert torch.equal(ss.mask_target, torch.ones_like(ss.mask_target))  # σ(m) → 1: keep d
    some = sample_occlusion(64, H, W, cfg(p_blank=0.5), gen(1))
    blank = (some.flatten(1).amax(1) == 0).float().mean()
    assert 0.2 < blank < 0.8 and ((some == 0) | (some == 1)).all()
    # p_blank = 0 draws nothing more: the other occluders are unchanged.
    base = cfg(p_occlusion=1.0)
    assert torch.equal(sample_occlusion(4, H, W, base, gen(2)),
                       sample_occlusion(4, H, W, dataclasses.replace(base, p_blank=0.0), gen(2)))


def test_occluders_filled_with_another_sample_keep_the_targets() -> None:
    x = smooth_images(4)
    base = cfg(p_occlusion=1.0, occluders=(2, 3), p_translation=1.0, p_blur=1.0)
    zero = make_context(x, base, gen(3))
    other = make_context(x, dataclasses.replace(base, occluder_fill="other"), gen(3))
    hidden = zero.occlusion == 0  # (B, 1, H, W)
    assert hidden.any() and (~hidden).any()
    # visible pixels and every target are those of the paper's zero fill (same draws) ...
    visible = (~hidden).expand_as(x)
    assert torch.equal(other.context[visible], zero.context[visible])
    for name in ("flow_target", "mask_target", "visibility"):
        assert torch.equal(getattr(other, name), getattr(zero, name))
    # ... and the occluded ones show sample i − 1, augmented and blurred like sample i
    shown = other.context - zero.context
    assert torch.count_nonzero(shown[visible]) == 0
    assert shown[hidden.expand_as(x)].abs().mean() > 0.1
    with pytest.raises(ValueError, match="occluder_fill"):
        cfg(occluder_fill="noise")


def test_downsampled_targets_are_consistent_with_warping_at_the_coarse_level() -> None:
    # An image translated by 4 px at full resolution = the pooled image translated by 2 px.
    x = smooth_images(2, 32, 32)
    flow = torch.zeros(2, 2, 32, 32)
    flow[:, 0], flow[:, 1] = 4.0, -2.0
    fine = torch.nn.functional.avg_pool2d(warp(x, flow), 2)
    coarse = warp(torch.nn.functional.avg_pool2d(x, 2), downsample_flow(flow, 2))
    assert torch.allclose(downsample_flow(flow, 2)[:, 0], torch.full((2, 16, 16), 2.0))
    assert torch.allclose(fine[..., 2:-3, 1:-3], coarse[..., 2:-3, 1:-3], atol=1e-5)
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :] = 1
    assert torch.equal(downsample_mask(m, 4), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]))
    with pytest.raises(ValueError, match="not divisible"):
        downsample_flow(torch.zeros(1, 2, 10, 10), 4)


def test_targets_at_levels() -> None:
    ss = make_context(smooth_images(2), AugmentConfig(), gen())
    for size in ((16, 16), (8, 8), (4, 4)):
        t = targets_at(ss, size)
        assert t.flow.shape == (2, 2, *size) and t.mask.shape == t.visibility.shape == (2, 1, *size)
        assert torch.allclose(t.mask, 1 - t.visibility, atol=1e-6)
    with pytest.raises(ValueError, match="does not divide"):
        targets_at(ss, (5, 5))


def test_contextual_loss_formula_and_visibility_weighting() -> None:
    flow_t = torch.randn(2, 2, 4, 4, generator=gen())
    mask_t = (torch.rand(2, 1, 4, 4, generator=gen(1)) > 0.5).float()
    perfect = contextual_loss(flow_t.clone(), (mask_t * 2 - 1) * 30, flow_t, mask_t)
    assert float(perfect.total) < 1e-10

    pred = torch.zeros(2, 2, 4, 4, requires_grad=True)
    logits = torch.zeros(2, 1, 4, 4, requires_grad=True)
    loss = contextual_loss(pred, logits, flow_t, mask_t)
    assert torch.allclose(loss.flow, flow_t.pow(2).sum(1).mean())
    assert torch.allclose(loss.mask, (0.5 - mask_t).pow(2).mean())
    assert torch.allclose(loss.total, loss.flow + loss.mask)
    loss.total.backward()
    assert pred.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0

    # flow errors under hidden pixels do not count; the mean is over visible pixels
    vis = torch.zeros(2, 1, 4, 4)
    vis[..., :2, :] = 1
    wrong_where_hidden = flow_t.clone()
    wrong_where_hidden[..., 2:, :] += 10
    weighted = contextual_loss(wrong_where_hidden, logits.detach(), flow_t, mask_t, vis)
    assert float(weighted.flow) == pytest.approx(0.0, abs=1e-10)
    off_by_one = contextual_loss(flow_t + 1, logits.detach(), flow_t, mask_t, vis)
    assert float(off_by_one.flow) == pytest.approx(2.0)  # (1² + 1²) per visible pixel
    with pytest.raises(ValueError, match="shapes differ"):
        contextual_loss(pred, logits, flow_t[..., :2, :2], mask_t)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="p_blur"):
        AugmentConfig(p_blur=1.5)
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(1.2, 0.9))
    with pytest.raises(ValueError, match="elastic_grid"):
        AugmentConfig(elastic_grid=1)


def test_low_precision_input_keeps_fp32_geometry() -> None:
    x = smooth_images(2)
    ref = make_context(x, AugmentConfig(), gen(7))
    half = make_context(x.to(torch.bfloat16), AugmentConfig(), gen(7))
    assert half.context.dtype == torch.bfloat16 and half.flow_target.dtype == torch.float32
    assert torch.allclose(half.flow_target, ref.flow_target, atol=1e-4)
    assert (half.context.float() - ref.context).abs().max() < 0.05
