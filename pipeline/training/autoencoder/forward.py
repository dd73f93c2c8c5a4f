"""The autoencoder's forward passes shared by training, evaluation and the benches (§3.2,
App. A): the recursive decoding of a clip (App. A "we mimic this iterative process at train
time"), the DDP entry point ``AutoencoderForward`` with its image / video inputs, and Table 1's
"Reconstruction" protocol (``reconstruct_clips``, ``summarize``). ``pipeline.training.autoencoder.task``
re-exports every name, so ``from pipeline.training.autoencoder.task import ...`` keeps working.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ccvs_models.autoencoder import CCVSAutoencoder, ContextBuffer, ReconstructionOutput
from ccvs_models.quantizer import QuantizerOutput
from pipeline.metrics.image import psnr, ssim
from pipeline.metrics.objects import clip_object_scores

PSNR_CAP_DB = 100.0  # identical frames would give +inf; capped so averages stay finite

# --------------------------------------------------------------------------- frames


def to_model_range(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (..., H, W, 3) → float (..., 3, H, W) in [−1, 1]."""
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [−1, 1] → uint8 numpy (..., H, W, 3)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().movedim(-3, -1).cpu().numpy()


# --------------------------------------------------------------------------- recursive decoding


def decode_recursively(
    model: CCVSAutoencoder, z_q: torch.Tensor, first: torch.Tensor, num_context: int,
    warmup: int = 0,
) -> torch.Tensor:
    """App. A recursive decoding: x̂_1 … x̂_T' from latents and a real first frame.

    z_q: (B, T', F, h, w) quantized latents of frames 1 … T'; first: (B, 3, H, W) the real x_0.
    Frame t is D(z_q[t]) with F over E of the frames ``ContextBuffer`` picks (the model's rule:
    the last ``num_context`` frames, or with ``context_anchor`` a: x_0 kept plus the latest
    ones) — x_0, then the decoded frames re-encoded. Only the immediately preceding frame's
    features (and the anchor's) keep their graph; older ones are detached (App. A). The first
    ``warmup`` frames are decoded without any graph (``video_warmup``: they only make the later
    frames' contexts deeper recursions). Without F (``model.has_flow`` false or num_context = 0)
    frames are decoded independently. Returns x̂: (B, T', 3, H, W).
    """
    use_flow = model.has_flow and num_context > 0
    buffer = (ContextBuffer(num_context, min(model.config.context_anchor, num_context),
                            detach_older=True) if use_flow else None)
    if buffer is not None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and warmup == 0):
            buffer.push(model.encode(first).features)
    frames = []
    for t in range(z_q.shape[1]):
        context = buffer.context() if buffer is not None else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and t >= warmup):
            x_hat = model.decode(z_q[:, t], context).x_hat
        frames.append(x_hat)
        if buffer is not None and t + 1 < z_q.shape[1]:
            with torch.set_grad_enabled(torch.is_grad_enabled() and t + 1 >= warmup):
                buffer.push(model.encode(x_hat).features if buffer.reads(t + 1) else None)
    return torch.stack(frames, 1)


class ImageOutput(NamedTuple):
    recon: ReconstructionOutput  # D(U(Q(E(x))), E(x_c)) of ``CCVSAutoencoder.reconstruct``
    x_free: torch.Tensor | None  # (B, 3, H, W) D(z_q) without context (``context_free``), or None


class VideoOutput(NamedTuple):
    frames: torch.Tensor  # (B, T', 3, H, W) the graded x̂_{W+1} … x̂_{W+T'} (W: warm-up frames)
    first: torch.Tensor  # (B, 3, H, W) the frame before them: x_0, or x̂_W detached after a warm-up
    quant: QuantizerOutput  # Q over the graded frames W+1 … T−1 (L_q, perplexity, ...)
    z: torch.Tensor  # (B·T', F, h, w) E(x_t) of the graded frames, before quantization


