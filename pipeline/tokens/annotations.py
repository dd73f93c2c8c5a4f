"""Data → tokens: frames, audio, layouts and trajectories in the vocabularies T reads (§3.1, §3.3,
App. A "Sound autoencoder", App. E).

Paper §3.3: a video is h·w frame tokens per frame, Q(E(x_t)) with the frozen E and Q of the
autoencoder (§3.1); its annotations become tokens too — the frame-level state (x, y) in B bins per
coordinate, audio tokens from the sound autoencoder (App. A: an STFT patch per frame → its VQ
codes), layout tokens from the layout autoencoder (App. E: a one-hot class map per frame → its VQ
codes). The ``tokenize`` stage applies these to every clip; ``pipeline.synthesis.models`` applies the
same functions to a user's files, so the sampler sees exactly the tokens T was trained on.

One public function per conversion (shapes in each docstring):

- :func:`load_upstream` → :class:`Upstream`: E/Q, the sound VQ (+ its STFT feature config) and the
  layout VQ from their model files (frozen, eval mode; an absent or "unavailable" VQ is ``None``
  with the reason in ``absent``);
- :func:`frame_tokens`: uint8 frames (T, H, W, 3) → (T, h, w) codes Q(E(x)), x in [−1, 1];
- :func:`vq_tokens`: VQ inputs (T, C, H, W) (or class maps with ``one_hot``) → (T, h·w) codes;
- :func:`sound_patches` / :func:`sound_codes`: mono audio → (T, 1, F, W) patches → (T, l_a) codes;
- :func:`layout_codes`: (T, H, W) class maps → (T, l_l) codes;
- :func:`trajectory_state`: (T', 2) pixel positions (NaN = unknown) → (T, 2) state bins
  (``pipeline.tokens.shards.StateBins``; the null id where unknown).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.vq_autoencoder import VQAutoencoder, VQAutoencoderConfig
from pipeline.data.audio_features import AudioFeatureConfig, frame_patches
from pipeline.training.checkpoint import CheckpointError, LoadedModel, load_model
from pipeline.tokens.shards import StateBins
from pipeline.errors import UserError

KINDS = ("audio", "layout")  # the optional upstream models, by annotation kind


class UpstreamError(UserError, RuntimeError):
    """A model file that is missing or does not rebuild its model; one line naming the file."""


def config_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A saved config (lists for sequences) → keyword arguments of its dataclass (tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the file's SHA-1 (recorded in vocab.json ``sources``)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- upstream models


@dataclasses.dataclass
class Upstream:
    """The frozen models and tables the tokenizer applies (None / reason where absent)."""

    autoencoder: CCVSAutoencoder
    frame_vocab: int  # q, the frame codebook size
    sound: VQAutoencoder | None = None
    sound_features: AudioFeatureConfig | None = None  # how audio becomes the sound VQ's patches
    layout: VQAutoencoder | None = None
    layout_classes: int = 0  # K, classes of the one-hot layout input
    absent: dict[str, str] = dataclasses.field(default_factory=dict)  # kind → reason
    sources: dict[str, str] = dataclasses.field(default_factory=dict)  # input → content hash


def _load(path: Path, what: str) -> LoadedModel:
    try:
        return load_model(path)
    except (CheckpointError, OSError, RuntimeError) as err:
        raise UpstreamError(f"{path}: cannot read the {what} model ({err})") from None


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> CCVSAutoencoder:
    """``models/autoencoder.pt`` → E, Q, D, F (eval mode, frozen, on ``device``)."""
    path = Path(path)
    if not path.exists():
        raise UpstreamError(f"{path}: autoencoder model not found (run the autoencoder stage)")
    config, state, _ = _load(path, "autoencoder")
    try:
        ae = CCVSAutoencoder(AutoencoderConfig(**config_kwargs(config)))
        ae.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as err:
        raise UpstreamError(f"{path}: does not rebuild a CCVSAutoencoder ({err})") from None
    return ae.to(device).eval().requires_grad_(False)


def load_upstream(autoencoder: str | Path, sound_vq: str | Path | None = None,
                  layout_vq: str | Path | None = None, device: str | torch.device = "cpu", *,
                  disabled: Mapping[str, str] | None = None) -> Upstream:
    """Rebuild E/Q, the sound VQ and the layout VQ from their model files (frozen, eval mode).

    ``disabled``: kind ("audio" / "layout") → reason, for kinds not to load at all (recorded in
    ``absent``). A VQ file that is missing or says ``available: False`` leaves that kind ``None``
    with the reason in ``absent``; a file that exists but does not rebuild is an ``UpstreamError``.
    """
    disabled = dict(disabled or {})
    autoencoder = Path(autoencoder)
    ae = load_autoencoder(autoencoder, device)
    up = Upstream(ae, ae.config.codebook_size)
    up.sources["autoencoder"] = file_hash(autoencoder)

    def optional(path: str | Path | None, kind: str) -> tuple[LoadedModel, VQAutoencoder] | None:
        if kind in disabled:
            up.absent[kind] = disabled[kind]
            return None
        path = Path(path) if path is not None else None
        if path is None or not path.exists():
            up.absent[kind] = f"no model file ({path})"
            return None
        loaded = _load(path, f"{kind} VQ")
        if not loaded.meta.get("available", True) or not loaded.state:
            up.absent[kind] = str(loaded.meta.get("reason", "model marked unavailable"))
            return None
        try:
            model = VQAutoencoder(VQAutoencoderConfig(**config_kwargs(loaded.config["model"])))
            model.load_state_dict(loaded.state)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise UpstreamError(f"{path}: does not rebuild a VQAutoencoder ({err})") from None
        up.sources[kind] = file_hash(path)
        return loaded, model.to(device).eval().requires_grad_(False)

    got = optional(sound_vq, "audio")
    if got is not None:
        loaded, up.sound = got
        try:
            up.sound_features = AudioFeatureConfig(**config_kwargs(loaded.config["features"]))
        except (KeyError, TypeError, ValueError) as err:
            raise UpstreamError(f"{sound_vq}: no usable feature config ({err})") from None
    got = optional(layout_vq, "layout")
    if got is not None:
        _, up.layout = got
        up.layout_classes = up.layout.config.in_channels
    return up


# --------------------------------------------------------------------------- frames


@torch.no_grad()
def frame_tokens(ae: CCVSAutoencoder, frames: np.ndarray, batch: int,
                 device: str | torch.device) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB frames → (T, h, w) int64 codes Q(E(x)) (§3.1), x = frames / 127.5 − 1
    in [−1, 1], h = H / 2^K; ``batch`` frames per forward pass."""
    out = []
    for i in range(0, len(frames), batch):
        x = torch.from_numpy(np.ascontiguousarray(frames[i:i + batch])).to(device)
        x = x.movedim(-1, -3).float().div(127.5).sub(1.0)
        out.append(ae.tokenize(x).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


@torch.no_grad()
def vq_tokens(model: VQAutoencoder, x: np.ndarray, batch: int, device: str | torch.device,
              one_hot: int = 0) -> np.ndarray:
    """(T, C, H, W) float inputs (or (T, H, W) integer class maps with ``one_hot`` = K, encoded as
    K one-hot channels) → (T, h·w) int64 codes Q(E(x)), h = H / 2^L, row-major."""
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch])).to(device)
        if one_hot:
            xb = F.one_hot(xb.long(), one_hot).permute(0, 3, 1, 2).float()
        out.append(model.encode(xb).flatten(1).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


# --------------------------------------------------------------------------- sound (App. A)


def sound_tokens_per_frame(sound: VQAutoencoder, features: AudioFeatureConfig) -> int:
    """l_a = (F / 2^L) · (W / 2^L): codes of one frame's (F, W) patch."""
    f = sound.config.downsampling
    return (features.freq_bins // f) * (features.time_bins // f)


def sound_patches(audio: np.ndarray, audio_rate: float, fps: float, num_frames: int,
                  features: AudioFeatureConfig) -> np.ndarray:
    """Mono float audio (samples,) at ``audio_rate``, as long as ``num_frames`` frames at ``fps``
    (± one frame) → float32 (T, 1, F, W) per-frame log-mel patches in [−1, 1]
    (``pipeline.data.audio_features.frame_patches``; patch t holds the STFT columns centred in frame
    t). Raises ``AudioError`` (bad samples, wrong length) or ``AudioConfigError`` (fps/hop)."""
    return frame_patches(audio, float(audio_rate), float(fps), num_frames, features)


def sound_codes(sound: VQAutoencoder, features: AudioFeatureConfig, audio: np.ndarray,
                audio_rate: float, fps: float, num_frames: int, batch: int,
                device: str | torch.device) -> np.ndarray:
    """Mono audio of ``num_frames`` frames → (T, l_a) int64 sound-VQ codes (App. A), via
    :func:`sound_patches` and the sound VQ's Q(E(·))."""
    patches = sound_patches(audio, audio_rate, fps, num_frames, features)
    return vq_tokens(sound, patches, batch, device)


# --------------------------------------------------------------------------- layouts (App. E)


def layout_tokens_per_frame(layout: VQAutoencoder, height: int, width: int) -> int:
    """l_l = (H / 2^L) · (W / 2^L): codes of one (H, W) class map."""
    f = layout.config.downsampling
    return (height // f) * (width // f)


def layout_codes(layout: VQAutoencoder, maps: np.ndarray, batch: int,
                 device: str | torch.device) -> np.ndarray:
    """(T, H, W) integer class maps (0 background, 1 gripper, 2.. objects), every label < K =
    ``layout.config.in_channels`` → (T, l_l) int64 layout-VQ codes (App. E), one-hot input."""
    maps = np.asarray(maps)
    k = layout.config.in_channels
    if maps.size and (int(maps.min()) < 0 or int(maps.max()) >= k):
        raise ValueError(f"layout labels must be in [0, {k}), got [{int(maps.min())}, "
                         f"{int(maps.max())}]")
    return vq_tokens(layout, maps, batch, device, one_hot=k)


# --------------------------------------------------------------------------- state (§4)


def trajectory_state(trajectory: np.ndarray | None, num_frames: int, bins: StateBins) -> np.ndarray:
    """(T', 2) float (x, y) pixel positions — origin at the top-left pixel centre, x right, y
    down; NaN where unknown — → (T, 2) int16 state bins, T = ``num_frames``; frames beyond T'
    (or all, when ``trajectory`` is None) and NaN rows get the null id B; values outside the
    bins' range are clamped into the border bins (``StateBins.quantize``)."""
    xy = np.full((num_frames, 2), np.nan, np.float32)
    if trajectory is not None:
        m = min(num_frames, len(trajectory))
        xy[:m] = trajectory[:m]
    return bins.quantize(xy)


__all__ = ["KINDS", "Upstream", "UpstreamError", "config_kwargs", "file_hash", "frame_tokens",
           "layout_codes", "layout_tokens_per_frame", "load_autoencoder", "load_upstream",
           "sound_codes", "sound_patches", "sound_tokens_per_frame", "trajectory_state",
           "vq_tokens"]
