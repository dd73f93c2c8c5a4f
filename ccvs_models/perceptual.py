"""VGG feature extractor for the perceptual term of the recovery loss (§3.2, Eq. 4).

    L_r = ‖x − x̂‖_1 + ‖VGG(x) − VGG(x̂)‖_1                                           (4)

``VGGFeatures`` rebuilds the convolutional part of torchvision's VGG16 / VGG19 with the same
module layout (``features.<index>.weight`` / ``.bias`` for each conv of an ``nn.Sequential``), so
torchvision's ImageNet state dict loads into it with strict matching of the ``features.*`` keys.
Loading the weights (a local path or the public URL) is ``pipeline.weights``'s job; this module
holds no weight source and starts from random init.

Inputs are images in [-1, 1]; they are mapped to [0, 1] and normalised with the ImageNet
mean / std torchvision's weights expect. The forward pass stops after the deepest requested layer.
The weights are frozen (``requires_grad=False``) but gradients flow to the inputs, so x̂ is trained
through the term. The paper does not name the layers; the default is the usual relu1_2, relu2_2,
relu3_3, relu4_3 of VGG16, and the term is the sum over layers of the mean absolute difference.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's configurations "D" (VGG16) and "E" (VGG19): conv widths, "M" = 2×2 max pooling.
_CFGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def layer_names(arch: str) -> dict[str, int]:
    """Name ("relu3_3", "conv3_3", "pool3") → index in ``features`` for ``arch``."""
    if arch not in _CFGS:
        raise ValueError(f"VGG arch must be one of {sorted(_CFGS)}, got {arch!r}")
    names: dict[str, int] = {}
    index, stage, conv = 0, 1, 0
    for v in _CFGS[arch]:
        if v == "M":
            names[f"pool{stage}"] = index
            index, stage, conv = index + 1, stage + 1, 0
        else:
            conv += 1
            names[f"conv{stage}_{conv}"] = index
            names[f"relu{stage}_{conv}"] = index + 1
            index += 2
    return names


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """Which VGG and which activations the perceptual term of Eq. (4) compares."""

    arch: Literal["vgg16", "vgg19"] = "vgg16"  # torchvision configuration D or E
    layers: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")  # compared in Eq. (4)
    layer_weights: tuple[float, ...] | None = None  # per-layer weight of the L1 term (None = 1s)

    def __post_init__(self) -> None:
        names = layer_names(self.arch)
        unknown = [n for n in self.layers if n not in names]
        if unknown or not self.layers:
            raise ValueError(
                f"VGGConfig.layers: unknown {self.arch} layers {unknown}; choose from e.g. "
                f"relu1_2, relu2_2, relu3_3, relu4_3 (got {list(self.layers)})"
            )
        if self.layer_weights is not None and len(self.layer_weights) != len(self.layers):
            raise ValueError("VGGConfig.layer_weights: one weight per layer")

    @property
    def indices(self) -> tuple[int, ...]:
        names = layer_names(self.arch)
        return tuple(names[n] for n in self.layers)


def _make_features(arch: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _CFGS[arch]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(v)
    return nn.Sequential(*layers)


class VGGFeatures(nn.Module):
    """Frozen VGG16/19 ``features`` in torchvision's layout; returns the requested activations."""

    def __init__(self, cfg: VGGConfig = VGGConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = _make_features(cfg.arch)
        # Not persistent: the state dict holds exactly torchvision's features.* keys.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, H, W) in [-1, 1] → one (B, C_l, H_l, W_l) activation per ``cfg.layers``."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"VGGFeatures: expected (B, 3, H, W) images, got {tuple(x.shape)}")
        h = ((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        wanted = self.cfg.indices
        out: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out[i] = h
            if i >= max(wanted):
                break
        return [out[i] for i in wanted]

    def perceptual_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """‖VGG(x) − VGG(x̂)‖_1 of Eq. (4): Σ_l w_l · mean |φ_l(x) − φ_l(x̂)| (x: constant target)."""
        return perceptual_loss(self, x, x_hat)


def perceptual_loss(vgg: VGGFeatures, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Second term of Eq. (4). x, x_hat: (B, 3, H, W) in [-1, 1] → scalar."""
    if x.shape != x_hat.shape:
        raise ValueError(f"perceptual_loss: shapes differ {tuple(x.shape)} vs {tuple(x_hat.shape)}")
    with torch.no_grad():
        target = vgg(x)
    pred = vgg(x_hat)
    weights = vgg.cfg.layer_weights or (1.0,) * len(pred)
    return sum(w * F.l1_loss(p, t) for w, p, t in zip(weights, pred, target))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VGGConfig", "VGGFeatures", "layer_names",
           "perceptual_loss"]
