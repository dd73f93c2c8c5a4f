"""The context-aware autoencoder: encoder E, quantizer Q/U, decoder D linked by the flow module F
(§3.1, §3.2 "Architecture", App. A Fig. A1-(1), App. D).

E maps a frame x (B, 3, H, W) in [−1, 1] to z (B, F, h, w) with h = H / 2^K through K residual
downsampling blocks (App. A), and keeps its intermediate features e^k. Q/U (``quantizer.py``)
turn z into tokens and back into z_q. D maps z_q back to x̂ through K residual upsampling blocks;
at the levels listed in ``flow_levels`` the flow module F (``flow.py``) warps the encoded features
e_i^k of the c context frames onto the decoded d_s^k and fuses them by Eq. (9) + Eq. (1),
estimating flow and mask coarse to fine (the flow of a level starts from the coarser one,
upsampled).

Levels (coarse → fine, the order of D and of every per-level list here): level k ∈ [0, K] has
resolution h·2^k × w·2^k and C_k = base_channels · channel_mult[K − k] channels; level 0 is the
latent resolution, level K the image resolution. E's features ``features[k]`` and D's ``d^k`` have
the same shape, which is what lets F correlate and fuse them. The paper's levels r_1 … r_K are
levels 1 … K here (F after each decoding block), the default for ``flow_levels``.

With ``context_frames = 0`` the model has no F at all: a plain VQ autoencoder (Table 1's rows
without F), and any context passed to `decode` is ignored.

Output range: D ends in tanh, so x̂ ∈ (−1, 1) with a gradient everywhere (a clamp would cut it for
saturated pixels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.blocks import ResBlock
from ccvs_models.flow import FlowLevel, upsample_flow, upsample_mask
from ccvs_models.quantizer import QuantizerConfig, QuantizerOutput, VectorQuantizer


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """E, Q, D and F sizes. Defaults: the demo scale (64×64 frames → 8×8 tokens, trains on CPU).

    The paper uses 64 tokens per frame (8×8, §4.1 and Fig. 3), i.e. K = 5 at 256×256 and K = 3 at
    64×64, and codebooks of 1024…65536 entries (Table 5); it does not give channel widths.
    """

    in_channels: int = 3  # image channels (RGB)
    base_channels: int = 32  # C at the image resolution; level k has base · channel_mult[K − k]
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)  # fine → coarse, one per resolution, K + 1 items
    num_levels: int = 3  # K: E/D each have K residual blocks, downsampling factor 2^K (App. A)
    latent_dim: int = 64  # F, channels of z = E(x) and of the codebook entries (§3.1)
    codebook_size: int = 512  # q (§3.1); paper: 1024…65536 (Table 5)
    beta: float = 0.25  # β, commitment weight of L_q, Eq. (3) (paper value)
    normalize_codes: bool = False  # l2-normalised (cosine) codebook; not in the paper
    context_frames: int = 1  # c, context frames fused by F (App. D); 0 = no F (Table 1 baseline)
    context_anchor: int = 0  # ours: the first a ≤ c frames of a video (the real given ones) stay
    # in F's context for the whole video, the other c − a slots hold the latest frames (App. D's
    # multi-frame context with a fixed part: static content is copied from a real frame forever,
    # without drift). 0 = the paper's sliding window of the last c frames. See `context_indices`.
    flow_levels: tuple[int, ...] | None = None  # decoder levels with F (0 = latent res, K = image
    # res); None = every level 1..K, as in the paper (one F step after each decoding block)
    flow_radius: tuple[int, ...] = (3, 2, 1)  # r per F level, coarse → fine (the last value
    # repeats; an int = the same r everywhere): match looks at (2r+1)² displacements (App. A's
    # "N neighbours"); LiteFlowNet-like shrinking radii, as finer levels only correct the
    # upsampled coarser flow. The paper gives no value.
    flow_hidden: tuple[int, ...] = (32, 32, 16)  # channels of F's match / refine conv stacks per
    # F level, coarse → fine (the last value repeats; an int = the same everywhere)
    flow_corr_dim: int = 16  # channels of the 1×1 projection F correlates (0 = raw features)
    flow_mask_init: float = -2.0  # prior mask logit m at the coarsest F level (flow prior: 0);
    # σ(−2) ≈ 0.12, so Eq. (1) starts by mostly copying the (unwarped) context, which is what
    # the L_c target asks on visible pixels. Not in the paper (0 would start at σ = 0.5).
    negative_slope: float = 0.2  # LeakyReLU slope (App. A uses LeakyReLU; slope not given)

    def __post_init__(self) -> None:
        # A config rebuilt from asdict() / YAML carries lists: store tuples (hashable, comparable).
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        for name in ("flow_radius", "flow_hidden"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, int) else tuple(value))
        if self.flow_levels is not None:
            object.__setattr__(self, "flow_levels", tuple(self.flow_levels))
        if self.num_levels < 1:
            raise ValueError(f"AutoencoderConfig: num_levels must be ≥ 1, got {self.num_levels}")
        if len(self.channel_mult) != self.num_levels + 1:
            raise ValueError(
                f"AutoencoderConfig: channel_mult needs num_levels + 1 = {self.num_levels + 1} "
                f"items (one per resolution, fine → coarse), got {len(self.channel_mult)}"
            )
        if self.context_frames < 0:
            raise ValueError(
                f"AutoencoderConfig: context_frames must be ≥ 0, got {self.context_frames}"
            )
        # with c = 0 there is no F and the anchor is unused: Table 1's "F off" row is then one
        # key (context_frames: 0), whatever the anchor of the recipe it ablates
        c, a = self.context_frames, self.context_anchor
        if a < 0 or (c > 0 and a > c):
            raise ValueError(
                f"AutoencoderConfig: context_anchor must be in [0, context_frames="
                f"{self.context_frames}], got {self.context_anchor}"
            )
        bad = [k for k in self.flow_levels or () if not 0 <= k <= self.num_levels]
        if bad:
            raise ValueError(
                f"AutoencoderConfig: flow_levels {bad} outside [0, num_levels={self.num_levels}]"
            )
        if not self.flow_hidden or min(self.flow_hidden) < 1:
            raise ValueError(
                f"AutoencoderConfig: flow_hidden needs ≥ 1 values, each ≥ 1, got {self.flow_hidden}"
            )
        if not self.flow_radius or min(self.flow_radius) < 0:
            raise ValueError(
                f"AutoencoderConfig: flow_radius needs ≥ 1 values, each ≥ 0, got {self.flow_radius}"
            )

    @property
    def downsampling(self) -> int:
        """2^K: H / h."""
        return 2**self.num_levels

    @property
    def active_flow_levels(self) -> tuple[int, ...]:
        """Sorted decoder levels that run F (empty when context_frames = 0)."""
        if self.context_frames == 0:
            return ()
        levels = range(1, self.num_levels + 1) if self.flow_levels is None else self.flow_levels
        return tuple(sorted(set(levels)))

    def context_problem(self, context_frames: int) -> str | None:
        """Why a model of this config cannot decode with ``context_frames`` c' (None: it can).

        c' = 0 always works (tokens alone). A model without F cannot use any context; a model
        trained with an anchor a needs c' > a, so one slot still holds the latest frame (with
        x_0 alone F copies stale content where things moved).
        """
        c = context_frames
        if c < 0:
            return f"context_frames must be ≥ 0, got {c}"
        if c > 0 and self.context_frames == 0:
            return (f"this autoencoder has no F (trained with autoencoder.model.context_frames: "
                    f"0), it cannot decode with {c} context frames: ask for null or 0 context "
                    f"frames, or retrain it with context_frames ≥ 1")
        if 0 < c <= self.context_anchor:
            return (f"this autoencoder keeps its first {self.context_anchor} frame(s) in the "
                    f"context (context_anchor) and needs c > {self.context_anchor} to also read "
                    f"the latest frame; got {c}: ask for null (its own c = "
                    f"{self.context_frames}) or a c in {self.context_anchor + 1}…16")
        return None

    def _per_flow_level(self, values: tuple[int, ...], level: int) -> int:
        i = self.active_flow_levels.index(level)
        return values[min(i, len(values) - 1)]

    def level_radius(self, level: int) -> int:
        """r of the correlation at decoder level ``level`` (one of active_flow_levels)."""
        return self._per_flow_level(self.flow_radius, level)

    def level_hidden(self, level: int) -> int:
        """Hidden channels of F's convs at decoder level ``level`` (one of active_flow_levels)."""
        return self._per_flow_level(self.flow_hidden, level)

    def level_channels(self, level: int) -> int:
        """C_k of level k (0 = coarsest)."""
        return self.base_channels * self.channel_mult[self.num_levels - level]

    def quantizer_config(self) -> QuantizerConfig:
        return QuantizerConfig(
            codebook_size=self.codebook_size,
            dim=self.latent_dim,
            beta=self.beta,
            normalize=self.normalize_codes,
        )


