"""Object-region metrics (pipeline/metrics/objects.py): masks follow the layout rule, the scores
see blur, identical frames reach the cap, and the AE validation reports them only with layouts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.training.autoencoder.forward import copy_first_scores
from pipeline.metrics.objects import (
    clip_object_scores,
    edge_ratio,
    masked_psnr,
    masked_ssim,
    moving_masks,
    ssim_map,
    video_object_scores,
)


def layout_clip() -> np.ndarray:
    """3 frames of 16×16: a 6-px-wide object (2) moving right by 4 px a frame, a gripper (1)."""
    lay = np.zeros((3, 16, 16), np.uint8)
    lay[:, 0:3, 12:14] = 1  # gripper, top right
    for t in range(3):
        lay[t, 8:11, 2 + 4 * t: 8 + 4 * t] = 2
    return lay


def textured(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Frames with edges everywhere: (n, 3, size, size) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_masks_follow_the_layout_rule():
    lay = layout_clip()
    raw = moving_masks(lay, dilate=0).numpy()
    assert raw.shape == (3, 16, 16) and raw.dtype == bool
    assert np.array_equal(raw[0], lay[0] == 1)  # frame 0: the gripper only
    expected = (lay[2] != lay[0]) | (lay[2] == 1)  # moved object (old and new place) + gripper
    assert np.array_equal(raw[2], expected)
    assert not raw[1, 9, 6]  # covered by the object in frames 0 and 1: not "moving"
    assert raw[1, 9, 2] and raw[1, 9, 10]  # vacated and newly covered pixels
    grown = moving_masks(lay, dilate=2).numpy()
    assert grown[2][raw[2]].all() and grown.sum() > raw.sum()
    assert grown[0, 4, 12] and not grown[0, 5, 12]  # gripper rows 0–2, grown by exactly 2 px


def test_identical_frames_give_the_cap_and_ssim_one():
    x = textured()
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 4:12, 4:20] = True
    assert torch.all(masked_psnr(x, x, mask) == 100.0)
    assert torch.allclose(masked_ssim(x, x, mask), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(edge_ratio(x, x, mask), torch.ones(2, dtype=torch.float64))


def test_only_pixels_inside_the_mask_count():
    x = textured()
    y = x.clone()
    y[:, :, 20:, 20:] = 0.0  # damage outside the mask
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    mask[:, 2:10, 2:10] = True
    assert torch.all(masked_psnr(x, y, mask) == 100.0)
    y[:, :, 4, 4] += 0.1  # one pixel inside: MSE = 0.01 / 64 over the 8×8 mask
    expected = 10 * math.log10(64 / 0.01)
    assert masked_psnr(x, y.clamp(0, 1), mask)[0].item() == pytest.approx(expected, rel=0.05)


def test_blur_lowers_every_object_score_and_the_sharpness_most_clearly():
    x = textured()
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    mask = torch.ones(2, 32, 32, dtype=torch.bool)
    ratio = edge_ratio(x, blurred, mask)
    assert torch.all(ratio < 0.7)  # blobs: much less edge energy than the real frame
    assert torch.all(masked_ssim(x, blurred, mask) < 0.9)
    assert torch.all(masked_psnr(x, blurred, mask) < 30)
    stronger = F.avg_pool2d(blurred, 3, stride=1, padding=1, count_include_pad=False)
    assert torch.all(edge_ratio(x, stronger, mask) < ratio)


def test_empty_mask_gives_nan_not_zero():
    x = textured()
    mask = torch.zeros(2, 32, 32, dtype=torch.bool)
    for f in (masked_psnr, masked_ssim, edge_ratio):
        assert torch.isnan(f(x, x * 0.5, mask)).all()


def test_ssim_map_matches_the_whole_frame_ssim_away_from_the_border():
    from pipeline.metrics.image import ssim

    x, y = textured(seed=1), textured(seed=2)
    y = 0.7 * x + 0.3 * y
    inner = ssim_map(x, y)[:, 5:-5, 5:-5].mean((1, 2))  # the valid window positions
    assert torch.allclose(inner, ssim(x, y), atol=1e-9)


def test_clip_scores_and_the_copy_first_reference():
    rng = np.random.default_rng(0)
    lay = np.stack([layout_clip()] * 2)  # (2, 3, 16, 16)
    clips = rng.integers(0, 256, (2, 3, 16, 16, 3), dtype=np.uint8)
    same = clip_object_scores(clips, clips, lay)
    assert set(same) == {"psnr_objects", "ssim_objects", "edge_ratio_objects"}
    assert same["psnr_objects"].shape == (2, 2) and np.all(same["psnr_objects"] == 100.0)
    ref = copy_first_scores(clips, lay)
    assert ref["baseline/copy_first/psnr_objects"] < 20  # frame 0 is wrong where things moved
    assert "baseline/copy_first/psnr_objects_t1" in ref
    assert not any("objects" in k for k in copy_first_scores(clips, None))  # absent, not zero
    with pytest.raises(ValueError, match="expected real, fake"):
        clip_object_scores(clips, clips[:, :2], lay)


def test_video_scores_rank_a_blurred_sample_below_the_real_one():
    lay = np.zeros((4, 32, 32), np.uint8)  # an object moving right 3 px a frame
    for t in range(4):
        lay[t, 10:20, 4 + 3 * t: 14 + 3 * t] = 2
    real = (textured(4, 32, seed=3) * 2 - 1)[None]  # (1, T, 3, H, W) in [−1, 1]
    blurred = F.avg_pool2d(real[0], 3, stride=1, padding=1, count_include_pad=False)[None]
    perfect = video_object_scores(real, real[:, None], lay[None], start=1)
    assert perfect["psnr_objects"] == 100.0 and perfect["edge_ratio_objects"] == pytest.approx(1.0)
    blur = video_object_scores(real, blurred[:, None], lay[None], start=1)
    assert blur["edge_ratio_objects"] < 0.7 and blur["psnr_objects"] < 30
    assert blur["ssim_objects"] < perfect["ssim_objects"]
    both = video_object_scores(real, torch.stack([real, blurred], 1), lay[None], start=1)
    for key in perfect:  # S samples: the mean over samples (equal mask sizes)
        if key != "psnr_objects":
            assert both[key] == pytest.approx((perfect[key] + blur[key]) / 2)
    with pytest.raises(ValueError, match="start"):
        video_object_scores(real, real[:, None], lay[None], start=4)
