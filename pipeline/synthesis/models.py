"""The trained models a synthesis needs, loaded and checked together (Fig. 1, §3.3 "Inference").

:func:`load_models` → :class:`SynthesisModels`: T, E/Q/D/F, the token vocabulary, the state bins,
the sound / layout VQs, and which controls T was trained with (:func:`trained_conditioning`). T is
checked against the autoencoder and the vocabulary up front (codebook size q, h × w tokens), one
line naming both files. The controls T is given are built in ``pipeline.synthesis.controls``, the
user's files read in ``pipeline.synthesis.readers`` and the videos written in
``pipeline.synthesis.writers``; ``ccvs_models.sampler`` samples.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ccvs_models.autoencoder import CCVSAutoencoder
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from ccvs_models.vq_autoencoder import VQAutoencoder
from pipeline.tokens.annotations import (
    UpstreamError,
    config_kwargs,
    layout_tokens_per_frame,
    load_upstream,
    sound_tokens_per_frame,
)
from pipeline.data.audio_features import AudioFeatureConfig
from pipeline.training.checkpoint import CheckpointError, load_model
from pipeline.synthesis.readers import (
    SynthesisInputError,
)
from pipeline.tokens.shards import (
    VOCAB_FILE,
    StateBins,
    TokenShardError,
    iter_token_samples,
    read_vocab,
)

if TYPE_CHECKING:  # the sampler is imported lazily (TokenControls lives there)
    pass

CONTROL_KINDS = ("label", "end_frame", "state", "audio", "layout")  # what T can be trained with
WHY_ABSENT = {
    "label": "class token (trained without transformer.conditioning.label, or the data had one "
             "class)",
    "end_frame": "end-frame tokens (trained without transformer.conditioning.end_frame)",
    "state": "state tokens (trained without transformer.conditioning.state)",
    "audio": "audio tokens (trained without transformer.conditioning.audio)",
    "layout": "layout tokens (trained without transformer.conditioning.layout)",
}


# --------------------------------------------------------------------------- models


def trained_conditioning(config: TransformerConfig) -> frozenset[str]:
    """The control kinds T's sequence has tokens for (a subset of ``CONTROL_KINDS``)."""
    has = {"label": config.num_classes > 0, "end_frame": config.end_frame, "state": config.state,
           "audio": config.audio_tokens_per_frame > 0,
           "layout": config.layout_tokens_per_frame > 0}
    return frozenset(k for k, on in has.items() if on)


@dataclasses.dataclass
class SynthesisModels:
    """Everything synthesis needs, loaded once (eval mode, frozen, on ``device``)."""

    transformer: CCVSTransformer  # T
    autoencoder: CCVSAutoencoder  # E, Q, D, F
    vocab: dict[str, Any]  # tokenize's vocab.json (``pipeline.tokens.shards.read_vocab``)
    classes: list[str]  # class names, index = label id (may be empty: ids only)
    state_bins: StateBins | None  # (x, y) pixels ↔ bins, when T has state tokens
    conditioning: frozenset[str]  # control kinds T was trained with (``CONTROL_KINDS``)
    sound: VQAutoencoder | None = None  # the sound VQ (App. A), when loaded
    sound_features: AudioFeatureConfig | None = None  # its STFT patch config
    layout: VQAutoencoder | None = None  # the layout VQ (App. E), when loaded
    layout_classes: int = 0  # K, layout classes the layout VQ reads
    fps: float | None = None  # the data's frame rate (sound controls need it)
    device: torch.device = torch.device("cpu")
    paths: dict[str, str] = dataclasses.field(default_factory=dict)  # role → file, for messages
    absent: dict[str, str] = dataclasses.field(default_factory=dict)  # kind → why no model

    @property
    def token_grid(self) -> tuple[int, int]:
        """(h, w) frame tokens per frame."""
        cfg = self.transformer.config
        return cfg.frame_height, cfg.frame_width

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) pixels of the frames the models work at: (h, w) · 2^K."""
        f = self.autoencoder.config.downsampling
        h, w = self.token_grid
        return h * f, w * f


def _read_vocab_from(source: str | Path | Mapping[str, Any] | None,
                     meta: Mapping[str, Any], transformer: Path) -> tuple[dict[str, Any], str]:
    """(vocab, where it came from) for a tokens folder, a vocab.json, a dict, or T's meta."""
    try:
        if isinstance(source, Mapping):
            return dict(source), "the given vocab"
        if source is None:
            if isinstance(meta.get("vocab"), Mapping):
                return dict(meta["vocab"]), f"{transformer} (its vocab)"
            raise SynthesisInputError(f"{transformer}: holds no vocab; pass the tokens folder "
                                      f"(data/tokens) or its vocab.json")
        path = Path(source)
        folder = path.parent if path.name == VOCAB_FILE or path.is_file() else path
        if path.is_file() and path.name != VOCAB_FILE:
            try:
                return json.loads(path.read_text(encoding="utf-8")), str(path)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SynthesisInputError(f"{path}: not a valid vocab JSON ({err})") from None
        return read_vocab(folder), str(folder / VOCAB_FILE)
    except TokenShardError as err:
        raise SynthesisInputError(str(err)) from None


