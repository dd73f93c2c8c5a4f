"""A plain VQ autoencoder E → Q → D (no flow module F), for the sound and layout tokens.

App. A "Sound autoencoder": the STFT patches of the audio are encoded, quantized and decoded
"with a strategy similar to that used to construct E, Q and D for video frames (without F in
this case)", giving audio tokens used as frame-level annotations. App. E "Layout-conditioned
synthesis" (Cityscapes, Table D2, Fig. D1): layouts "are encoded, quantized, and decoded just as
it is done for images". This module is that shared E/Q/D, configurable in its input/output
channels and its number of stride-2 downsamplings:

- sound: a 1 × 64 × 16 patch per frame, 3 downsamplings → 8 × 2 = 16 tokens per frame (paper);
- layouts: a one-hot K × H × W map per frame, D predicts K class logits per pixel;
  3 downsamplings take 64 × 64 to 8 × 8 tokens.

E is a 3×3 stem, one residual downsampling block (``blocks.ResBlock``, App. A) per entry of
``channels``, ``mid_blocks`` resolution-keeping blocks, then a 1×1 projection to F = ``dim``
channels. Q/U is ``quantizer.VectorQuantizer`` (Eq. (3), straight-through, App. A). D mirrors E
with upsampling blocks and ends in a 3×3 conv to ``out_channels`` with no activation (the caller
picks the loss: a regression loss on patches, cross-entropy on layout logits).

Not built: the paper's single decoder D with a second head that predicts layouts next to the
frames (App. E, Fig. D2). Layouts here have their own small E/Q/D, so ``tokenize`` can turn each
frame's layout into tokens for T; the frame decoder does not predict layouts.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.blocks import ResBlock
from ccvs_models.quantizer import QuantizerConfig, VectorQuantizer


@dataclasses.dataclass(frozen=True)
class VQAutoencoderConfig:
    """Sizes of E, Q, D. Defaults: the sound autoencoder of App. A at demo scale."""

    in_channels: int = 1  # channels of x (1 for an STFT patch, K for a one-hot layout);
    # 0 = "set from the data" (a stage fills it in before building the model)
    out_channels: int = 1  # channels of D's output (1 for a patch, K class logits for a layout);
    # 0 = "set from the data", as in_channels
    channels: tuple[int, ...] = (16, 32, 64)  # E's width after each stride-2 block (D mirrors);
    # len = number of downsamplings (paper, sound: 3 → 64×16 patches become 8×2 tokens)
    mid_blocks: int = 1  # resolution-keeping ResBlocks at the bottom of E and the top of D
    codebook_size: int = 256  # q; paper: 1024 for sound (demo default smaller: few clips)
    dim: int = 64  # F, channels of z = E(x) and of the codebook entries (§3.1)
    beta: float = 0.25  # β, commitment weight of L_q, Eq. (3) (paper value)
    normalize_codes: bool = False  # l2-normalised (cosine) codebook; not in the paper

    def __post_init__(self) -> None:
        if self.in_channels < 0 or self.out_channels < 0:
            raise ValueError(
                f"in_channels and out_channels must be >= 0, got {self.in_channels}, {self.out_channels}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive widths, got {self.channels}")
        if self.mid_blocks < 0:
            raise ValueError(f"mid_blocks must be >= 0, got {self.mid_blocks}")

    @property
    def downsampling(self) -> int:
        """Spatial factor between x and the token grid: 2 ** len(channels)."""
        return 2 ** len(self.channels)

    def quantizer(self) -> QuantizerConfig:
        return QuantizerConfig(codebook_size=self.codebook_size, dim=self.dim, beta=self.beta,
                               normalize=self.normalize_codes)


class VQAutoencoderOutput(NamedTuple):
    """What one pass E → Q → D gives."""

    recon: torch.Tensor  # (B, out_channels, H, W) D(z_q): a patch, or class logits
    z: torch.Tensor  # (B, F, h, w) E(x), before quantization
    tokens: torch.Tensor  # (B, h, w) long, Q(z)
    q_loss: torch.Tensor  # () L_q, Eq. (3)
    perplexity: torch.Tensor  # () exp(entropy) of this batch's token histogram
    counts: torch.Tensor  # (q,) long, code usage in this batch


class VQEncoder(nn.Module):
    """E: x (B, in_channels, H, W) → z (B, F, H / 2^L, W / 2^L), L = len(channels)."""

    def __init__(self, cfg: VQAutoencoderConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(cfg.in_channels, cfg.channels[0], 3, padding=1)
        widths = (cfg.channels[0], *cfg.channels)
        self.down = nn.ModuleList(
            ResBlock(widths[i], widths[i + 1], "down") for i in range(len(cfg.channels)))
        self.mid = nn.Sequential(
            *(ResBlock(cfg.channels[-1], cfg.channels[-1]) for _ in range(cfg.mid_blocks)))
        self.proj = nn.Conv2d(cfg.channels[-1], cfg.dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.down:
            h = block(h)
        return self.proj(F.leaky_relu(self.mid(h), 0.2))


class VQDecoder(nn.Module):
    """D: z_q (B, F, h, w) → (B, out_channels, h · 2^L, w · 2^L), no output activation."""

    def __init__(self, cfg: VQAutoencoderConfig) -> None:
        super().__init__()
        widths = tuple(reversed(cfg.channels))  # coarse → fine
        self.proj = nn.Conv2d(cfg.dim, widths[0], 1)
        self.mid = nn.Sequential(*(ResBlock(widths[0], widths[0]) for _ in range(cfg.mid_blocks)))
        outs = (*widths[1:], widths[-1])
        self.up = nn.ModuleList(ResBlock(widths[i], outs[i], "up") for i in range(len(widths)))
        self.head = nn.Conv2d(widths[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z_q: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.proj(z_q))
        for block in self.up:
            h = block(h)
        return self.head(F.leaky_relu(h, 0.2))


class VQAutoencoder(nn.Module):
    """E, Q/U, D of App. A ("Sound autoencoder") / App. E (layouts), without F."""

    def __init__(self, config: VQAutoencoderConfig) -> None:
        super().__init__()
        if config.in_channels < 1 or config.out_channels < 1:
            raise ValueError(
                "VQAutoencoder: in_channels and out_channels must be set (>= 1) before building, "
                f"got {config.in_channels}, {config.out_channels}")
        self.config = config
        self.encoder = VQEncoder(config)
        self.quantizer = VectorQuantizer(config.quantizer())
        self.decoder = VQDecoder(config)

    def _check(self, x: torch.Tensor) -> None:
        f = self.config.downsampling
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"VQAutoencoder: expected x of shape (B, {self.config.in_channels}, H, W), "
                f"got {tuple(x.shape)}")
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"VQAutoencoder: H and W must be divisible by 2^{len(self.config.channels)} = {f}, "
                f"got {tuple(x.shape[-2:])}")

    def forward(self, x: torch.Tensor) -> VQAutoencoderOutput:
        """x: (B, in_channels, H, W) → D(U(Q(E(x)))) with L_q and codebook usage."""
        self._check(x)
        z = self.encoder(x)
        q = self.quantizer(z)
        return VQAutoencoderOutput(recon=self.decoder(q.z_q), z=z, tokens=q.tokens,
                                   q_loss=q.loss, perplexity=q.perplexity, counts=q.counts)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Q(E(x)): x (B, in_channels, H, W) → tokens (B, H / 2^L, W / 2^L) long."""
        self._check(x)
        return self.quantizer.encode(self.encoder(x))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """D(U(tokens)): tokens (B, h, w) → (B, out_channels, h · 2^L, w · 2^L)."""
        return self.decoder(self.quantizer.decode(tokens))