class AutoencoderForward(nn.Module):
    """E, Q, F, D behind one ``forward`` (the DDP entry point of ``fit``); holds no other weights.

    forward(ImageInputs) → ``ImageOutput``: ``CCVSAutoencoder.reconstruct`` and, with
    ``context_free`` and a context, also D(z_q) decoded from the same z_q without any context;
    forward(VideoInputs) → ``VideoOutput`` of the recursive video step.
    """

    def __init__(self, model: CCVSAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: ImageInputs | VideoInputs) -> ImageOutput | VideoOutput:
        if isinstance(inputs, VideoInputs):
            clip = inputs.clip  # (B, 1 + W + T', 3, H, W): x_0, W warm-up frames, T' graded
            b, w = clip.shape[0], inputs.warmup

            def latents(frames: torch.Tensor) -> tuple[torch.Tensor, QuantizerOutput]:
                z = self.model.encode(frames.flatten(0, 1)).z
                quant = self.model.quantize(z)
                return z, quant

            c = self.model.config.context_frames if inputs.num_context is None else inputs.num_context
            if not (self.model.has_flow and c > 0):  # frames independent: no warm-up to decode
                clip, w = clip[:, w:], 0
            z, quant = latents(clip[:, 1 + w :])
            z_q = quant.z_q.view(b, -1, *quant.z_q.shape[1:])
            if w:  # the warm-up frames' latents: no graph, no L_q
                with torch.no_grad():
                    warm = latents(clip[:, 1 : 1 + w])[1].z_q
                z_q = torch.cat([warm.view(b, w, *warm.shape[1:]), z_q], 1)
            frames = decode_recursively(self.model, z_q, clip[:, 0], c, warmup=w)
            first = clip[:, 0] if w == 0 else frames[:, w - 1].detach()
            return VideoOutput(frames=frames[:, w:], first=first, quant=quant, z=z)
        recon = self.model.reconstruct(inputs.frames, inputs.context)
        x_free = None
        if inputs.context_free and inputs.context is not None and self.model.has_flow:
            x_free = self.model.decode(recon.quant.z_q, None).x_hat
        return ImageOutput(recon=recon, x_free=x_free)


class ImageInputs(NamedTuple):
    frames: torch.Tensor  # (B, 3, H, W) x in [−1, 1]
    context: torch.Tensor | None  # (B, c, 3, H, W) x_c, or None (no F)
    context_free: bool = False  # also decode z_q without context (the λ_free term)


class VideoInputs(NamedTuple):
    clip: torch.Tensor  # (B, T, 3, H, W) in [−1, 1]
    num_context: int | None = None  # context frames of the recursion (None: the model's c)
    warmup: int = 0  # frames 1 … warmup decoded without graph first (``video_warmup``)


# --------------------------------------------------------------------------- Table 1 protocol


class ReconstructionEval(NamedTuple):
    psnr: np.ndarray  # (N, T − 1) dB per decoded frame (frames 1 … T−1)
    ssim: np.ndarray  # (N, T − 1)
    recon: np.ndarray  # uint8 (N, T, H, W, 3): x_0 (real) then x̂_1 … x̂_{T−1}
    tokens: np.ndarray  # (N, T, h, w) Q(E(x_t))
    # inside the moving objects (``pipeline.metrics.objects``): "psnr_objects", "ssim_objects",
    # "edge_ratio_objects" → (N, T − 1); None when the clips have no layouts
    objects: dict[str, np.ndarray] | None = None


@torch.no_grad()
def reconstruct_clips(
    model: CCVSAutoencoder, clips: np.ndarray, device: torch.device | str, batch_size: int = 4,
    num_context: int | None = None, layouts: np.ndarray | None = None,
) -> ReconstructionEval:
    """Table 1 "Reconstruction" on uint8 clips (N, T, H, W, 3): true tokens, reconstructed context.

    Each frame t ≥ 1 is D(U(Q(E(x_t)))) with F over the previously *reconstructed* frames (the
    real x_0 as initial context), up to ``num_context`` (default: the model's c) of them, by the
    model's context rule (``ContextBuffer``). With ``layouts`` (N, T, H, W) the object-region
    scores are computed too (``ReconstructionEval.objects``).
    """
    was_training = model.training
    model.eval()
    c = model.config.context_frames if num_context is None else num_context
    ps, ss, recons, toks = [], [], [], []
    try:
        for i in range(0, len(clips), batch_size):
            x = to_model_range(torch.from_numpy(np.ascontiguousarray(clips[i : i + batch_size])).to(device))
            b, t = x.shape[:2]
            tokens = model.tokenize(x.flatten(0, 1)).view(b, t, *_token_shape(model, x))
            z_q = model.quantizer.decode(tokens[:, 1:].flatten(0, 1))
            z_q = z_q.view(b, t - 1, *z_q.shape[1:])
            x_hat = decode_recursively(model, z_q, x[:, 0], c).float()
            real01 = (x[:, 1:].flatten(0, 1) + 1) / 2
            fake01 = (x_hat.flatten(0, 1).clamp(-1, 1) + 1) / 2
            ps.append(psnr(real01, fake01, max_db=PSNR_CAP_DB).view(b, t - 1).cpu().numpy())
            ss.append(ssim(real01, fake01).view(b, t - 1).cpu().numpy())
            recons.append(np.concatenate([to_uint8(x[:, :1]), to_uint8(x_hat)], axis=1))
            toks.append(tokens.cpu().numpy())
    finally:
        model.train(was_training)
    recon = np.concatenate(recons)
    objects = None if layouts is None else clip_object_scores(clips, recon, layouts)
    return ReconstructionEval(np.concatenate(ps), np.concatenate(ss), recon, np.concatenate(toks),
                              objects)


