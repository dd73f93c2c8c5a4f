"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017), the feature network of FVD (§4, [66]).

The Fréchet video distance of §4 compares real and synthetic clips in the feature space of "an
Inception3D network [6] pretrained on Kinetics-400": the 400 class logits of TF-Hub's
``deepmind/i3d-kinetics-400`` for 16-frame RGB clips of 224 × 224 pixels in [-1, 1].

``InceptionI3d`` rebuilds that network with the module and parameter names of the widely used
PyTorch conversion (the ``InceptionI3d(400, in_channels=3)`` layout of pytorch-i3d, whose
``rgb_imagenet.pt`` and the FVD code bases' ``i3d_pretrained_400.pt`` are state dicts for it), so
those files load with strict key matching:

    Conv3d_1a_7x7, Conv3d_2b_1x1, Conv3d_2c_3x3   Unit3D: ``.conv3d`` (no bias) + ``.bn``
    MaxPool3d_2a_3x3, MaxPool3d_3a_3x3, MaxPool3d_4a_3x3, MaxPool3d_5a_2x2   (no parameters)
    Mixed_3b … Mixed_5c   inception blocks with branches b0, b1a, b1b, b2a, b2b, b3a (pool), b3b
    logits                Unit3D 1024 → num_classes, 1×1×1 conv with bias, no BN, no activation

e.g. ``Conv3d_1a_7x7.conv3d.weight`` (64, 3, 7, 7, 7), ``Mixed_3b.b0.bn.running_var`` (64,),
``logits.conv3d.weight`` (400, 1024, 1, 1, 1), ``logits.conv3d.bias`` (400,).

Convolutions and max pools use TensorFlow's 'SAME' padding computed from the input size (zeros,
more on the far side when odd), as the TF original; batch norm has ε = 1e-3. The head averages
Mixed_5c over a 2 × 7 × 7 window (stride 1), applies the 1×1×1 logits conv and averages the logits
over the remaining time steps (as the FVD conversion's forward does). For inputs smaller than
224 × 224 × 16 the pooling window is clipped to the feature map, so tiny test clips still run;
at the FVD protocol size the computation is the conversion's. Loading weights is
``pipeline.metrics.fvd``'s job: this module starts from random init and holds no weight source.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# Inception block widths (b0, b1a, b1b, b2a, b2b, b3b), as in Inception-v1 (GoogLeNet Table 1).
_MIXED: tuple[tuple[str, tuple[int, int, int, int, int, int]], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
# Max pools placed before a block: name, kernel (t, h, w), stride (t, h, w).
_POOLS: dict[str, tuple[str, tuple[int, int, int], tuple[int, int, int]]] = {
    "Mixed_3b": ("MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}
FEATURE_DIM = 1024  # channels of Mixed_5c = 384 + 384 + 128 + 128


@dataclasses.dataclass(frozen=True)
class I3DConfig:
    """The Kinetics-400 RGB I3D used by FVD [66]; defaults are the converted checkpoints'."""

    num_classes: int = 400  # Kinetics-400 classes; the 400 logits are FVD's features
    in_channels: int = 3  # RGB stream (the flow stream of [6] has 2; FVD uses RGB only)
    bn_eps: float = 1e-3  # batch-norm ε of the TF original (PyTorch's default is 1e-5)
    pool_window: tuple[int, int, int] = (2, 7, 7)  # head average pool (t, h, w), stride 1
    dropout: float = 0.5  # drop probability before the logits (training only; eval = identity)

    def __post_init__(self) -> None:
        if self.num_classes < 1 or self.in_channels < 1:
            raise ValueError("I3DConfig: num_classes and in_channels must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"I3DConfig.dropout must be in [0, 1), got {self.dropout}")


class I3DOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes), averaged over time: FVD's features
    features: torch.Tensor  # (B, 1024) Mixed_5c after the head's average pool, mean over t, h, w


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad x (B, C, T, H, W) as TensorFlow's 'SAME': output size ceil(in / stride)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]  # F.pad order: last dim first, (front, back)
    return F.pad(x, pads) if any(pads) else x


class MaxPool3dSame(nn.Module):
    """3D max pooling with 'SAME' padding (zeros; inputs are post-ReLU, so ≥ 0)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding) → optional BatchNorm3d → optional ReLU; params ``conv3d``, ``bn``."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), *, batch_norm: bool = True,
                 bias: bool = False, relu: bool = True, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(c_out, eps=bn_eps, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionBlock(nn.Module):
    """Inflated inception block: 1×1×1 | 1×1×1→3×3×3 | 1×1×1→3×3×3 | pool→1×1×1, concatenated."""

    def __init__(self, c_in: int, widths: tuple[int, int, int, int, int, int],
                 bn_eps: float) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(c_in, w0, bn_eps=bn_eps)
        self.b1a = Unit3D(c_in, w1a, bn_eps=bn_eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(c_in, w2a, bn_eps=bn_eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(c_in, w3b, bn_eps=bn_eps)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1
        )


class InceptionI3d(nn.Module):
    """I3D [6] in the pytorch-i3d key layout; ``forward`` gives Kinetics logits for FVD [66]."""

    def __init__(self, config: I3DConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or I3DConfig()
        eps = cfg.bn_eps
        # Stem: names are the TF checkpoint's scopes, kept for key compatibility.
        self.Conv3d_1a_7x7 = Unit3D(cfg.in_channels, 64, (7, 7, 7), (2, 2, 2), bn_eps=eps)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, bn_eps=eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), bn_eps=eps)
        self._trunk = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
        c = 192
        for name, widths in _MIXED:
            if name in _POOLS:
                pool_name, kernel, stride = _POOLS[name]
                self.add_module(pool_name, MaxPool3dSame(kernel, stride))
                self._trunk.append(pool_name)
            block = InceptionBlock(c, widths, eps)
            self.add_module(name, block)
            self._trunk.append(name)
            c = block.out_channels
        assert c == FEATURE_DIM
        self.dropout = nn.Dropout(cfg.dropout)
        self.logits = Unit3D(c, cfg.num_classes, batch_norm=False, bias=True, relu=False)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T, H, W) → Mixed_5c (B, 1024, ⌈T/8⌉, ⌈H/32⌉, ⌈W/32⌉)."""
        for name in self._trunk:  # the endpoint order of the TF original
            x = self.get_submodule(name)(x)
        return x

    def forward(self, x: torch.Tensor) -> I3DOutput:
        """x (B, 3, T, H, W) RGB in [-1, 1] (FVD: T = 16, H = W = 224) → ``I3DOutput``.

        logits (B, num_classes): the 1×1×1 logits conv on the 2×7×7-average-pooled Mixed_5c,
        averaged over the remaining time (and spatial, for inputs larger than 224) positions.
        """
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"I3D expects (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}"
            )
        h = self.trunk(x)
        window = tuple(min(k, s) for k, s in zip(self.config.pool_window, h.shape[2:]))
        pooled = F.avg_pool3d(h, window, stride=1)  # (B, 1024, T', H', W')
        logits = self.logits(self.dropout(pooled)).mean(dim=(2, 3, 4))
        return I3DOutput(logits=logits, features=pooled.mean(dim=(2, 3, 4)))


__all__ = ["FEATURE_DIM", "I3DConfig", "I3DOutput", "InceptionBlock", "InceptionI3d",
           "MaxPool3dSame", "Unit3D"]
