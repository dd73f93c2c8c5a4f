"""The position estimator: a frame → the (x, y) of the robot's gripper (App. A "Position estimator").

Paper (§4 "Datasets", App. A): 500 BAIR frames are hand-annotated with the gripper's (x, y); a
small network — "a few downsampling convolutional layers and a fully connected layer" — regresses
those coordinates with a mean squared error, and then extracts the arm's trajectory from every
video for state-conditioned synthesis (2 position tokens per frame, quantized by the tokenizer).

Two deviations, both deliberate:

* **Frames, not latents.** The paper's estimator reads E's latent features. In this pipeline the
  ``positions`` stage runs beside the ``autoencoder`` stage in the DAG (both read the clip shards),
  so the estimator reads frames: x (B, 3, H, W) in [−1, 1], the same input convention as E.
* **Soft-argmax head by default.** After the downsampling ``ResBlock``s (the blocks E uses) the
  default head is a 1×1 conv giving, per cell of the final h × w grid, a logit and a sub-cell
  offset; a spatial softmax turns the logits into a heatmap p and the prediction is
  Σ p · (cell centre + offset) (``soft_argmax``). It is translation-equivariant and tiny, so
  ~450 annotated frames suffice for sub-pixel accuracy. Without the offsets, training sometimes
  stalls once p peaks on one cell (error ≈ half a cell, softmax saturated: 1.5–3 px on the demo
  world); with them the demo reaches ≈ 0.5 px in 300 steps. The paper's fully connected head
  (``head="linear"``, on features pooled to ``linear_grid``², kept for comparison) was at 2.3 px
  mean in a 200-step trial where the soft-argmax (then without offsets) was at 1.0 px. The training objective is the
  paper's: MSE on the coordinates.

Coordinates. Outside the model, positions are pixels: x to the right, y down, origin at the centre
of the top-left pixel (docs/CONTRACTS.md), so a frame spans [−0.5, W − 0.5]. Inside, they are
normalised to [−1, 1] over the frame's edges, u = 2 (x + 0.5) / W − 1, which keeps the regression
target's scale independent of the resolution; the loss is the MSE in these normalised units
(× (W/2)² gives squared pixels).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.blocks import ResBlock


@dataclasses.dataclass(frozen=True)
class PositionEstimatorConfig:
    """Sizes of the position estimator. The paper gives no widths ("a few downsampling layers").

    The model takes any H × W divisible by ``downsampling`` (the stage feeds it the clips'
    resolution), so no resolution is stored here.
    """

    in_channels: int = 3  # image channels (RGB)
    stem_channels: int = 16  # width of the first 3×3 conv
    stem_stride: int = 2  # 2: the stem halves H and W (the blocks then cost 4× less); 1: it does not
    channels: tuple[int, ...] = (24, 32)  # output width of each downsampling ResBlock (App. A);
    # the head sees an (H / downsampling) × (W / downsampling) grid (64 → 8 by default)
    refine_blocks: int = 0  # extra ResBlocks (no resampling) at the final resolution
    head: Literal["soft_argmax", "linear"] = "soft_argmax"  # soft_argmax: spatial softmax over a
    # 1×1-conv heatmap, expected cell centre; linear: the paper's fully connected layer (App. A)
    linear_grid: int = 8  # linear head only: features are average-pooled to this grid first, so
    # the fully connected layer has a fixed input size whatever the resolution

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("channels: need at least one downsampling block")
        if any(c < 1 for c in self.channels) or self.stem_channels < 1:
            raise ValueError(f"channel widths must be positive, got {self.stem_channels}, {self.channels}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {self.stem_stride}")
        if self.refine_blocks < 0:
            raise ValueError(f"refine_blocks must be >= 0, got {self.refine_blocks}")
        if self.head not in ("soft_argmax", "linear"):
            raise ValueError(f"head must be 'soft_argmax' or 'linear', got {self.head!r}")
        if self.linear_grid < 1:
            raise ValueError(f"linear_grid must be >= 1, got {self.linear_grid}")

    @property
    def downsampling(self) -> int:
        """Total downsampling factor from the frame to the head's grid."""
        return self.stem_stride * 2 ** len(self.channels)


class PositionOutput(NamedTuple):
    """What ``PositionEstimator.forward`` returns."""

    xy: torch.Tensor  # (B, 2) predicted (x, y) in pixels
    uv: torch.Tensor  # (B, 2) the same in normalised coordinates, [−1, 1] over the frame edges
    heatmap: torch.Tensor | None  # (B, h, w) soft-argmax probabilities (None for the linear head)
    loss: torch.Tensor | None  # scalar MSE on normalised coordinates, when a target was given