def _data_fps(source: Any, vocab: Mapping[str, Any]) -> float | None:
    """The data's frame rate: vocab.json's ``fps`` if any, else the first token sample's meta."""
    if vocab.get("fps"):
        return float(vocab["fps"])
    if isinstance(source, (str, Path)):
        folder = Path(source)
        folder = folder.parent if folder.is_file() else folder
        for split in ("train", "val", "test"):
            try:
                for sample in iter_token_samples(folder, split, limit=1):
                    fps = sample.get("meta", {}).get("fps")
                    if fps:
                        return float(fps)
            except Exception:  # noqa: BLE001 - a damaged shard only means "fps unknown" here
                continue
    return None


def load_models(transformer_path: str | Path, autoencoder_path: str | Path,
                tokens_dir_or_vocab: str | Path | Mapping[str, Any] | None = None,
                sound_vq_path: str | Path | None = None, layout_vq_path: str | Path | None = None,
                device: str | torch.device = "cpu", *, fps: float | None = None
                ) -> SynthesisModels:
    """Load T (``models/transformer.pt``), the autoencoder and, when T uses them, the sound and
    layout VQs; the vocabulary from the tokens folder / its vocab.json / a dict (None: the copy
    the transformer stage stored in T's meta). ``fps``: the data's frame rate (default: from the
    vocab or the first token sample). Checks, before returning, that T's q and h × w match the
    autoencoder's codebook and the vocabulary's token grid, and that T's annotation vocabularies
    match the vocabulary and the VQs; each mismatch is one line naming both files."""
    device = torch.device(device)
    tpath, apath = Path(transformer_path), Path(autoencoder_path)
    if not tpath.exists():
        raise SynthesisInputError(f"{tpath}: transformer model not found (run the transformer "
                                  f"stage)")
    try:
        tconfig, tstate, tmeta = load_model(tpath)
    except CheckpointError as err:
        raise SynthesisInputError(str(err)) from None
    try:
        cfg = TransformerConfig(**config_kwargs(tconfig))
    except (TypeError, ValueError) as err:
        raise SynthesisInputError(f"{tpath}: not a transformer model ({err})") from None
    vocab, vsrc = _read_vocab_from(tokens_dir_or_vocab, tmeta, tpath)
    conditioning = trained_conditioning(cfg)
    disabled = {k: f"the transformer has no {k} tokens" for k in ("audio", "layout")
                if k not in conditioning}
    try:
        up = load_upstream(apath, sound_vq_path, layout_vq_path, device, disabled=disabled)
    except UpstreamError as err:
        raise SynthesisInputError(str(err)) from None

    # --- T against the autoencoder and the vocabulary (before building T: a cheap check)
    aq = up.autoencoder.config.codebook_size
    frame = vocab.get("frame") or {}
    vgrid = (int(frame.get("height", -1)), int(frame.get("width", -1)))
    vq = int(frame.get("vocab", -1))
    tgrid = (cfg.frame_height, cfg.frame_width)
    if cfg.frame_vocab != aq:
        raise SynthesisInputError(
            f"checkpoint {tpath} expects q={cfg.frame_vocab}, {tgrid[0]}×{tgrid[1]} tokens; "
            f"{apath} has q={aq}")
    if vq != aq or vgrid != tgrid:
        raise SynthesisInputError(
            f"checkpoint {tpath} expects q={cfg.frame_vocab}, {tgrid[0]}×{tgrid[1]} tokens; "
            f"{vsrc} has q={vq}, {vgrid[0]}×{vgrid[1]} tokens (tokenized with another model?)")
    state = vocab.get("state")
    bins = StateBins.from_dict(state) if cfg.state and state else None
    if cfg.state and (bins is None or bins.bins != cfg.state_bins):
        raise SynthesisInputError(
            f"checkpoint {tpath} expects {cfg.state_bins} state bins; {vsrc} has "
            f"{bins.bins if bins else 'no state'}")
    if "audio" in conditioning and up.sound is not None:
        la = sound_tokens_per_frame(up.sound, up.sound_features)
        if (up.sound.config.codebook_size, la) != (cfg.audio_vocab, cfg.audio_tokens_per_frame):
            raise SynthesisInputError(
                f"checkpoint {tpath} expects q_a={cfg.audio_vocab}, {cfg.audio_tokens_per_frame} "
                f"audio tokens per frame; {sound_vq_path} has q_a={up.sound.config.codebook_size}, "
                f"{la}")
    if "layout" in conditioning and up.layout is not None:
        f = up.autoencoder.config.downsampling
        ll = layout_tokens_per_frame(up.layout, vgrid[0] * f, vgrid[1] * f)
        if (up.layout.config.codebook_size, ll) != (cfg.layout_vocab, cfg.layout_tokens_per_frame):
            raise SynthesisInputError(
                f"checkpoint {tpath} expects q_l={cfg.layout_vocab}, "
                f"{cfg.layout_tokens_per_frame} layout tokens per frame; {layout_vq_path} has "
                f"q_l={up.layout.config.codebook_size}, {ll}")
    classes = [str(c) for c in (vocab.get("label") or {}).get("classes", [])]
    if cfg.num_classes and classes and len(classes) != cfg.num_classes:
        raise SynthesisInputError(f"checkpoint {tpath} has {cfg.num_classes} classes; {vsrc} "
                                  f"lists {len(classes)}")
    try:
        transformer = CCVSTransformer(cfg)
        transformer.load_state_dict(tstate)
    except (RuntimeError, ValueError) as err:
        reason = str(err).strip().splitlines()[0]
        raise SynthesisInputError(f"{tpath}: weights do not fit its config ({reason})") from None
    transformer = transformer.to(device).eval().requires_grad_(False)
    paths = {"transformer": str(tpath), "autoencoder": str(apath), "vocab": vsrc}
    if sound_vq_path is not None:
        paths["sound_vq"] = str(sound_vq_path)
    if layout_vq_path is not None:
        paths["layout_vq"] = str(layout_vq_path)
    # channels-last conv weights: oneDNN then runs D, E and F's convolutions without reordering
    # (a 64×64 frame's D·S·E·F 1.4–1.6× faster in fp32 on CPU, the same values; BENCHMARKS.md)
    autoencoder = up.autoencoder.to(memory_format=torch.channels_last)
    return SynthesisModels(
        transformer=transformer, autoencoder=autoencoder, vocab=vocab, classes=classes,
        state_bins=bins, conditioning=conditioning, sound=up.sound,
        sound_features=up.sound_features, layout=up.layout, layout_classes=up.layout_classes,
        fps=float(fps) if fps else _data_fps(tokens_dir_or_vocab, vocab), device=device,
        paths=paths, absent=dict(up.absent))
