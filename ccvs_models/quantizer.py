"""Nearest-neighbour vector quantizer Q and un-quantizer U (§3.1, Eq. (3), App. A "Quantizer").

§3.1: Q : R^F → ⟦1, q⟧ is parameterised by an F × q codebook; given the embedding z of a frame it
returns the h × w matrix of indices of the closest codebook entry for every feature vector z_ij.
U : ⟦1, q⟧ → R^F maps a token back to its codebook entry, so z_q = U(Q(z)).

Eq. (3): L_q(E, Q) = ‖sg(z) − z_q‖² + β ‖sg(z_q) − z‖², the first term moving the codebook towards
the encoder outputs, the second (commitment, weighted by β = 0.25 as the paper writes it) the
encoder towards the codebook. Squared norms are taken as the mean over elements (the usual VQ
convention; the sum would only rescale λ_q of Eq. (2)).

App. A: the quantization step is not differentiable; a straight-through estimator [3] copies the
gradient of z_q onto z in the backward pass.

Not in the paper, but needed in practice: `VectorQuantizer.reinit_dead_codes` re-seeds codebook
entries that no input selected with encoder outputs (the caller tracks usage from
`QuantizerOutput.counts`), an optional l2-normalised (cosine) codebook, and codebook updates by
exponential moving averages instead of gradients (`ema_batch_stats` / `ema_update`, the VQ-VAE /
VQ-VAE-2 alternative to the codebook term of Eq. (3): the caller keeps the statistics, stops
optimising the codebook, and so keeps only the commitment term's gradient on E).

Numerics: distances and L_q are computed in fp32 with autocast disabled, so bf16 autocast can
neither flip an argmin nor underflow the loss. `z_q` is returned in fp32.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """Codebook of ``codebook_size`` entries of dimension ``dim`` (the F × q codebook of §3.1)."""

    codebook_size: int = 1024  # q; the paper tries 1024…65536 on Kinetics (Table 5)
    dim: int = 256  # F, channels of z = E(x)
    beta: float = 0.25  # β of the commitment term, Eq. (3) (paper value, §4 "Training details")
    normalize: bool = False  # l2-normalise z and the codes before matching (cosine); not in paper

    def __post_init__(self) -> None:
        if self.codebook_size < 1:
            raise ValueError(
                f"QuantizerConfig: codebook_size must be ≥ 1, got {self.codebook_size}"
            )
        if self.dim < 1:
            raise ValueError(f"QuantizerConfig: dim must be ≥ 1, got {self.dim}")
        if self.beta < 0:
            raise ValueError(f"QuantizerConfig: beta must be ≥ 0, got {self.beta}")


class QuantizerOutput(NamedTuple):
    """Result of Q then U on a feature map."""

    z_q: torch.Tensor  # (B, F, h, w) U(Q(z)) with straight-through gradient onto z
    tokens: torch.Tensor  # (B, h, w) long, Q(z): index of the nearest codebook entry
    loss: torch.Tensor  # () L_q of Eq. (3)
    perplexity: torch.Tensor  # () exp(entropy of the token histogram of this batch)
    counts: torch.Tensor  # (q,) long, how often each code was picked in this batch


class VectorQuantizer(nn.Module):
    """Q and U over a learned codebook (``self.codebook.weight``: (q, F))."""

    def __init__(self, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        self.codebook = nn.Embedding(config.codebook_size, config.dim)
        # Unit-variance codes: the same scale as the encoder's initial outputs, so most codes are
        # reachable from the start (a ±1/q init leaves nearly all of them dead).
        nn.init.normal_(self.codebook.weight)

    # ------------------------------------------------------------------ helpers

    def _codes(self) -> torch.Tensor:
        """(q, F) fp32 codebook as used for matching and lookup."""
        codes = self.codebook.weight.float()
        return F.normalize(codes, dim=1) if self.config.normalize else codes

    def _flatten(self, z: torch.Tensor) -> torch.Tensor:
        """(B, F, h, w) → (B·h·w, F) fp32 (normalised if configured)."""
        if z.dim() != 4 or z.shape[1] != self.config.dim:
            raise ValueError(
                f"VectorQuantizer: expected z of shape (B, {self.config.dim}, h, w), "
                f"got {tuple(z.shape)}"
            )
        flat = z.float().permute(0, 2, 3, 1).reshape(-1, self.config.dim)
        return F.normalize(flat, dim=1) if self.config.normalize else flat

    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, F) fp32 → (N,) long index of the nearest code in squared euclidean distance."""
        codes = self._codes()
        # ‖z − c‖² = ‖z‖² − 2 z·c + ‖c‖²; ‖z‖² is constant per row and does not change the argmin.
        dist = codes.pow(2).sum(1)[None, :] - 2.0 * flat @ codes.t()
        return dist.argmin(dim=1)

    # ------------------------------------------------------------------ public API

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z: (B, F, h, w) encoder output E(x) → `QuantizerOutput` (z_q, tokens, L_q, ...)."""
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = self._flatten(z)
            tokens = self._nearest(flat.detach())
            zq_flat = self._codes()[tokens]
            # Eq. (3): codebook term + β · commitment term.
            loss = F.mse_loss(zq_flat, flat.detach()) + self.config.beta * F.mse_loss(
                flat, zq_flat.detach()
            )
            # Straight-through: forward value z_q, gradient of z_q copied onto z (App. A).
            zq_flat = flat + (zq_flat - flat).detach()
            z_q = zq_flat.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
            counts = torch.bincount(tokens, minlength=self.config.codebook_size)
            probs = counts.float() / counts.sum().clamp_min(1)
            entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
        return QuantizerOutput(
            z_q=z_q,
            tokens=tokens.reshape(b, h, w),
            loss=loss,
            perplexity=entropy.exp(),
            counts=counts,
        )

    @torch.no_grad()
    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Q: z (B, F, h, w) → tokens (B, h, w) long."""
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._nearest(self._flatten(z)).reshape(b, h, w)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """U: tokens (B, h, w) long in [0, q) → features (B, F, h, w) fp32 (codebook entries)."""
        if tokens.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8):
            raise ValueError(f"VectorQuantizer.decode: tokens must be integers, got {tokens.dtype}")
        tokens = tokens.long()
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.codebook_size):
            raise ValueError(
                f"VectorQuantizer.decode: tokens must lie in [0, {self.config.codebook_size}), "
                f"got range [{int(tokens.min())}, {int(tokens.max())}]"
            )
        return self._codes()[tokens].permute(0, 3, 1, 2).contiguous()

    # ------------------------------------------------------------------ EMA codebook (not in paper)

    @torch.no_grad()
    def ema_init(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh EMA statistics for the current codebook: cluster sizes N = 1 and sums m = e.

        With N_i = 1 and m_i = e_i, ``ema_update`` leaves a code that no input selects where it
        is (up to the Laplace smoothing), instead of dividing a decayed sum by a zero count.
        Returns (cluster_size (q,), embed_sum (q, F)), fp32.
        """
        codes = self._codes()
        return torch.ones(codes.shape[0], device=codes.device), codes.clone()

    @torch.no_grad()
    def ema_batch_stats(self, z: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-code counts n_i (q,) and sums Σ_{j: token_j = i} z_j (q, F) of a batch, fp32.

        z: (B, F, h, w) encoder outputs (or (N, F)); tokens: their codes, any shape with B·h·w
        (or N) elements. Separate from ``ema_update`` so a distributed caller can all-reduce them.
        """
        flat = self._flatten(z) if z.dim() == 4 else z.float()
        idx = tokens.reshape(-1).long().to(flat.device)
        if idx.shape[0] != flat.shape[0]:
            raise ValueError(
                f"ema_batch_stats: {flat.shape[0]} vectors but {idx.shape[0]} tokens")
        q = self.config.codebook_size
        counts = torch.bincount(idx, minlength=q).float()
        sums = torch.zeros(q, flat.shape[1], device=flat.device).index_add_(0, idx, flat)
        return counts, sums

    @torch.no_grad()
    def ema_update(
        self,
        cluster_size: torch.Tensor,
        embed_sum: torch.Tensor,
        counts: torch.Tensor,
        sums: torch.Tensor,
        decay: float,
        eps: float = 1e-5,
    ) -> None:
        """Codebook as moving averages of its assigned encoder outputs (VQ-VAE App., VQ-VAE-2).

        N_i ← γ N_i + (1 − γ) n_i,  m_i ← γ m_i + (1 − γ) Σ z_j,  e_i = m_i / Ñ_i with the
        Laplace-smoothed Ñ_i = (N_i + ε) / (Σ N + q ε) · Σ N. Updates ``cluster_size`` and
        ``embed_sum`` (from ``ema_init``) in place and writes the codebook. A code with n_i = 0
        only decays: its m_i / N_i is unchanged apart from the smoothing.
        """
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_update: decay must be in [0, 1), got {decay}")
        cluster_size.mul_(decay).add_(counts.to(cluster_size), alpha=1.0 - decay)
        embed_sum.mul_(decay).add_(sums.to(embed_sum), alpha=1.0 - decay)
        total = cluster_size.sum()
        smoothed = (cluster_size + eps) / (total + self.config.codebook_size * eps) * total
        weight = self.codebook.weight
        weight.copy_((embed_sum / smoothed[:, None]).to(weight.device, weight.dtype))

    @torch.no_grad()
    def reinit_dead_codes(
        self,
        z_samples: torch.Tensor,
        counts: torch.Tensor,
        threshold: int = 0,
        generator: torch.Generator | None = None,
    ) -> int:
        """Re-seed codes used at most ``threshold`` times with randomly drawn encoder outputs.

        Args:
            z_samples: encoder outputs, (B, F, h, w) or (N, F).
            counts: (q,) usage of each code accumulated by the caller (e.g. summed
                `QuantizerOutput.counts` over recent steps).
            threshold: a code with ``counts <= threshold`` is dead.
            generator: optional RNG for the draw (reproducibility).

        Returns:
            How many codes were re-initialised. The caller should reset the optimiser state of
            the codebook rows if it cares about stale Adam moments (they decay quickly anyway).
        """
        if counts.shape != (self.config.codebook_size,):
            raise ValueError(
                f"reinit_dead_codes: counts must have shape ({self.config.codebook_size},), "
                f"got {tuple(counts.shape)}"
            )
        flat = self._flatten(z_samples) if z_samples.dim() == 4 else z_samples.float()
        if flat.dim() != 2 or flat.shape[1] != self.config.dim:
            raise ValueError(
                f"reinit_dead_codes: z_samples must be (B, {self.config.dim}, h, w) or "
                f"(N, {self.config.dim}), got {tuple(z_samples.shape)}"
            )
        dead = torch.nonzero(counts.to(flat.device) <= threshold).flatten()
        if dead.numel() == 0 or flat.shape[0] == 0:
            return 0
        pick = torch.randint(
            0, flat.shape[0], (dead.numel(),), generator=generator, device="cpu"
        ).to(flat.device)
        weight = self.codebook.weight
        weight[dead.to(weight.device)] = flat[pick].to(weight.device, weight.dtype)
        return int(dead.numel())