# --------------------------------------------------------------------------- outputs


class EncoderOutput(NamedTuple):
    z: torch.Tensor  # (B, F, h, w) z = E(x)
    features: list[torch.Tensor]  # e^k for k = 0..K (coarse → fine), (B, C_k, h·2^k, w·2^k)


class DecoderOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, in_channels, H, W) in (−1, 1)
    levels: tuple[int, ...]  # decoder levels where F ran (index into the lists below)
    flows: list[torch.Tensor]  # per F level: (B, c, 2, h_k, w_k) \hat f_i^k (x, y), level-k pixels
    masks: list[torch.Tensor]  # per F level: (B, c, 1, h_k, w_k) mask logits \hat m_i^k
    fused_masks: list[torch.Tensor]  # per F level: (B, 1, h_k, w_k) m_a^k of Eq. (9)
    confidences: list[torch.Tensor]  # per F level: (B, c, 1, h_k, w_k) s_i^k of Eq. (9)


class ReconstructionOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, 3, H, W) D(U(Q(E(x))), context)
    quant: QuantizerOutput  # z_q, tokens, L_q, perplexity, counts
    z: torch.Tensor  # (B, F, h, w) E(x), before quantization
    decoder: DecoderOutput  # flows / masks per F level (for L_c, Eq. (7))


