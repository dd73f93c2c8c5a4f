"""Per-frame image quality: PSNR and SSIM (§4 "Metrics", Table 1 "Reconstruction").

The paper reports PSNR ("directly related to the root mean squared error") and SSIM (Wang et
al. [77]) between each real frame and its synthetic counterpart. Both functions here take two
batches of frames (N, C, H, W) with values in [0, data_range] and return one value per frame (N,),
so a caller can average over frames, clips or report the last frame.

* ``psnr``: 10 · log10(data_range² / MSE), the MSE over channels and pixels of a frame. Identical
  frames give +inf, or ``max_db`` when given (a finite cap that keeps averages meaningful).
* ``ssim``: Wang et al. (2004) with their constants — an 11 × 11 Gaussian window of σ = 1.5,
  K1 = 0.01, K2 = 0.03, L = data_range — local statistics over the *valid* window positions only
  (no padding, as in the reference MATLAB code's 'valid' filtering), population (biased)
  variances, the SSIM map averaged over positions and then over channels. Colour frames are
  handled per channel (the common convention; the paper does not say).

Computed in float64 on the inputs' device (small frames, exact enough to check against a
reference); no gradient is needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{what}: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.ndim != 4:
        raise ValueError(f"{what}: expected frames (N, C, H, W), got {tuple(x.shape)}")


@torch.no_grad()
def psnr(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, max_db: float | None = None
) -> torch.Tensor:
    """PSNR per frame in dB: x, y (N, C, H, W) in [0, data_range] → (N,) float64.

    Identical frames give +inf (or ``max_db`` when given; every value is then capped at it).
    """
    _check(x, y, "psnr")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    out = 10.0 * torch.log10(data_range**2 / mse)  # mse = 0 → +inf (torch does not warn)
    if max_db is not None:
        out = out.clamp(max=max_db)
    return out


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 2D Gaussian window (size, size), the outer product of two 1D ones."""
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


@torch.no_grad()
def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """SSIM per frame (Wang et al. [77]): x, y (N, C, H, W) in [0, data_range] → (N,) float64.

    Frames smaller than the window use a window of the frame's smaller side (odd), so tiny test
    frames still get a value.
    """
    _check(x, y, "ssim")
    n, c, h, w = x.shape
    size = min(window, h, w)
    if size % 2 == 0:
        size -= 1
    if size < 1:
        raise ValueError(f"ssim: frames of size {(h, w)} are too small")
    kernel = gaussian_window(size, sigma, device=x.device).expand(c, 1, size, size)
    a, b = x.double(), y.double()

    def filt(t: torch.Tensor) -> torch.Tensor:  # local Gaussian mean, valid positions only
        return F.conv2d(t, kernel, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(2, 3)).mean(1)


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """The PSNR (dB) of a given mean squared error (inf for 0)."""
    return math.inf if mse <= 0 else 10.0 * math.log10(data_range**2 / mse)


__all__ = ["gaussian_window", "psnr", "psnr_from_mse", "ssim"]
