"""Image and temporal discriminators Δi, Δt and their logistic losses (§3.2 Eq. 5–6, App. A).

App. A: "The architecture of the image discriminator Δi is similar to that of StyleGAN2 [38], and
the temporal discriminator Δt is essentially the same, with 3D instead of 2D convolutions to
account for the temporal dimension." Both are residual downsampling networks:

    fromRGB (1×1 conv) → ResDown × log2(resolution / final_resolution)
    → minibatch stddev → 3×3 conv → flatten → linear → linear → one logit per input

ResDown (StyleGAN2's residual D block): (conv 3×3 → LeakyReLU → 2× average pool → conv 3×3 →
LeakyReLU) + (2× average pool → 1×1 conv), summed and scaled by 1/√2. The second conv runs after
the pooling (a CPU-friendly choice; StyleGAN2 strides its second conv). No equalised learning rate
or modulated convs: plain PyTorch layers and init.

Δt reads clips as (B, T, 3, H, W) (frame-major, the order in which D emits frames) and works on
(B, 3, T, H, W) internally. Every block halves H and W; it halves T too while T ≥ 2 ·
``temporal_final`` (the pooling has no parameters, so one Δt accepts any T ≥ 1); the remaining
frames are averaged before the linear head.

Sign convention — exactly as the paper writes Eq. (5) and (6):

    L_d(Δ) = ln(1 + e^{Δ(x)}) + ln(1 + e^{−Δ(x̂)}) = softplus(Δ(x)) + softplus(−Δ(x̂))   (5)
    L_a    = ln(1 + e^{Δ(x̂)}) = softplus(Δ(x̂))                                      (6)

so Δ learns a LOW score for real x and a HIGH score for reconstructions x̂, and the autoencoder
lowers Δ(x̂). This is StyleGAN2's loss with the sign of the logit flipped; it is equivalent.

Minibatch stddev mixes the samples of a group: never let a group hold both real and reconstructed
samples. Call Δ on each batch separately, or on their concatenation with ``parts=2`` (the
statistic is then taken within each half: the same logits, one pass — 1.1–1.5× faster on CPU).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """Δi / Δt sizes (the paper only says "similar to StyleGAN2"; these suit 64×64 frames)."""

    # H = W of the inputs; blocks = log2(resolution / final_resolution). Set from the frames by
    # the stage, not a param ("from_data": pipeline.params does not read it from params.yaml).
    resolution: int = dataclasses.field(default=64, metadata={"from_data": "the frames' size"})
    channels: int = 32  # channels at the input resolution, doubled after each block
    max_channels: int = 256  # cap on the channels of any block
    final_resolution: int = 4  # spatial size H = W after the last block (StyleGAN2: 4)
    mbstd_group: int = 4  # minibatch-stddev group size (StyleGAN2); 0 = off
    negative_slope: float = 0.2  # LeakyReLU slope (StyleGAN2)
    temporal_final: int = 2  # Δt only: halve T while T >= 2 * temporal_final

    def __post_init__(self) -> None:
        ratio = self.resolution / max(self.final_resolution, 1)
        if self.final_resolution < 1 or ratio < 1 or 2 ** round(math.log2(ratio)) != ratio:
            raise ValueError(
                f"DiscriminatorConfig: resolution {self.resolution} must be final_resolution "
                f"{self.final_resolution} times a power of 2"
            )
        if self.channels < 1 or self.max_channels < 1 or self.mbstd_group < 0:
            raise ValueError("DiscriminatorConfig: channels, max_channels >= 1, mbstd_group >= 0")
        if self.temporal_final < 1:
            raise ValueError("DiscriminatorConfig.temporal_final: at least 1")

    @property
    def num_blocks(self) -> int:
        return int(round(math.log2(self.resolution / self.final_resolution)))

    def block_channels(self) -> list[int]:
        """Channels before each block and after the last one (num_blocks + 1 entries)."""
        return [min(self.channels * 2**i, self.max_channels) for i in range(self.num_blocks + 1)]


class _ResDown(nn.Module):
    """StyleGAN2 residual downsampling block in 2D or 3D (see the module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, dims: int, slope: float) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.dims = dims
        self.slope = slope
        self.conv1 = conv(in_ch, in_ch, 3, padding=1)
        self.conv2 = conv(in_ch, out_ch, 3, padding=1)
        self.skip = conv(in_ch, out_ch, 1, bias=False)

    def _pool(self, x: torch.Tensor, temporal: bool) -> torch.Tensor:
        if self.dims == 2:
            return F.avg_pool2d(x, 2)
        k = (2 if temporal else 1, 2, 2)
        return F.avg_pool3d(x, k, k)

    def forward(self, x: torch.Tensor, temporal: bool = False) -> torch.Tensor:
        h = F.leaky_relu(self.conv1(x), self.slope)
        h = F.leaky_relu(self.conv2(self._pool(h, temporal)), self.slope)
        return (h + self.skip(self._pool(x, temporal))) * (1 / math.sqrt(2))


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append StyleGAN2's minibatch-stddev channel: (B, C, *S) → (B, C + 1, *S).

    The std over groups of ``group`` samples (the largest divisor of B not above ``group``),
    averaged over channels and positions, broadcast as one extra feature map.
    """
    b = x.shape[0]
    g = max(d for d in range(1, min(group, b) + 1) if b % d == 0)
    y = x.reshape(g, b // g, *x.shape[1:])
    std = (y.var(0, unbiased=False) + 1e-8).sqrt()  # (B/g, C, *S)
    std = std.flatten(1).mean(1)  # (B/g,)
    std = std.repeat(g)  # sample i belongs to group i % (B/g)
    return torch.cat([x, std.view(b, *([1] * (x.ndim - 1))).expand(b, 1, *x.shape[2:])], 1)


class _ResidualDiscriminator(nn.Module):
    def __init__(self, cfg: DiscriminatorConfig, dims: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.dims = dims
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        ch = cfg.block_channels()
        self.from_rgb = conv(3, ch[0], 1)
        self.blocks = nn.ModuleList(
            _ResDown(ch[i], ch[i + 1], dims, cfg.negative_slope) for i in range(cfg.num_blocks)
        )
        extra = 1 if cfg.mbstd_group > 0 else 0
        self.final_conv = conv(ch[-1] + extra, ch[-1], 3, padding=1)
        self.fc = nn.Linear(ch[-1] * cfg.final_resolution**2, ch[-1])
        self.out = nn.Linear(ch[-1], 1)

    def _check(self, x: torch.Tensor, name: str) -> None:
        r = self.cfg.resolution
        if x.shape[-1] != r or x.shape[-2] != r or x.shape[-3 if self.dims == 2 else 1] != 3:
            raise ValueError(f"{name}: expected {r}×{r} RGB inputs, got shape {tuple(x.shape)}")

    def _trunk(self, x: torch.Tensor, features: list[torch.Tensor] | None = None,
               parts: int = 1) -> torch.Tensor:
        slope = self.cfg.negative_slope
        h = F.leaky_relu(self.from_rgb(x), slope)
        for block in self.blocks:
            temporal = self.dims == 3 and h.shape[2] >= 2 * self.cfg.temporal_final
            h = block(h, temporal)
            if features is not None:  # per-sample maps (before minibatch stddev mixes samples)
                features.append(h)
        if self.cfg.mbstd_group > 0:
            if parts < 1 or h.shape[0] % parts:
                raise ValueError(f"parts={parts} does not divide the batch of {h.shape[0]}")
            h = torch.cat([minibatch_stddev(p, self.cfg.mbstd_group) for p in h.chunk(parts)])
        h = F.leaky_relu(self.final_conv(h), slope)
        if self.dims == 3:
            h = h.mean(2)  # average the remaining frames: (B, C, T', 4, 4) → (B, C, 4, 4)
        h = F.leaky_relu(self.fc(h.flatten(1)), slope)
        return self.out(h).squeeze(1)


class ImageDiscriminator(_ResidualDiscriminator):
    """Δi: StyleGAN2-like residual downsampling image discriminator (App. A)."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__(cfg, dims=2)

    def forward(self, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """x: (B, 3, H, W) images (x or x̂, in [-1, 1]) → (B,) logits Δi(x); low = real (Eq. 5).
        ``parts``: x is that many equal batches (minibatch stddev within each)."""
        self._check(x, "ImageDiscriminator")
        return self._trunk(x, parts=parts)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (B, 3, H, W) → (logits (B,), the output of every residual block, fine → coarse)."""
        self._check(x, "ImageDiscriminator")
        features: list[torch.Tensor] = []
        return self._trunk(x, features), features


class TemporalDiscriminator(_ResidualDiscriminator):
    """Δt: the same network with 3D convolutions over consecutive frames (App. A)."""

    def __init__(self, cfg: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__(cfg, dims=3)

    def forward(self, clip: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """clip: (B, T, 3, H, W) consecutive frames, T ≥ 1 → (B,) logits Δt; low = real (Eq. 5).
        ``parts``: the clips are that many equal batches (minibatch stddev within each)."""
        if clip.ndim != 5:
            raise ValueError(
                f"TemporalDiscriminator: expected clips (B, T, 3, H, W), got {tuple(clip.shape)}"
            )
        x = clip.transpose(1, 2)  # (B, 3, T, H, W)
        self._check(x, "TemporalDiscriminator")
        if _bf16_conv3d_unsafe(x):
            with torch.autocast("cpu", enabled=False):
                return self._trunk(x.float(), parts=parts)
        return self._trunk(x, parts=parts)


# torch 2.13's CPU (oneDNN) bf16 Conv3d backward corrupts the heap ("double free or corruption",
# "free(): invalid next size") for frames of 160 px and more (3 → 64 channels, T = 2); at ≤ 128 px
# it passed 20 iterations under MALLOC_CHECK_=3. Above that size Δt runs in fp32 on the CPU.
_BF16_CONV3D_MAX_PIXELS = 128 * 128


def _bf16_conv3d_unsafe(x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.shape[-2] * x.shape[-1] <= _BF16_CONV3D_MAX_PIXELS:
        return False
    try:
        on, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    except TypeError:  # torch < 2.4
        on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return on and dtype == torch.bfloat16


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_d of Eq. (5): mean of softplus(Δ(x)) + softplus(−Δ(x̂)) (low Δ = real)."""
    return F.softplus(real_logits).mean() + F.softplus(-fake_logits).mean()


def adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_a of Eq. (6): mean of softplus(Δ(x̂)), minimised by E, Q, F, D."""
    return F.softplus(fake_logits).mean()


def feature_matching_loss(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Mean over Δ's blocks of ‖Δ_k(x̂) − Δ_k(x)‖₁ (per-element mean), real features detached.

    Not in the paper (pix2pixHD's discriminator feature matching): a perceptual distance learned
    on the fly, used where Eq. (4)'s ImageNet VGG is unavailable (the demo has no network).
    """
    if len(fake) != len(real) or not fake:
        raise ValueError(f"feature_matching_loss: {len(fake)} fake and {len(real)} real maps")
    return torch.stack([(f.float() - r.detach().float()).abs().mean() for f, r in zip(fake, real)]).mean()


def r1_penalty(d: nn.Module, x_real: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty (optional): mean over the batch of ‖∇_x Δ(x)‖² on real inputs.

    Differentiable with respect to Δ's parameters (create_graph=True), so adding
    (γ / 2) · r1_penalty(Δ, x) to L_d regularises Δ; unaffected by the sign convention.
    """
    x = x_real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


__all__ = [
    "DiscriminatorConfig",
    "ImageDiscriminator",
    "TemporalDiscriminator",
    "adversarial_loss",
    "discriminator_loss",
    "feature_matching_loss",
    "minibatch_stddev",
    "r1_penalty",
]
