"""Per-frame SSIM / PSNR, timesteps, best-of-S (Table D4), DIV and its motion mask (Fig. 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.metrics import image as image_metrics
from pipeline.metrics.video import (
    best_of_samples,
    diversity,
    frame_psnr,
    frame_ssim,
    metrics_at,
    motion_mask,
    optical_flow,
)

torch.set_num_threads(2)


def _video(b=2, t=3, h=24, w=20, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(b * t, 3, h // 4, w // 4, generator=g), size=(h, w),
                           mode="bilinear", align_corners=False)
    return (smooth * 2 - 1).view(b, t, 3, h, w)


def _noisy(v: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (v + sigma * torch.randn(v.shape, generator=g)).clamp(-1, 1)


# ------------------------------------------------------------------ SSIM / PSNR


def test_identical_videos_give_ssim_one_and_psnr_inf_or_cap():
    v = _video()
    ssim = frame_ssim(v, v.clone())
    assert ssim.shape == (2, 3) and ssim.dtype == np.float64
    np.testing.assert_allclose(ssim, 1.0, atol=1e-12)
    assert np.isinf(frame_psnr(v, v)).all()
    np.testing.assert_array_equal(frame_psnr(v, v, max_db=60.0), 60.0)


def test_metrics_decrease_with_noise():
    v = _video()
    ssims = [frame_ssim(v, _noisy(v, s)).mean() for s in (0.02, 0.1, 0.3)]
    psnrs = [frame_psnr(v, _noisy(v, s)).mean() for s in (0.02, 0.1, 0.3)]
    assert ssims[0] > ssims[1] > ssims[2] and psnrs[0] > psnrs[1] > psnrs[2]
    assert ssims[0] < 1.0


@pytest.mark.parametrize("size", [(32, 28), (8, 6)])  # the second one is below the 11-px window
def test_agrees_with_image_metrics(size):
    a, b = _video(h=size[0], w=size[1]), _video(h=size[0], w=size[1], seed=3)
    unit = lambda x: ((x + 1) / 2).flatten(0, 1).double()  # noqa: E731 - [-1, 1] → [0, 1] frames
    np.testing.assert_allclose(frame_ssim(a, b).ravel(),
                               image_metrics.ssim(unit(a), unit(b)).numpy(), atol=1e-6)
    np.testing.assert_allclose(frame_psnr(a, b).ravel(),
                               image_metrics.psnr(unit(a), unit(b)).numpy(), rtol=1e-10)


def test_psnr_value_and_range_convention():
    a = torch.zeros(1, 1, 3, 4, 4)
    b = torch.full((1, 1, 3, 4, 4), 0.2)  # difference 0.1 in [0, 1] units → 20 dB
    assert frame_psnr(a, b)[0, 0] == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shapes differ"):
        frame_ssim(a, b[..., :3])


# ------------------------------------------------------------------ timesteps, best of S


def test_metrics_at_uses_paper_timesteps_from_one_and_skips_beyond():
    values = np.arange(2 * 16, dtype=float).reshape(2, 16)  # values[b, i] = 16 b + i
    notes: list[str] = []
    out = metrics_at(values, (1, 8, 15, 16, 30), name="ssim", notes=notes)
    assert out == {"ssim_t1": 8.0, "ssim_t8": 15.0, "ssim_t15": 22.0, "ssim_t16": 23.0}
    assert len(notes) == 1 and "t=30" in notes[0] and "16 frames" in notes[0]
    psnr = np.array([[math.inf, 10.0], [math.inf, 20.0]])
    assert metrics_at(psnr, (1, 2), name="psnr") == {"psnr_t1": math.inf, "psnr_t2": 15.0}


def test_best_of_samples():
    v = np.array([[[0.5, 0.5], [0.9, 0.7], [0.6, 0.9]],  # scores 0.5, 0.8, 0.75 → sample 1
                  [[0.2, 0.4], [0.1, 0.1], [0.3, 0.3]]])  # scores 0.3, 0.1, 0.3 → sample 0
    best = best_of_samples(v)
    np.testing.assert_allclose(best.best, [0.8, 0.3])
    np.testing.assert_array_equal(best.index, [1, 0])
    np.testing.assert_allclose(best.per_frame, [[0.9, 0.7], [0.2, 0.4]])
    np.testing.assert_allclose(best.variance, [np.var([0.5, 0.8, 0.75]), np.var([0.3, 0.1, 0.3])])
    one = best_of_samples(v[:, :1])
    np.testing.assert_allclose(one.variance, 0.0)


# ------------------------------------------------------------------ DIV and the motion mask


def test_diversity_zero_for_identical_samples_and_grows_with_noise():
    v = _video(b=2, t=3, h=16, w=16)
    same = v[:, None].expand(2, 4, 3, 3, 16, 16)
    mask = torch.ones(2, 3, 16, 16, dtype=torch.bool)
    div = diversity(same, mask)
    np.testing.assert_allclose(div.whole, 0.0)
    np.testing.assert_allclose(div.moving, 0.0)
    values = []
    for sigma in (0.05, 0.2, 0.5):
        samples = torch.stack([_noisy(v, sigma, seed=s) for s in range(4)], dim=1)
        values.append(diversity(samples).whole.mean())
    assert 0 < values[0] < values[1] < values[2]


def test_diversity_units_and_moving_parts():
    samples = torch.full((1, 3, 2, 3, 8, 8), -1.0)
    samples[0, 1, :, :, :4] = 1.0  # sample 1 differs from 0 and 2 by 2 (= 1 in [0, 1] units)
    mask = torch.zeros(1, 2, 8, 8, dtype=torch.bool)
    mask[0, :, :4] = True  # exactly where it differs
    div = diversity(samples, mask)
    # pairs (0,1), (0,2), (1,2): mean |a - b| over frames = 0.5, 0, 0.5 → whole 1/3
    np.testing.assert_allclose(div.whole, [1 / 3])
    np.testing.assert_allclose(div.moving, [2 / 3])  # on the masked half: 1, 0, 1
    empty = diversity(samples, torch.zeros(1, 2, 8, 8, dtype=torch.bool))
    assert np.isnan(empty.moving).all()
    with pytest.raises(ValueError, match="S >= 2"):
        diversity(samples[:, :1])
    with pytest.raises(ValueError, match="moving_mask"):
        diversity(samples, mask[:, :1])


def _moving_square(t=5, size=48, side=12, step=(1, 2)):
    g = torch.Generator().manual_seed(0)
    background = -0.6 + 0.5 * torch.rand(1, 3, size, size, generator=g)  # static, textured
    video = background.repeat(t, 1, 1, 1)
    square = torch.zeros(t, size, size, dtype=torch.bool)
    for i in range(t):
        y, x = 14 + step[0] * i, 10 + step[1] * i
        video[i, :, y:y + side, x:x + side] = 0.8
        square[i, y:y + side, x:x + side] = True
    return video, square


def test_motion_mask_finds_a_moving_square():
    video, square = _moving_square()
    mask = motion_mask(video)
    assert mask.shape == (5, 48, 48) and mask.dtype == torch.bool
    for t in range(1, 5):
        near = F.max_pool2d((square[t] | square[t - 1]).float()[None], 5, 1, 2)[0] > 0
        recall = (mask[t] & square[t]).sum() / square[t].sum()
        precision = (mask[t] & near).sum() / mask[t].sum()
        assert recall > 0.9 and precision > 0.9, (t, recall, precision)
    assert not motion_mask(video[:1].repeat(4, 1, 1, 1)).any()  # static video: nothing moves
    batched = motion_mask(torch.stack([video, video[:1].repeat(5, 1, 1, 1)]))
    assert torch.equal(batched[0], mask) and not batched[1].any()


def test_flow_direction_of_a_translated_square():
    video, square = _moving_square(t=2, step=(1, 2))
    flow = optical_flow(video[:1], video[1:])
    inside = square[0] & square[1]
    u, v = flow[0, 0][inside].mean(), flow[0, 1][inside].mean()
    assert u > 0.8 and 0.3 < v < u  # moved 2 px right, 1 px down (HS underestimates a little)
    assert flow[0, :, :4, :4].abs().max() < 0.1  # far static corner
