"""PSNR and SSIM per frame (pipeline/metrics/image.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.metrics.image import gaussian_window, psnr, psnr_from_mse, ssim


def frames(n=2, c=3, h=24, w=20, seed=0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identical_frames():
    x = frames()
    assert torch.isinf(psnr(x, x)).all()
    assert torch.equal(psnr(x, x, max_db=100.0), torch.full((2,), 100.0, dtype=torch.float64))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_known_noise_gives_known_psnr():
    x = torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64)
    signs = torch.where(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5, 1.0, -1.0)
    y = x + 0.1 * signs  # |error| = 0.1 everywhere → MSE 0.01 → 20 dB
    assert psnr(x, y).item() == pytest.approx(20.0, abs=1e-6)
    assert psnr(x * 255, y * 255, data_range=255.0).item() == pytest.approx(20.0, abs=1e-6)
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert math.isinf(psnr_from_mse(0.0))


def test_ssim_decreases_with_noise():
    x = frames(1, 3, 32, 32, seed=2)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    values = [ssim(x, (x + s * noise).clamp(0, 1)).item() for s in (0.0, 0.02, 0.05, 0.1, 0.3)]
    assert values[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(values, values[1:])), values
    p = [psnr(x, (x + s * noise).clamp(0, 1)).item() for s in (0.02, 0.05, 0.1)]
    assert p[0] > p[1] > p[2]


def reference_ssim(x: np.ndarray, y: np.ndarray, data_range=1.0, size=11, sigma=1.5) -> float:
    """Wang et al. written out position by position (one frame (C, H, W), valid windows)."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_channel = []
    for a, b in zip(x, y):
        vals = []
        for i in range(a.shape[0] - size + 1):
            for j in range(a.shape[1] - size + 1):
                pa, pb = a[i:i + size, j:j + size], b[i:i + size, j:j + size]
                ma, mb = (win * pa).sum(), (win * pb).sum()
                va, vb = (win * (pa - ma) ** 2).sum(), (win * (pb - mb) ** 2).sum()
                cov = (win * (pa - ma) * (pb - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2))
                            / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        per_channel.append(np.mean(vals))
    return float(np.mean(per_channel))


def test_ssim_matches_direct_reference():
    x = frames(2, 3, 14, 13, seed=4)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5),
                               dtype=torch.float64)).clamp(0, 1)
    ours = ssim(x, y)
    for k in range(2):
        assert ours[k].item() == pytest.approx(reference_ssim(x[k].numpy(), y[k].numpy()), abs=1e-10)


def test_window_is_normalised_gaussian():
    w = gaussian_window(11, 1.5)
    assert w.shape == (11, 11)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[5, 5] == w.max() and torch.allclose(w, w.T)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(frames(), frames(h=8))
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(frames(), frames(w=8))
