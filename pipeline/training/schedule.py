"""The one learning-rate schedule of the training stages: linear warm-up, then cosine decay.

A function of the step only, so a resumed run needs no scheduler state: the step comes from the
checkpoint.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, lr: float, warmup: int, steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps to ``lr``, then cosine decay to ``min_lr`` at ``steps``.

    ``step`` is the 0-based index of the step about to run.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(steps - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