def _size(width: int, height: int, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor([width, height], dtype=like.dtype, device=like.device)


def pixels_to_unit(xy: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(…, 2) pixel (x, y) (origin at the top-left pixel's centre) → [−1, 1] over the frame edges."""
    return (xy + 0.5) * (2.0 / _size(width, height, xy)) - 1.0


def unit_to_pixels(uv: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Inverse of ``pixels_to_unit``."""
    return (uv + 1.0) * (_size(width, height, uv) / 2.0) - 0.5


def _cell_centres(n: int, like: torch.Tensor) -> torch.Tensor:
    """(n,) centres of n equal cells spanning [−1, 1]."""
    return (torch.arange(n, dtype=torch.float32, device=like.device) + 0.5) * (2.0 / n) - 1.0


def soft_argmax(logits: torch.Tensor, offsets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, h, w) [, offsets (B, 2, h, w)] → (uv (B, 2) in [−1, 1], heatmap p (B, h, w)).

    p = softmax over the h·w cells; uv = Σ p · (cell centre + tanh(offset) · cell size): each cell
    also says where in (or around) it the point lies. Without offsets a peaked p can only say
    "this cell", its error is then up to half a cell and its gradient vanishes (the softmax
    saturates); the offsets keep sub-cell precision and a gradient whatever the peakiness.
    """
    gh, gw = logits.shape[-2:]
    p = logits.float().flatten(1).softmax(dim=1).view(-1, gh, gw)
    u = _cell_centres(gw, p).view(1, 1, gw).expand(p.shape[0], gh, gw)
    v = _cell_centres(gh, p).view(1, gh, 1).expand(p.shape[0], gh, gw)
    if offsets is not None:
        d = torch.tanh(offsets.float())
        u = u + d[:, 0] * (2.0 / gw)
        v = v + d[:, 1] * (2.0 / gh)
    uv = torch.stack([(p * u).sum(dim=(1, 2)), (p * v).sum(dim=(1, 2))], dim=1)
    return uv, p


class PositionEstimator(nn.Module):
    """Frames x → gripper position (x, y): a stem conv, ResBlocks ↓ ×len(channels), then a
    soft-argmax or linear head (App. A "Position estimator"; deviations in the module docstring)."""

    def __init__(self, config: PositionEstimatorConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        self.stem = nn.Conv2d(cfg.in_channels, cfg.stem_channels, 3, stride=cfg.stem_stride, padding=1)
        blocks: list[nn.Module] = []
        width = cfg.stem_channels
        for out in cfg.channels:
            blocks.append(ResBlock(width, out, "down"))
            width = out
        blocks += [ResBlock(width, width, "none") for _ in range(cfg.refine_blocks)]
        self.blocks = nn.Sequential(*blocks)
        if cfg.head == "soft_argmax":
            self.head: nn.Module = nn.Conv2d(width, 3, 1)  # logit, offset u, offset v per cell
            nn.init.zeros_(self.head.weight[1:].data)  # offsets start at 0: the cell centres
            nn.init.zeros_(self.head.bias.data)
        else:
            self.head = nn.Linear(width * cfg.linear_grid**2, 2)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> PositionOutput:
        """x: (B, 3, H, W) frames in [−1, 1], H and W divisible by ``config.downsampling``;
        target: optional (B, 2) true (x, y) in pixels → ``loss`` = MSE in normalised units."""
        height, width = x.shape[-2:]
        step = self.config.downsampling
        if height % step or width % step:
            raise ValueError(
                f"PositionEstimator: frame size {height}×{width} is not divisible by {step} "
                "(stem_stride × 2^len(channels))")
        h = F.leaky_relu(self.blocks(self.stem(x)), 0.2)  # (B, C, h, w)
        heatmap = None
        if self.config.head == "soft_argmax":
            out = self.head(h)
            uv, heatmap = soft_argmax(out[:, 0], out[:, 1:])
        else:
            pooled = F.adaptive_avg_pool2d(h, self.config.linear_grid)
            uv = self.head(pooled.flatten(1)).float()
        xy = unit_to_pixels(uv, width, height)
        loss = None
        if target is not None:
            loss = F.mse_loss(uv, pixels_to_unit(target.float(), width, height))
        return PositionOutput(xy=xy, uv=uv, heatmap=heatmap, loss=loss)
