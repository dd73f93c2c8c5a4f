"""Residual resampling blocks shared by the convolutional models (App. A, "Encoder and decoder").

App. A: "Each module is implemented by a residual block [29] which increases or decreases the
spatial resolution by a factor 2. In practice, we use the succession of two 3 × 3 2D convolutions
with LeakyReLU activations and a skip connection in the form of a 1 × 1 convolution."

`ResBlock` is that block. It is reused by E and D (``autoencoder.py``) and by the other
encoders of the project (sound VQ, layout VQ, position estimator), so it knows nothing about
any of them.

Where the resampling happens (a speed choice, the paper does not say): a downsampling block runs
its first 3×3 conv at the input resolution and its second one after a 2×2 average pooling; an
upsampling block runs its first conv at the input resolution and its second after a ×2 nearest
upsampling. Each conv therefore works at the cheapest resolution that still lets the block see
both scales, and channels change at the low resolution (a down block's first conv keeps in_ch).
The 1×1 skip is applied at the low resolution (pool first, or conv then upsample).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Resample = Literal["down", "up", "none"]


def channels_last_(module: nn.Module) -> nn.Module:
    """Store the weights of every 2D / 3D convolution of ``module`` channels-last, in place.

    A speed choice (not in the paper): oneDNN runs convolutions on channels-last tensors without
    reordering them, and the frames already arrive channels-last (uint8 H×W×3 → movedim), so
    each conv's output stays in that layout. Measured on the demo's AE step (2-core CPU with
    AMX-BF16): 1.3× faster in bf16, 1.1× in fp32 (BENCHMARKS.md). Parameters keep their identity
    (optimizers stay valid); values are unchanged.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
        elif isinstance(m, nn.Conv3d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
    return module


class ResBlock(nn.Module):
    """Pre-activation residual block: ``skip(x) + conv2(act(resample(conv1(act(x)))))``.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        resample: ``"down"`` halves H and W (2×2 average pooling), ``"up"`` doubles them
            (nearest neighbour), ``"none"`` keeps them.
        negative_slope: slope of the LeakyReLU activations.
    """

    def __init__(
        self, in_ch: int, out_ch: int, resample: Resample = "none", negative_slope: float = 0.2
    ) -> None:
        super().__init__()
        if resample not in ("down", "up", "none"):
            raise ValueError(f"ResBlock: resample must be 'down', 'up' or 'none', got {resample!r}")
        self.resample = resample
        self.negative_slope = negative_slope
        # The channel change happens at the low resolution: a down block keeps in_ch through
        # its full-resolution conv, an up block reaches out_ch before upsampling.
        mid = in_ch if resample == "down" else out_ch
        self.conv1 = nn.Conv2d(in_ch, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W) → (B, out_ch, H', W') with H' = H/2, 2H or H (per ``resample``)."""
        if self.resample == "down" and (x.shape[-1] % 2 or x.shape[-2] % 2):
            raise ValueError(
                f"ResBlock: cannot halve an odd spatial size {tuple(x.shape[-2:])}; "
                "use inputs whose sides are divisible by 2**levels"
            )
        h = self.conv1(F.leaky_relu(x, self.negative_slope))
        h = self.conv2(F.leaky_relu(self._resample(h), self.negative_slope))
        if self.resample == "down":
            skip = self.skip(F.avg_pool2d(x, 2))
        else:
            skip = self._resample(self.skip(x))
        return skip + h
