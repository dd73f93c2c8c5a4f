"""How a stage trains: the ``loop`` block of each training stage's params section (with how it
reads its shards: ``pipeline.data.stream``).

A leaf module (no project imports), so ``pipeline.params``, the loop and the tasks share it
without importing each other.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long and how a stage trains (a ``loop`` block in a stage's params section)."""

    steps: int  # optimisation steps in all (a resumed run continues up to this count)
    log_every: int = 10  # metrics are averaged over this many steps, then logged
    eval_every: int = 0  # TrainTask.evaluate every N steps (0: only at the end)
    ckpt_every: int = 500  # checkpoint every N steps (0: only at the end and on interrupt)
    keep_checkpoints: int = 2  # newest checkpoints kept in ckpt_dir (0: keep all)
    ema_decay: float = 0.0  # EMA of the weights, §4 "Training details" / [83] (0: off)
    bf16: bool | Literal["auto"] = False  # ctx.autocast() = torch.autocast(device, bfloat16),
    # conv weights stored channels-last; "auto": on where the device has bf16 matrix units
    # (``resolve_bf16``), off elsewhere
    device: Literal["cpu", "cuda", "auto"] = "auto"  # auto: CUDA when available
    seed: int = 0  # global RNG seed (each rank derives its own: distributed.rank_seed)
    grad_clip: float = 0.0  # max global grad norm per optimizer step (0: off)
    shuffle_block: int = 64  # the shard stream's shuffle block, in samples (0: shard order)
    data_workers: int = 0  # DataLoader processes per rank reading the shards (0: in the loop's)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")
        for name in ("eval_every", "ckpt_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if self.shuffle_block < 0 or self.data_workers < 0:
            raise ValueError(f"shuffle_block and data_workers must be >= 0, got "
                             f"{self.shuffle_block}, {self.data_workers}")
        if self.bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or auto, got {self.bf16!r}")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be cpu, cuda or auto, got {self.device!r}")