# --------------------------------------------------------------------------- E and D


class Encoder(nn.Module):
    """E: a 3×3 stem at the image resolution, then K residual downsampling blocks (App. A)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        cfg = config
        self.config = cfg
        k = cfg.num_levels
        self.stem = nn.Conv2d(cfg.in_channels, cfg.level_channels(k), 3, padding=1)
        # blocks[j] goes from level K − j to level K − j − 1 (halving the resolution).
        self.blocks = nn.ModuleList(
            ResBlock(
                cfg.level_channels(k - j), cfg.level_channels(k - j - 1), "down", cfg.negative_slope
            )
            for j in range(k)
        )
        self.to_latent = nn.Conv2d(cfg.level_channels(0), cfg.latent_dim, 1)

    def forward(self, x: torch.Tensor) -> EncoderOutput:
        """x: (B, 3, H, W) in [−1, 1], H and W divisible by 2^K → z (B, F, H/2^K, W/2^K), e^k."""
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"Encoder: expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-1] % cfg.downsampling or x.shape[-2] % cfg.downsampling:
            raise ValueError(
                f"Encoder: frame size {tuple(x.shape[-2:])} is not divisible by 2^K = "
                f"{cfg.downsampling}"
            )
        h = self.stem(x)
        feats = [h]
        for block in self.blocks:
            h = block(h)
            feats.append(h)
        z = self.to_latent(F.leaky_relu(h, cfg.negative_slope))
        return EncoderOutput(z=z, features=feats[::-1])


def _stack_context(
    context: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]], num_levels: int
) -> list[torch.Tensor]:
    """Context as per-level (B, c, C_k, h_k, w_k) tensors, from either accepted form."""
    if len(context) == 0:
        return []
    first = context[0]
    if isinstance(first, torch.Tensor):  # already per level, stacked over frames
        levels = list(context)  # type: ignore[arg-type]
        if len(levels) != num_levels + 1 or any(t.dim() != 5 for t in levels):
            raise ValueError(
                f"Decoder: per-level context must be {num_levels + 1} tensors (B, c, C, h, w), "
                f"got {[tuple(t.shape) for t in levels]}"
            )
        return levels
    frames = [list(f) for f in context]  # type: ignore[arg-type]
    if any(len(f) != num_levels + 1 for f in frames):
        raise ValueError(
            f"Decoder: each context frame needs {num_levels + 1} feature maps (Encoder.features), "
            f"got {[len(f) for f in frames]}"
        )
    return [torch.stack([f[k] for f in frames], dim=1) for k in range(num_levels + 1)]


class Decoder(nn.Module):
    """D: conv to level 0, then K residual upsampling blocks; F after chosen levels (Fig. A1)."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        cfg = config
        self.config = cfg
        k = cfg.num_levels
        self.from_latent = nn.Conv2d(cfg.latent_dim, cfg.level_channels(0), 3, padding=1)
        # blocks[j] goes from level j to level j + 1 (doubling the resolution).
        self.blocks = nn.ModuleList(
            ResBlock(cfg.level_channels(j), cfg.level_channels(j + 1), "up", cfg.negative_slope)
            for j in range(k)
        )
        self.to_image = nn.Conv2d(cfg.level_channels(k), cfg.in_channels, 3, padding=1)
        # No F parameters at all when context_frames = 0 (active_flow_levels is then empty).
        self.flow = nn.ModuleDict(
            {
                str(level): FlowLevel(
                    cfg.level_channels(level),
                    radius=cfg.level_radius(level),
                    hidden=cfg.level_hidden(level),
                    corr_dim=cfg.flow_corr_dim,
                    negative_slope=cfg.negative_slope,
                    mask_init=cfg.flow_mask_init,
                )
                for level in cfg.active_flow_levels
            }
        )

    @property
    def flow_levels(self) -> tuple[int, ...]:
        return self.config.active_flow_levels

    def forward(
        self,
        z_q: torch.Tensor,
        context: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> DecoderOutput:
        """D(z_q) with temporal skip connections from the context through F.

        Args:
            z_q: (B, F, h, w) quantized features.
            context: encoded context frames x_i, i = 1..c, either as a list over frames of
                `EncoderOutput.features` lists, or as a list over levels (coarse → fine) of
                (B, c, C_k, h_k, w_k) tensors (`CCVSAutoencoder.encode_context`). None or empty:
                plain decoding. Ignored when the model has no F (context_frames = 0). Any c ≥ 1
                works (Eq. (9) has no parameters), not only the configured one.
        """
        cfg = self.config
        ctx = _stack_context(context, cfg.num_levels) if context is not None else []
        use_flow = bool(self.flow) and len(ctx) > 0
        levels = self.flow_levels if use_flow else ()
        flows: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        fused: list[torch.Tensor] = []
        confs: list[torch.Tensor] = []
        flow = mask = None

        d = self.from_latent(z_q)
        for level in range(cfg.num_levels + 1):
            if level > 0:
                d = self.blocks[level - 1](d)
            if level not in levels:
                continue
            e = ctx[level]
            if e.shape[0] != d.shape[0] or e.shape[2:] != d.shape[1:]:
                raise ValueError(
                    f"Decoder: context at level {level} has shape {tuple(e.shape)}, expected "
                    f"(B={d.shape[0]}, c, {d.shape[1]}, {d.shape[2]}, {d.shape[3]})"
                )
            b, c = e.shape[:2]
            size = (d.shape[-2], d.shape[-1])
            if flow is not None:  # coarse-to-fine: start from the previous F level, upsampled
                flow = upsample_flow(flow.flatten(0, 1), size).view(b, c, 2, *size)
                mask = upsample_mask(mask.flatten(0, 1), size).view(b, c, 1, *size)
            out = self.flow[str(level)](d, e, flow, mask)
            d, flow, mask = out.d, out.flow, out.mask
            flows.append(out.flow)
            masks.append(out.mask)
            fused.append(out.fused_mask)
            confs.append(out.confidence)

        x_hat = torch.tanh(self.to_image(F.leaky_relu(d, cfg.negative_slope)))
        return DecoderOutput(
            x_hat=x_hat, levels=tuple(levels), flows=flows, masks=masks,
            fused_masks=fused, confidences=confs,
        )


# --------------------------------------------------------------------------- the context rule


def context_indices(t: int, context_frames: int, anchor: int = 0) -> list[int]:
    """Indices of the earlier frames F reads when decoding frame t (App. D), oldest first.

    The paper's rule (anchor = 0): the last c frames, t − c … t − 1. With an anchor a (ours):
    frames 0 … a − 1 (those that exist) stay for the whole video and the c − a other slots hold
    the latest frames, e.g. c = 2, a = 1: [0] at t = 1, then [0, t − 1]. Never a frame twice.
    """
    if t < 0 or context_frames < 0 or not 0 <= anchor <= context_frames:
        raise ValueError(f"context_indices: need t ≥ 0 and 0 ≤ anchor ≤ c, got t={t}, "
                         f"c={context_frames}, anchor={anchor}")
    fixed = list(range(min(anchor, t)))
    recent = range(max(len(fixed), t - (context_frames - anchor)), t)
    return fixed + list(recent)


class ContextBuffer:
    """E's features of the frames a recursive decoder may still read (the S of Fig. 1, App. D).

    The one context rule every decoder shares — the training video steps, the Table 1
    "Reconstruction" protocol, evaluation and synthesis: `push` E(x_t).features of each frame
    (given or decoded) in order; `context` gives the per-level tensors for the next frame by
    `context_indices` (c = ``context_frames``, ``anchor`` fixed first frames). Frames the rule
    will never read again are dropped. With ``detach_older`` (training, App. A: "we only keep the
    gradients for the context features from the immediate preceding frame") a pushed frame's
    predecessor loses its graph unless it is an anchor.
    """

    def __init__(self, context_frames: int, anchor: int = 0, detach_older: bool = False) -> None:
        context_indices(0, context_frames, anchor)  # validates c and anchor
        self.context_frames = context_frames
        self.anchor = anchor
        self.detach_older = detach_older
        self.frames: dict[int, list[torch.Tensor]] = {}
        self.count = 0  # frames pushed so far: the next frame to decode is t = count

    def push(self, features: Sequence[torch.Tensor] | None) -> None:
        """Add E's features (coarse → fine, (B, C_k, h_k, w_k)) of frame t = ``count``; None for
        a frame no later context reads (``reads``, or a given frame older than the window)."""
        t = self.count
        if self.detach_older and t - 1 in self.frames and t - 1 >= self.anchor:
            self.frames[t - 1] = [f.detach() for f in self.frames[t - 1]]
        if features is not None and self.reads(t):
            self.frames[t] = list(features)
        self.count += 1
        keep = set(context_indices(self.count, self.context_frames, self.anchor))
        for i in [i for i in self.frames if i not in keep]:
            del self.frames[i]

    def reads(self, t: int) -> bool:
        """Whether frame t will ever be in a context (if not, a decoder need not encode it)."""
        return t < self.anchor or self.context_frames > self.anchor

    def context(self) -> list[list[torch.Tensor]] | None:
        """The context of frame t = ``count``: per frame (oldest first) E's feature list, the
        form `Decoder.forward` accepts (None: nothing to read)."""
        idx = context_indices(self.count, self.context_frames, self.anchor)
        if not idx:
            return None
        missing = [i for i in idx if i not in self.frames]
        if missing:
            raise ValueError(f"ContextBuffer: frames {missing} are in the context of frame "
                             f"{self.count} but were pushed without features")
        return [self.frames[i] for i in idx]


# --------------------------------------------------------------------------- E, Q, D, F together


class CCVSAutoencoder(nn.Module):
    """E, Q/U, D and F composed; separate methods instead of a mode switch."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(config.quantizer_config())
        self.decoder = Decoder(config)

    @property
    def has_flow(self) -> bool:
        """True when D uses context through F (context_frames > 0)."""
        return len(self.decoder.flow) > 0

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """E: x (B, 3, H, W) in [−1, 1] → z (B, F, h, w) and features e^k (coarse → fine)."""
        return self.encoder(x)

    def encode_context(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """E on c context frames (B, c, 3, H, W) in one batch → per level (B, c, C_k, h_k, w_k)."""
        if frames.dim() != 5:
            raise ValueError(
                f"encode_context: expected frames (B, c, 3, H, W), got {tuple(frames.shape)}"
            )
        b, c = frames.shape[:2]
        feats = self.encoder(frames.flatten(0, 1)).features
        return [f.view(b, c, *f.shape[1:]) for f in feats]

    def quantize(self, z: torch.Tensor) -> QuantizerOutput:
        """Q then U with straight-through gradient: z (B, F, h, w) → z_q, tokens, L_q, ..."""
        return self.quantizer(z)

    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """Q(E(x)): frames (B, 3, H, W) → tokens (B, h, w) long."""
        return self.quantizer.encode(self.encoder(x).z)

    def decode(
        self,
        z_q: torch.Tensor,
        context_features: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> DecoderOutput:
        """D(z_q) with F over ``context_features`` (see `Decoder.forward`)."""
        return self.decoder(z_q, context_features)

    def decode_tokens(
        self,
        tokens: torch.Tensor,
        context_features: Sequence[torch.Tensor] | Sequence[Sequence[torch.Tensor]] | None = None,
    ) -> DecoderOutput:
        """D(U(tokens)): tokens (B, h, w) long → frames, with F over ``context_features``."""
        return self.decoder(self.quantizer.decode(tokens), context_features)

    def reconstruct(
        self, x: torch.Tensor, context_frames: torch.Tensor | None = None
    ) -> ReconstructionOutput:
        """x̂ = D(U(Q(E(x))), E(x_c)): x (B, 3, H, W), context_frames (B, c, 3, H, W) or None.

        Gradients reach E both through the straight-through quantizer and, via F's warping and
        fusion, through the context frames' features.
        """
        enc = self.encoder(x)
        quant = self.quantizer(enc.z)
        context = None
        if context_frames is not None and self.has_flow and context_frames.shape[1] > 0:
            context = self.encode_context(context_frames)
        dec = self.decoder(quant.z_q, context)
        return ReconstructionOutput(x_hat=dec.x_hat, quant=quant, z=enc.z, decoder=dec)