def _token_shape(model: CCVSAutoencoder, x: torch.Tensor) -> tuple[int, int]:
    d = model.config.downsampling
    return x.shape[-2] // d, x.shape[-1] // d


REPORTED_FRAMES = (1, 8, 15)  # frames of the 16-frame recursion reported one by one (issue 17)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summarize(result: ReconstructionEval, codebook_size: int) -> dict[str, float]:
    """val/psnr, val/ssim (means over decoded frames), PSNR at the first decoded frame, their
    last-frame values, both at t = 1, 8, 15 (``val/psnr_t8``, ...), codebook stats; with layouts
    the object-region means and per-frame values (``val/psnr_objects``, ``val/psnr_objects_t8``,
    ``val/ssim_objects``, ``val/edge_ratio_objects``, ...)."""
    out = _summary(result, codebook_size)
    frames = [t for t in REPORTED_FRAMES if t <= result.psnr.shape[1]]
    for t in frames:
        out[f"val/psnr_t{t}"] = float(result.psnr[:, t - 1].mean())
        out[f"val/ssim_t{t}"] = float(result.ssim[:, t - 1].mean())
    for key, values in (result.objects or {}).items():
        out[f"val/{key}"] = _nanmean(values)
        for t in frames:
            out[f"val/{key}_t{t}"] = _nanmean(values[:, t - 1])
    return out


def copy_first_scores(clips: np.ndarray, layouts: np.ndarray | None) -> dict[str, float]:
    """The no-model reference: the real first frame copied into every frame (issue 17), scored
    like ``summarize`` → ``baseline/copy_first/psnr`` … (object keys only with layouts)."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).movedim(-1, -3).double() / 255.0
    real, fake = x[:, 1:].flatten(0, 1), x[:, :1].expand_as(x[:, 1:]).flatten(0, 1)
    n, t = x.shape[0], x.shape[1] - 1
    ps = psnr(real, fake, max_db=PSNR_CAP_DB).view(n, t).numpy()
    out = {"baseline/copy_first/psnr": float(ps.mean()),
           "baseline/copy_first/ssim": float(ssim(real, fake).mean())}
    if layouts is not None:
        copied = np.repeat(clips[:, :1], clips.shape[1], axis=1)
        for key, values in clip_object_scores(clips, copied, layouts).items():
            out[f"baseline/copy_first/{key}"] = _nanmean(values)
            for f in [f for f in REPORTED_FRAMES if f <= t]:
                out[f"baseline/copy_first/{key}_t{f}"] = _nanmean(values[:, f - 1])
    return out


def _summary(result: ReconstructionEval, codebook_size: int) -> dict[str, float]:
    counts = np.bincount(result.tokens.reshape(-1), minlength=codebook_size).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return {
        "val/psnr": float(result.psnr.mean()),
        "val/ssim": float(result.ssim.mean()),
        "val/psnr_first": float(result.psnr[:, 0].mean()),  # frame 1: the real x_0 as context
        "val/psnr_last": float(result.psnr[:, -1].mean()),
        "val/ssim_last": float(result.ssim[:, -1].mean()),
        "codebook/perplexity": float(np.exp(entropy)),
        "codebook/usage": float((counts > 0).mean()),
    }


def side_by_side(real: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """GIF frames: one row per clip, real | reconstructed; uint8 (T, N·H, 2·W + 2, 3)."""
    n, t, h, w, _ = real.shape
    gap = np.full((n, t, h, 2, 3), 255, np.uint8)
    rows = np.concatenate([real, gap, recon], axis=3)  # (N, T, H, 2W + 2, 3)
    return rows.transpose(1, 0, 2, 3, 4).reshape(t, n * h, 2 * w + 2, 3)
