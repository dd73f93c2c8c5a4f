"""Training procedure of the context-aware autoencoder (§3.2 "Training procedure", Eq. (2)–(7);
App. A recursive video step and Δt; App. C/F self-supervision; App. D multi-frame context;
Table 1 ablations and its "Reconstruction" protocol).

Objective, Eq. (2): L = λ_q L_q + λ_r L_r + λ_a L_a + λ_c L_c with
  L_q  Eq. (3), from the quantizer (``QuantizerOutput.loss``);
  L_r  Eq. (4) = ‖x − x̂‖₁ (``use_rgb``) + ‖VGG(x) − VGG(x̂)‖₁ (``use_vgg``, needs ImageNet weights);
  L_a  Eq. (6) on Δi (``use_image_disc``) and, in video steps, on Δt (``use_temporal_disc``);
  L_c  Eq. (7) at the decoder levels where F runs (``self_supervision``, image steps only);
and, not in the paper (1 in the demo's params.yaml): λ_free · L_r of the context-free decoding
D(z_q) on image steps with F (``lambda_free``), see "F at a short budget" in the notes below;
and the discriminators trained on Eq. (5) (+ (γ/2)·R1 when ``r1_gamma`` > 0).

Two kinds of step alternate (``video_every``: every n-th step is a video step):

* **Image step** (§3.2). A batch of single frames x. With ``self_supervision`` the context of x is
  c augmented views x_c = o_c ⊗ B(A(x)) (``ccvs_models.augment.make_context``, one independent
  draw per view), and L_c compares F's flow and mask of view i at every F level with the targets
  of that view (``targets_at``; mask target 1 − o'_c, see augment's docstring). Without
  self-supervision the context is the c frames preceding x in its clip (the first frame is
  repeated when x has fewer predecessors) and L_c is off. c = ``model.context_frames``; c = 0
  means no F and no context at all (Table 1's first rows).
* **Video step** (App. A). A clip x_0 … x_{T−1} (T = ``video_frames``). Frames 1 … T−1 are
  decoded one by one from their own latents z_q (straight-through, so E, Q get gradients); the
  context of frame t is E of the up-to-c previous frames, the ground-truth x_0 first, then the
  *decoded* x̂_{t−1}, x̂_{t−2}, … re-encoded — as at inference. "We only keep the gradients for
  the context features from the immediate preceding frame": the features of x̂_{t−1} keep their
  graph (through E back into x̂_{t−1}), those of older frames are detached
  (``decode_recursively``). L_r (and Δi's L_a) apply to every decoded frame; the synthetic clip
  [x_0, x̂_1, …, x̂_{T−1}] is Δt's fake sample and the real clip its real one. With
  ``video_warmup`` = W > 0 (not in the paper) the window is W frames longer and its first W
  frames after x_0 are decoded the same way but without any graph (no loss, no Δ), so the graded
  frames' contexts are W + 1 … W + T − 1 recursions deep, as late in a clip at inference; Δt
  then sees [x̂_W (detached), graded frames] against the real frames W … W + T − 1.

Optimisation: Adam for E, Q, F, D (``lr``) and one Adam for Δi and Δt (``disc_lr``), both with
``betas`` (demo: (0.5, 0.9), the usual GAN setting). The paper quotes a learning rate of 0.02
without more detail; on the demo scale that diverges, so the default is much lower (params.yaml).
Each step: generator forward through the DDP-able wrapper ``AutoencoderForward`` → generator
loss (L_a through the *bare*, frozen discriminators: no gradient reaches them) → step "g"; then
the discriminators on real vs detached reconstructions through their DDP wrappers → step "d".
The EMA (``loop.ema_decay``) is kept of the wrapper, i.e. of E, Q, F, D; it is what evaluation
uses and what the stage saves.

Codebook (not in the paper): E's initial outputs are ~0.06 in scale against unit-variance codes,
so every z picks the same entry and the codebook collapses at once (and F, which can rebuild x
from its context, gives E no reason to recover). With ``dead_code_every`` > 0 the first step
re-seeds every code with encoder outputs of the batch (a data-dependent init), and codes unused
over ``dead_code_every`` steps are re-seeded the same way later (``reseed_dead_codes``).
With ``codebook_ema`` = γ > 0 the codebook is not optimised by Adam: after every generator step
its entries become moving averages (decay γ, Laplace-smoothed counts) of the encoder outputs
assigned to them (``VectorQuantizer.ema_update``, the VQ-VAE-2 update); L_q's codebook term then
has no parameter to move and only the commitment term trains E. The statistics are checkpointed,
all-reduced under DDP, and reset for re-seeded codes.

Context warm-up (not in the paper, ``context_warmup`` = W): during steps 0 … W − 1, F is bypassed
— image steps decode x from its tokens with no context (no L_c) and video steps decode every
frame independently — so the tokens learn to carry the image before F can copy a context.

Measured notes (not in the paper): why the demo's F settings are what they are at a short budget
("F at a short budget") and the options tried and kept off: ``docs/AUTOENCODER_NOTES.md``.

Evaluation — Table 1 "Reconstruction": every frame's true tokens Q(E(x_t)) are decoded with F's
context = the previous *reconstructed* frames (the real first frame as initial context), so errors
propagate as at inference. PSNR and SSIM (``pipeline.metrics.image``, on [0, 1] frames) are the
means over the decoded frames 1 … T−1 of every clip, and at the last frame; codebook perplexity
and usage over the validation tokens.

The forward passes (``decode_recursively``, ``AutoencoderForward``) and the Table 1 protocol
(``reconstruct_clips``, ``summarize``) live in ``pipeline.training.autoencoder.forward``; the batches and their
streams (``ImageBatch``, ``VideoBatch``, ``is_video_step``; the crop rule ``ClipCrops`` /
``ClipBatches``; ``clip_stream``, the stage's train clips streamed from shards with exact resume;
``make_batch_stream`` over clips in memory, for tests) in ``pipeline.training.autoencoder.batches``; the loss terms
(L_r, the Eq. (2) total, the Eq. (5) discriminator step, L_c, ``frozen``) in ``pipeline.training.autoencoder.losses``,
whose ``AutoencoderLosses`` is a mixin of ``AutoencoderTask``. This module re-exports them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ccvs_models.augment import SelfSupervision, make_context
from ccvs_models.autoencoder import CCVSAutoencoder
from ccvs_models.blocks import channels_last_
from ccvs_models.discriminators import ImageDiscriminator, TemporalDiscriminator, adversarial_loss
from ccvs_models.perceptual import VGGFeatures
from pipeline.training import distributed
from pipeline.training.autoencoder.batches import ImageBatch, VideoBatch
from pipeline.training.autoencoder.forward import (
    AutoencoderForward,
    ImageInputs,
    ReconstructionEval,
    VideoInputs,
    reconstruct_clips,
    summarize,
    to_model_range,
)
from pipeline.training.autoencoder.losses import AutoencoderLosses, _check_finite, frozen
from pipeline.params import AutoencoderParams
from pipeline.training.task import StepContext, TrainTask, seeded_init


# --------------------------------------------------------------------------- the task


class AutoencoderTask(AutoencoderLosses, TrainTask):
    """``TrainTask`` of the autoencoder stage: modules "ae" (E, Q, F, D), "disc_i", "disc_t".

    vgg: the frozen ImageNet VGG of Eq. (4), or None (the VGG term is then off; the stage says so).
    val_clips: uint8 (N, T, H, W, 3) clips for the periodic evaluation (None: no evaluation);
    val_layouts: their uint8 (N, T, H, W) layouts, for the object-region scores (None: absent).
    ``config`` is what a resumed checkpoint must match (the stage adds a data fingerprint).
    """

    def __init__(
        self,
        params: AutoencoderParams,
        vgg: VGGFeatures | None = None,
        val_clips: np.ndarray | None = None,
        config: dict[str, Any] | None = None,
        val_layouts: np.ndarray | None = None,
    ) -> None:
        self.params = params
        with seeded_init(params.loop.seed):
            self.model = CCVSAutoencoder(params.model)
            self.disc_i = ImageDiscriminator(params.image_disc) if params.use_image_disc else None
            self.disc_t = (TemporalDiscriminator(params.temporal_disc)
                           if params.use_temporal_disc else None)
        self.ae = AutoencoderForward(self.model)
        for module in (self.model, self.disc_i, self.disc_t):  # convs channels-last (speed)
            if module is not None:
                channels_last_(module)
        self.vgg = vgg if params.use_vgg else None
        self.val_clips = val_clips
        self.val_layouts = val_layouts  # (N, T, H, W) ground-truth layouts: object-region scores
        self._config = config if config is not None else dataclasses.asdict(params)
        if params.context_warmup < 0:
            raise ValueError(f"context_warmup must be >= 0, got {params.context_warmup}")
        if not 0.0 <= params.codebook_ema < 1.0:
            raise ValueError(f"codebook_ema must be in [0, 1), got {params.codebook_ema}")
        # EMA codebook: (N, m) statistics of VectorQuantizer.ema_update; the codebook leaves Adam.
        self.ema_stats: tuple[torch.Tensor, torch.Tensor] | None = None
        if params.codebook_ema > 0:
            self.model.quantizer.codebook.weight.requires_grad_(False)
            self.ema_stats = self.model.quantizer.ema_init()
        betas = tuple(params.betas)
        trainable = [p for p in self.ae.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(trainable, lr=params.lr, betas=betas)
        disc_params = [p for d in (self.disc_i, self.disc_t) if d is not None for p in d.parameters()]
        self.opt_d = torch.optim.Adam(disc_params, lr=params.disc_lr, betas=betas) if disc_params else None
        self.usage = torch.zeros(params.model.codebook_size, dtype=torch.long)  # since last reseed
        self.since_reseed = 0
        self.reseeded_total = 0
        self.last_eval: ReconstructionEval | None = None

    # ------------------------------------------------------------------ TrainTask

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"ae": self.ae}
        if self.disc_i is not None:
            mods["disc_i"] = self.disc_i
        if self.disc_t is not None:
            mods["disc_t"] = self.disc_t
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"g": self.opt_g}
        if self.opt_d is not None:
            opts["d"] = self.opt_d
        return opts

    def ema_modules(self) -> list[str]:
        return ["ae"]

    def config(self) -> dict[str, Any]:
        return self._config

    def extra_state(self) -> dict[str, Any]:
        state = {"usage": self.usage.clone(),
                 "since_reseed": self.since_reseed, "reseeded_total": self.reseeded_total}
        if self.ema_stats is not None:
            state["codebook_ema"] = [t.detach().cpu().clone() for t in self.ema_stats]
        return state

    def ddp_options(self) -> dict[str, Any]:
        # During the context warm-up F gets no gradient.
        return {"find_unused_parameters": True} if self.params.context_warmup > 0 else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "usage" in state:
            self.usage = state["usage"].clone().long()
            self.since_reseed = int(state["since_reseed"])
            self.reseeded_total = int(state["reseeded_total"])
        if self.ema_stats is not None and "codebook_ema" in state:
            self.ema_stats = tuple(t.clone().float() for t in state["codebook_ema"])

    def uses_context(self, step: int) -> bool:
        """False during the context warm-up (steps < ``context_warmup``): F is bypassed."""
        return step >= self.params.context_warmup

    @torch.no_grad()
    def codebook_ema_step(self, z: torch.Tensor, tokens: torch.Tensor, ctx: StepContext) -> None:
        """With ``codebook_ema`` > 0: move every code to the moving average of its assigned z."""
        if self.ema_stats is None:
            return
        quantizer = ctx.raw["ae"].model.quantizer
        counts, sums = quantizer.ema_batch_stats(z.detach(), tokens)
        if distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
            counts, sums = counts / ctx.world_size, sums / ctx.world_size
        size, embed = (t.to(counts.device) for t in self.ema_stats)
        quantizer.ema_update(size, embed, counts, sums, self.params.codebook_ema)
        self.ema_stats = (size, embed)

    @torch.no_grad()
    def reseed_dead_codes(self, z: torch.Tensor, counts: torch.Tensor, step: int,
                          ctx: StepContext) -> int:
        """Count code usage; every ``dead_code_every`` steps re-seed unused codes with rows of z.

        Not in the paper: early in training F can rebuild x from its context alone, and the
        codebook then collapses to a few entries. Codes unused (on every rank) since the last
        re-seeding get encoder outputs of this batch (rank 0 draws, then broadcasts); the EMA
        copy of those rows is reset to the new values too, so the saved model does not average a
        re-seeded code with its dead predecessor.
        """
        every = self.params.dead_code_every
        if every == 0:
            return 0
        if step == 0:  # data-dependent init: every code starts as an encoder output
            self.usage.zero_()
        else:
            self.usage += counts.detach().cpu().long()
            self.since_reseed += 1
            if self.since_reseed < every:
                return 0
        usage = self.usage.to(ctx.device)
        if distributed.is_initialized():
            torch.distributed.all_reduce(usage)
        quantizer = ctx.raw["ae"].model.quantizer
        gen = torch.Generator().manual_seed(self.params.loop.seed * 7919 + step)
        n = quantizer.reinit_dead_codes(z, usage, threshold=0, generator=gen) if ctx.is_main else 0
        weight = quantizer.codebook.weight
        if distributed.is_initialized():
            torch.distributed.broadcast(weight.data, src=0)
            n = int(round(distributed.all_reduce_mean({"n": float(n)})["n"] * ctx.world_size))
        dead = (usage <= 0).to(weight.device)
        if "ae" in ctx.ema and n > 0:
            ema_weight = ctx.ema["ae"].model.quantizer.codebook.weight
            ema_weight[dead.to(ema_weight.device)] = weight[dead].to(ema_weight.dtype)
        if self.ema_stats is not None and n > 0:  # a re-seeded code restarts its statistics
            size, embed = (t.to(weight.device) for t in self.ema_stats)
            size[dead] = 1.0
            embed[dead] = weight[dead].float()
            self.ema_stats = (size, embed)
        self.usage.zero_()
        self.since_reseed = 0
        self.reseeded_total += n
        return n

    def train_step(self, batch: ImageBatch | VideoBatch, step: int, ctx: StepContext) -> dict[str, float]:
        if self.vgg is not None and next(self.vgg.parameters()).device != ctx.device:
            self.vgg.to(ctx.device)
        t0 = time.perf_counter()
        if isinstance(batch, VideoBatch):
            out = self.video_step(batch, step, ctx)
            out["time/video_step_s"] = time.perf_counter() - t0
        else:
            out = self.image_step(batch, step, ctx)
            out["time/image_step_s"] = time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ steps

    def context_for(self, x: torch.Tensor, previous: torch.Tensor, step: int,
                    device: torch.device) -> tuple[torch.Tensor | None, list[SelfSupervision]]:
        """The image step's context (B, c, 3, H, W) and, with self-supervision, its c views."""
        c = self.params.model.context_frames
        if c == 0 or not self.uses_context(step):
            return None, []
        if self.params.self_supervision:
            gen = torch.Generator().manual_seed(
                distributed.rank_seed(self.params.loop.seed * 1_000_003 + step))
            views = [make_context(x, self.params.augment, gen) for _ in range(c)]
            return torch.stack([v.context for v in views], 1), views
        return previous[:, :c], []

    def image_step(self, batch: ImageBatch, step: int, ctx: StepContext) -> dict[str, float]:
        frames = to_model_range(ctx.to_device(batch.frames))  # (B, 1 + p, 3, H, W)
        x = frames[:, 0]
        context, views = self.context_for(x, frames[:, 1:], step, ctx.device)
        free = self.params.lambda_free > 0 and context is not None
        with ctx.autocast():
            step_out = ctx.modules["ae"](ImageInputs(x, context, free))
            out = step_out.recon
            rec = self.recovery_loss(x, out.x_hat)
            if step_out.x_free is not None:  # L_r of D(z_q) without context, × λ_free (logged so)
                rec.update({f"free_{k}": self.params.lambda_free * v
                            for k, v in self.recovery_loss(x, step_out.x_free).items()})
            with frozen(self.disc_i):
                adv = self.adversarial_terms(out.x_hat, x)
            lc = self.contextual(out.decoder, views)
            loss = self._generator_total(out.quant.loss, rec, adv, lc)
        _check_finite(loss, step, "image")
        ctx.optimize(loss, "g")
        self.codebook_ema_step(out.z, out.quant.tokens, ctx)
        reseeded = self.reseed_dead_codes(out.z, out.quant.counts, step, ctx)
        metrics = {"loss": loss.item(), "img/q": out.quant.loss.item(),
                   "img/perplexity": out.quant.perplexity.item(), "reseeded_codes": float(reseeded)}
        metrics.update({f"img/{k}": v.item() for k, v in {**rec, **adv}.items()})
        if lc is not None:
            metrics["img/ctx"] = lc.item()
        if self.disc_i is not None:
            metrics.update({f"img/{k}": v for k, v in
                            self._disc_step(ctx, [("disc_i", x, out.x_hat)]).items()})
        return metrics

    def video_step(self, batch: VideoBatch, step: int, ctx: StepContext) -> dict[str, float]:
        clip = to_model_range(ctx.to_device(batch.clips))  # (B, W + T, 3, H, W)
        w = self.params.video_warmup
        real, real_clip = clip[:, 1 + w :].flatten(0, 1), clip[:, w:]
        with ctx.autocast():
            num_context = None if self.uses_context(step) else 0
            out = ctx.modules["ae"](VideoInputs(clip, num_context, w))
            fake = out.frames.flatten(0, 1)
            fake_clip = torch.cat([out.first[:, None].to(clip.dtype), out.frames.to(clip.dtype)], 1)
            rec = self.recovery_loss(real, fake)
            with frozen(self.disc_i, self.disc_t):
                adv = self.adversarial_terms(fake, real)
                if self.disc_t is not None:
                    adv["adv_t"] = adversarial_loss(self.disc_t(fake_clip).float())
            loss = self._generator_total(out.quant.loss, rec, adv, None)
        _check_finite(loss, step, "video")
        ctx.optimize(loss, "g")
        self.codebook_ema_step(out.z, out.quant.tokens, ctx)
        reseeded = self.reseed_dead_codes(out.z, out.quant.counts, step, ctx)
        metrics = {"loss": loss.item(), "vid/q": out.quant.loss.item(),
                   "vid/perplexity": out.quant.perplexity.item(), "reseeded_codes": float(reseeded)}
        metrics.update({f"vid/{k}": v.item() for k, v in {**rec, **adv}.items()})
        pairs = []
        if self.disc_i is not None:
            pairs.append(("disc_i", real, fake))
        if self.disc_t is not None:
            pairs.append(("disc_t", real_clip, fake_clip))
        metrics.update({f"vid/{k}": v for k, v in self._disc_step(ctx, pairs).items()})
        return metrics

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, step: int, ctx: StepContext) -> dict[str, float]:
        if self.val_clips is None or len(self.val_clips) == 0:
            return {}
        model = ctx.eval_module("ae").model
        result = reconstruct_clips(model, self.val_clips, ctx.device, layouts=self.val_layouts)
        self.last_eval = result
        return summarize(result, self.params.model.codebook_size)


__all__ = [
    "AutoencoderTask",
]
