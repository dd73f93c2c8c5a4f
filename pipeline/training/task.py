"""The task protocol of the shared training loop: what a stage writes, what a step gets.

A stage describes *what* one step does by subclassing ``TrainTask``; ``pipeline.training.loop.fit``
calls it and hands every ``train_step`` / ``evaluate`` a ``StepContext`` (device, the possibly
DDP-wrapped modules, EMA copies, optimizers, autocast, backward / clip / step). Ranks other than
0 log into a ``NullLogger``. ``pipeline.training.loop`` re-exports all three.

Example (a stage)::

    class AETask(TrainTask):
        def __init__(self, cfg, lr):
            self.ae, self.disc = Autoencoder(cfg.model), ImageDiscriminator(cfg.disc)
            self.opt_g = torch.optim.Adam(self.ae.parameters(), lr)
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr)
            self.cfg = cfg
        def modules(self):    return {"ae": self.ae, "disc": self.disc}
        def optimizers(self): return {"g": self.opt_g, "d": self.opt_d}
        def ema_modules(self): return ["ae"]
        def config(self):     return dataclasses.asdict(self.cfg)
        def train_step(self, batch, step, ctx):
            x = ctx.to_device(batch["frames"])
            ae, disc = ctx.modules["ae"], ctx.modules["disc"]   # DDP-wrapped when distributed
            with ctx.autocast():
                out = ae(x)
                loss_d = d_loss(disc(x), disc(out.recon.detach()))
            ctx.optimize(loss_d, "d")
            with ctx.autocast():
                loss_g = out.loss + g_loss(disc(out.recon))
            ctx.optimize(loss_g, "g")
            return {"loss": loss_g.item(), "loss_d": loss_d.item()}
        def evaluate(self, step, ctx):
            return {"val/psnr": psnr_on_val(ctx.eval_module("ae"), ctx.device)}

    result = fit(AETask(cfg, lr), lambda start: make_batches(seed, rank, start), params.loop,
                 Path("checkpoints/autoencoder"), logger)
    if result.is_main:
        save_model("models/autoencoder.pt", cfg.model, result.state["ae"], step=result.step)

Rules a task follows:

* **Forward through ``ctx.modules[name]``.** Under DDP that is the ``DistributedDataParallel``
  wrapper, whose forward arms the gradient all-reduce; calling the bare module (or a method other
  than ``forward``) skips it and the replicas drift apart (``fit`` checks the replicas agree at
  every checkpoint and stops with an error naming the module if not). A model used through
  several methods gets a small wrapper module whose ``forward`` computes the losses.
* **Same metric keys on every rank**: metrics are averaged across ranks at each log point.
* **Backward outside autocast**: ``with ctx.autocast(): loss = ...`` then ``ctx.optimize(loss, name)``
  (= zero_grad, backward, clip, step) or ``ctx.backward`` / ``ctx.step`` for finer control.
* **Evaluation** (``evaluate``) runs on every rank every ``eval_every`` steps and at the end, with
  the modules in eval mode, under ``torch.no_grad()``, with its own fixed seed and the training
  RNG streams put back afterwards (so evaluating never changes the training run). Use
  ``ctx.eval_module(name)`` (the EMA copy when there is one); rank 0's metrics are logged.

The batch stream (``fit``'s ``batches``), stopping and resume are described in
``pipeline.training.loop``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import torch
from torch import nn

from pipeline.training.config import LoopConfig


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build a task's modules inside this block: their initial weights follow ``seed`` (a torch
    process starts from a random seed), and the global RNG streams are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class TrainTask:
    """What a stage implements; ``fit`` calls it. Override the first five; the rest are optional."""

    def modules(self) -> dict[str, nn.Module]:
        """Every module to checkpoint, by name (the same objects on every call)."""
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers over those modules' parameters, by name (checkpointed)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The config(s) that built the modules, as plain data (``dataclasses.asdict``)."""
        raise NotImplementedError

    def train_step(self, batch: Any, step: int, ctx: StepContext) -> dict[str, float]:
        """One optimisation step on ``batch`` (step = 0-based index); returns scalar metrics."""
        raise NotImplementedError

    def ema_modules(self) -> list[str]:
        """Names of the modules that get an EMA copy when ``loop.ema_decay > 0``."""
        return []

    def evaluate(self, step: int, ctx: StepContext) -> dict[str, float]:
        """Validation metrics after ``step`` completed steps; may log artifacts via ctx.logger."""
        return {}

    def extra_state(self) -> dict[str, Any]:
        """Anything else to checkpoint (LR schedulers, counters), weights_only-safe data."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""

    def ddp_options(self) -> dict[str, Any]:
        """Keyword arguments for ``DistributedDataParallel`` (e.g. find_unused_parameters)."""
        return {}


class NullLogger:
    """The logger of ranks other than 0 (and of ``fit(logger=None)``): drops everything."""

    def log_params(self, params: dict) -> None: ...
    def log_metric(self, name: str, value: float, step: int | None = None) -> None: ...
    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...
    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None: ...
    def set_tag(self, key: str, value: Any) -> None: ...
    def set_tags(self, tags: dict) -> None: ...


@dataclasses.dataclass
class StepContext:
    """What ``train_step`` / ``evaluate`` get from the loop."""

    loop: LoopConfig
    device: torch.device
    rank: int
    world_size: int
    logger: Any  # the stage's logger on rank 0, a NullLogger elsewhere
    modules: dict[str, nn.Module]  # call these: DDP-wrapped when distributed and trainable
    raw: dict[str, nn.Module]  # the bare modules (for state, parameters, non-forward methods)
    ema: dict[str, nn.Module]  # EMA shadow modules (eval mode, no grad), by name
    optimizers: dict[str, torch.optim.Optimizer]
    _metrics: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on this device when ``loop.bf16``, else a no-op context."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.loop.bf16)

    def to_device(self, batch: Any) -> Any:
        """``batch`` (tensors in dicts/lists/tuples) moved to ``self.device``."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
            return type(batch)(self.to_device(v) for v in batch)
        if isinstance(batch, tuple):  # NamedTuple
            return type(batch)(*(self.to_device(v) for v in batch))
        return batch

    def eval_module(self, name: str) -> nn.Module:
        """The EMA copy of module ``name`` when there is one, else the bare module."""
        return self.ema.get(name, self.raw[name])

    def zero_grad(self, name: str) -> None:
        self.optimizers[name].zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` in float32 (call outside ``autocast``)."""
        loss.float().backward()

    def step(self, name: str) -> float | None:
        """Clip the gradients of optimizer ``name``'s parameters (``loop.grad_clip``), then step.

        Returns the pre-clip global gradient norm (also logged as ``grad_norm/<name>``) when
        clipping is on, else None.
        """
        opt = self.optimizers[name]
        norm = None
        if self.loop.grad_clip > 0:
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.loop.grad_clip))
            self._metrics[f"grad_norm/{name}"] = norm
        opt.step()
        return norm

    def optimize(self, loss: torch.Tensor, name: str) -> float | None:
        """zero_grad → backward → clip → step for optimizer ``name``; returns the grad norm."""
        self.zero_grad(name)
        self.backward(loss)
        return self.step(name)
