"""The autoencoder's objective (§3.2 "Training procedure", Eq. (2)–(7)), as used by
``pipeline.training.autoencoder.task.AutoencoderTask``: the recovery loss L_r (Eq. (4): L1 + VGG), the weighted
generator total (Eq. (2): λ_q L_q + λ_r L_r + λ_a L_a + λ_c L_c), the discriminators' step
(Eq. (5), + (γ/2)·R1 when ``r1_gamma`` > 0), the contextual loss L_c (Eq. (7), App. C/F
self-supervision), ``frozen`` (L_a's generator pass through frozen discriminators, Eq. (6)) and
the non-finite loss check.

``AutoencoderLosses`` is a mixin of ``AutoencoderTask``: its methods read the task's ``params``,
``vgg`` and ``disc_i`` attributes. Not in the paper: Δi feature matching (``lambda_fm``).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from ccvs_models.augment import SelfSupervision, contextual_loss, targets_at
from ccvs_models.autoencoder import DecoderOutput
from ccvs_models.discriminators import ImageDiscriminator
from ccvs_models.discriminators import (
    adversarial_loss,
    discriminator_loss,
    feature_matching_loss,
    r1_penalty,
)
from ccvs_models.perceptual import VGGFeatures, perceptual_loss
from pipeline.params import AutoencoderParams
from pipeline.training.task import StepContext


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Parameters of ``modules`` do not require grad inside the block (L_a's generator pass)."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class AutoencoderLosses:
    """The loss terms of ``AutoencoderTask`` (a mixin: needs ``self.params`` and ``self.vgg``)."""

    params: AutoencoderParams
    vgg: VGGFeatures | None
    disc_i: ImageDiscriminator | None

    def recovery_loss(self, x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_r of Eq. (4) terms that are on: {"rgb": ‖x − x̂‖₁, "vgg": ‖VGG(x) − VGG(x̂)‖₁}."""
        terms: dict[str, torch.Tensor] = {}
        if self.params.use_rgb:
            terms["rgb"] = (x.float() - x_hat.float()).abs().mean()
        if self.vgg is not None:
            terms["vgg"] = perceptual_loss(self.vgg, x, x_hat).float()
        return terms

    def adversarial_terms(self, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_a of Eq. (6) on Δi for the frames x̂ (B, 3, H, W): {"adv_i"}; with ``lambda_fm`` > 0
        also {"fm": Δi feature matching against the real frames x} (ours). Δi must be frozen."""
        if self.disc_i is None:
            return {}
        if self.params.lambda_fm <= 0:
            return {"adv_i": adversarial_loss(self.disc_i(fake).float())}
        logits, fake_feats = self.disc_i.forward_features(fake)
        with torch.no_grad():
            real_feats = self.disc_i.forward_features(real)[1]
        return {"adv_i": adversarial_loss(logits.float()),
                "fm": feature_matching_loss(fake_feats, real_feats)}

    def _generator_total(self, q_loss: torch.Tensor, rec: dict[str, torch.Tensor],
                         adv: dict[str, torch.Tensor], ctx_loss: torch.Tensor | None) -> torch.Tensor:
        p = self.params
        total = p.lambda_q * q_loss.float()
        for v in rec.values():
            total = total + p.lambda_r * v
        for k, v in adv.items():
            total = total + (p.lambda_fm if k == "fm" else p.lambda_a) * v.float()
        if ctx_loss is not None:
            total = total + p.lambda_c * ctx_loss
        return total

    def _disc_step(self, ctx: StepContext, pairs: Sequence[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Eq. (5) (+ γ/2 · R1) for each (module name, real, fake) pair; one "d" step."""
        if not pairs:
            return {}
        out: dict[str, float] = {}
        with ctx.autocast():
            total = torch.zeros((), device=ctx.device)
            for name, real, fake in pairs:
                d = ctx.modules[name]
                both = torch.cat([real, fake.detach().to(real.dtype)])  # one pass, stddev per half
                real_logits, fake_logits = d(both, parts=2).float().chunk(2)
                loss = discriminator_loss(real_logits, fake_logits)
                out[f"{name}/loss"] = loss.item()
                out[f"{name}/real_logit"] = real_logits.mean().item()
                out[f"{name}/fake_logit"] = fake_logits.mean().item()
                total = total + loss
                if self.params.r1_gamma > 0:
                    r1 = r1_penalty(ctx.raw[name], real)
                    out[f"{name}/r1"] = r1.item()
                    total = total + 0.5 * self.params.r1_gamma * r1.float()
        ctx.optimize(total, "d")
        return out

    def contextual(self, dec: DecoderOutput, views: list[SelfSupervision]) -> torch.Tensor | None:
        """L_c of Eq. (7), averaged over F levels and context views (None without views)."""
        if not views or not dec.levels:
            return None
        terms = []
        for flow, mask in zip(dec.flows, dec.masks):  # (B, c, 2, h, w), (B, c, 1, h, w)
            for i, view in enumerate(views):
                tgt = targets_at(view, tuple(flow.shape[-2:]))
                terms.append(contextual_loss(flow[:, i].float(), mask[:, i].float(), tgt.flow,
                                             tgt.mask, tgt.visibility).total)
        return torch.stack(terms).mean()


def _check_finite(loss: torch.Tensor, step: int, kind: str) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite generator loss at step {step} ({kind} step): lower lr / disc_lr, "
            "enable loop.grad_clip, or turn bf16 off")


__all__ = ["AutoencoderLosses", "frozen"]
