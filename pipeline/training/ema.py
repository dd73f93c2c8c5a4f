"""Exponential moving average of a module's weights.

The paper obtains the autoencoder's final parameters with an exponential moving average of the
training weights (§4 "Training details", following Yaz et al. [83], "The unusual effectiveness of
averaging in GAN training"). After every training step, for every floating-point parameter θ::

    θ_ema ← decay · θ_ema + (1 − decay) · θ          (θ_ema starts as a copy of θ)

Buffers (e.g. normalisation statistics, integer counters) are copied, not averaged. The shadow
copy is a full module in eval mode with gradients off, so a stage evaluates or exports it directly::

    ema = EMA(model, decay=0.999)
    for batch in batches:
        ...; optimizer.step(); ema.update(model)
    save_model(path, config, ema.module.state_dict())

``pipeline.training.loop.fit`` keeps one per name in ``TrainTask.ema_modules()`` when
``LoopConfig.ema_decay > 0`` and checkpoints it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A shadow copy of ``module`` whose floating-point parameters track an exponential average."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, source: nn.Module) -> None:
        """One step: θ_ema ← decay·θ_ema + (1 − decay)·θ for parameters; buffers copied."""
        ema_params = dict(self.module.named_parameters())
        for name, p in source.named_parameters():
            e = ema_params[name]
            if e.dtype.is_floating_point:
                e.lerp_(p.detach().to(e.dtype), 1.0 - self.decay)
            else:
                e.copy_(p.detach())
        ema_buffers = dict(self.module.named_buffers())
        for name, b in source.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(b.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow module's state dict (loadable into the original model class)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
