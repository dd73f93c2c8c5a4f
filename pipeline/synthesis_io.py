"""Around the sampler: trained models in, a user's files (or clip samples) → start frames and
annotation tokens, synthesized videos out (Fig. 1, §3.3 "Inference", App. A, App. E).

§3.3 "Inference": annotation tokens are *given* to T for every frame of the output video (never
predicted) and T completes the frame tokens; Fig. 1: the m start frames are tokenized by Q(E(·))
and new frames are decoded by D with F. ``ccvs_models.sampler`` does the sampling; this module
prepares its inputs and writes its outputs, for ``ccvs synthesize`` and the ``evaluate`` stage:

- :func:`load_models` → :class:`SynthesisModels`: T, E/Q/D/F, the token vocabulary, the state
  bins, the sound / layout VQs, and which controls T was trained with. T is checked against the
  autoencoder and the vocabulary up front (codebook size q, h × w tokens), one line naming both
  files.
- Readers of a user's files (each returns :class:`Loaded`: the array at the model's resolution and
  human-readable notes such as "resized start frames 128×96 → 64×64 (short side, center crop)"):
  :func:`read_start_frames` (mp4 or any video PyAV reads, gif, or a folder of png/jpg sorted by
  name), :func:`read_image` (end frame), :func:`read_trajectory` (CSV), :func:`read_sound` (wav/
  flac/ogg or a video's audio track), :func:`read_layouts` (npz), and :func:`class_id`.
- :func:`build_controls`: all of them → ``ccvs_models.sampler.TokenControls``, every input
  validated before any model runs; :func:`clip_controls`: the same from tokenized clip samples.
- :func:`write_samples`: an mp4 and a GIF per sample and a PNG contact sheet per input.

The readers live in ``pipeline.synthesis_readers`` and the writers in ``pipeline.synthesis_writers``;
this module re-exports them (``__all__``), so callers import everything from here.

Conventions (docs/CONTRACTS.md):

- Images are resized like ``prepare`` does: the short side scaled to the model's size, then a
  center crop (bilinear, antialiased when shrinking; class maps nearest). Sizes print as W×H.
- Trajectory CSV: a header with columns ``x`` and ``y`` (others ignored), one row per OUTPUT
  frame (the m start frames included), in pixels of the model's resolution H × W: origin at the
  centre of the top-left pixel, x to the right, y down, so the frame spans
  [−½, W − ½] × [−½, H − ½]. An empty cell or ``nan`` = unknown position (the null state token);
  positions outside the frame fall into the border bins.
- Sound: the track's time 0 is the first output frame's start; it must last the whole output
  video (n / fps seconds at the data's frame rate; at most one frame short, padded with silence);
  a longer track is cut. Audio is resampled to the sound model's rate.
- Layouts npz: an array ``layout`` (or the file's only array), uint8 T × H × W class maps
  (0 background, 1 gripper, 2.. objects), T ≥ n (the first n are used).

Every problem with an input is a :class:`SynthesisInputError` whose message is one line naming the
file (or the value) and the problem.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ccvs_models.autoencoder import CCVSAutoencoder
from ccvs_models.transformer import CCVSTransformer, TransformerConfig
from ccvs_models.vq_autoencoder import VQAutoencoder
from pipeline.annotation_tokens import (
    UpstreamError,
    config_kwargs,
    frame_tokens,
    layout_codes,
    layout_tokens_per_frame,
    load_upstream,
    sound_codes,
    sound_tokens_per_frame,
)
from pipeline.audio_features import AudioConfigError, AudioError, AudioFeatureConfig, hop_length
from pipeline.checkpoint import CheckpointError, load_model
from pipeline.synthesis_readers import (
    Loaded,
    SynthesisInputError,
    class_id,
    fit_image,
    fit_images,
    read_image,
    read_layouts,
    read_sound,
    read_start_frames,
    read_trajectory,
    read_trajectory_xy,
    to_model_frames,
)
from pipeline.synthesis_writers import contact_sheet, to_uint8, write_samples
from pipeline.token_shards import (
    VOCAB_FILE,
    StateBins,
    TokenShardError,
    iter_token_samples,
    read_vocab,
)

if TYPE_CHECKING:  # the sampler is imported lazily (TokenControls lives there)
    from ccvs_models.sampler import TokenControls

CONTROL_KINDS = ("label", "end_frame", "state", "audio", "layout")  # what T can be trained with
_WHY_ABSENT = {
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
    vocab: dict[str, Any]  # tokenize's vocab.json (``pipeline.token_shards.read_vocab``)
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
    return SynthesisModels(
        transformer=transformer, autoencoder=up.autoencoder, vocab=vocab, classes=classes,
        state_bins=bins, conditioning=conditioning, sound=up.sound,
        sound_features=up.sound_features, layout=up.layout, layout_classes=up.layout_classes,
        fps=float(fps) if fps else _data_fps(tokens_dir_or_vocab, vocab), device=device,
        paths=paths, absent=dict(up.absent))


# --------------------------------------------------------------------------- controls


@dataclasses.dataclass
class ControlTokens:
    """One video's annotation tokens as numpy arrays (None = not given: the sampler uses the null
    id); the batch-less form of ``TokenControls`` (:func:`to_token_controls` stacks them)."""

    label: int | None = None  # class id
    end_frame: np.ndarray | None = None  # (h, w) frame codes of the end frame (App. E)
    end_time: int | None = None  # its timestep in the output video (None = n − 1)
    state: np.ndarray | None = None  # (n, 2) state bins (x, y)
    audio: np.ndarray | None = None  # (n, l_a) sound-VQ codes
    layout: np.ndarray | None = None  # (n, l_l) layout-VQ codes


def to_token_controls(tokens: ControlTokens | Sequence[ControlTokens],
                      device: str | torch.device = "cpu") -> TokenControls:
    """One or B :class:`ControlTokens` → ``ccvs_models.sampler.TokenControls`` of batch B (long
    tensors on ``device``). Every item must give the same kinds (and the same end_time)."""
    from ccvs_models.sampler import TokenControls

    items = [tokens] if isinstance(tokens, ControlTokens) else list(tokens)
    if not items:
        raise ValueError("to_token_controls: no controls")
    fields: dict[str, Any] = {}
    for name in ("label", "end_frame", "state", "audio", "layout"):
        given = [getattr(c, name) is not None for c in items]
        if any(given) and not all(given):
            raise ValueError(f"to_token_controls: {name} is given for some videos only")
        if all(given):
            fields[name] = torch.as_tensor(np.stack([np.asarray(getattr(c, name)) for c in items]),
                                           dtype=torch.long, device=device)
    end_times = {c.end_time for c in items}
    if len(end_times) > 1:
        raise ValueError(f"to_token_controls: different end times {sorted(end_times)} in a batch")
    return TokenControls(**fields, end_time=end_times.pop())


def _not_trained(models: SynthesisModels, kind: str, what: str) -> SynthesisInputError:
    return SynthesisInputError(f"{what}: {models.paths.get('transformer', 'the transformer')} "
                               f"has no {_WHY_ABSENT[kind]}")


def control_tokens(models: SynthesisModels, n_frames: int, *,
                   end_frame: str | Path | np.ndarray | None = None, end_time: int | None = None,
                   trajectory: str | Path | np.ndarray | None = None,
                   sound: str | Path | None = None, label: str | int | None = None,
                   layouts: str | Path | np.ndarray | None = None, resize: bool = True,
                   batch: int = 64) -> tuple[ControlTokens, list[str]]:
    """A user's controls for an n-frame output video → :class:`ControlTokens` and notes.

    end_frame: an image file or uint8 (H, W, 3); trajectory: a CSV file or float (n, 2) pixel
    positions; sound: an audio or video file; label: a class name or id; layouts: an npz file or
    integer (n', H, W) maps. All inputs are read and checked (kinds T was trained with, models
    present, sizes, lengths, classes) before any model runs; then E/Q tokenizes the end frame
    and the VQs encode the sound and the layouts (``batch`` items per forward pass)."""
    if n_frames < 1:
        raise SynthesisInputError(f"num_frames must be ≥ 1, got {n_frames}")
    given = {"end_frame": end_frame, "state": trajectory, "audio": sound, "label": label,
             "layout": layouts}
    describe = {k: (str(v) if isinstance(v, (str, Path)) else f"the given {k}")
                for k, v in given.items()}
    describe["label"] = f"class {label!r}"
    # 1. kinds T has, models present (no file read yet)
    for kind, value in given.items():
        if value is not None and kind not in models.conditioning:
            raise _not_trained(models, kind, describe[kind])
    if sound is not None:
        if models.sound is None or models.sound_features is None:
            why = models.absent.get("audio", "no sound VQ loaded")
            raise SynthesisInputError(f"{sound}: the sound VQ model is needed to encode it "
                                      f"({why}; pass models/sound_vq.pt)")
        if not models.fps:
            raise SynthesisInputError(f"{sound}: the data's frame rate is unknown (pass fps to "
                                      f"load_models)")
        try:
            hop_length(models.fps, models.sound_features)
        except AudioConfigError as err:
            raise SynthesisInputError(f"{sound}: {err}") from None
    if layouts is not None and models.layout is None:
        why = models.absent.get("layout", "no layout VQ loaded")
        raise SynthesisInputError(f"{layouts}: the layout VQ model is needed to encode it "
                                  f"({why}; pass models/layout_vq.pt)")
    if end_time is not None and not 0 <= end_time < n_frames:
        raise SynthesisInputError(f"end_time {end_time}: must be in [0, {n_frames - 1}]")

    # 2. read and check every input (cheap)
    size, notes = models.resolution, []
    out = ControlTokens(end_time=end_time)
    if label is not None:
        out.label = class_id(label, models.classes, models.transformer.config.num_classes)
    end_image = None
    if end_frame is not None:
        if isinstance(end_frame, (str, Path)):
            end_image, n = read_image(end_frame, size, resize=resize)
            notes += n
        else:
            end_image = fit_images(np.asarray(end_frame, np.uint8)[None], size, resize,
                                 describe["end_frame"], "end frame").data[0]
    if trajectory is not None:
        assert models.state_bins is not None  # T has state tokens (checked in load_models)
        if isinstance(trajectory, (str, Path)):
            out.state, n = read_trajectory(trajectory, n_frames, models.state_bins)
            notes += n
        else:
            xy = np.asarray(trajectory, np.float32)
            if xy.shape != (n_frames, 2):
                raise SynthesisInputError(f"the given trajectory: shape {xy.shape}, expected "
                                          f"({n_frames}, 2)")
            out.state = models.state_bins.quantize(xy)
    audio = None
    if sound is not None:
        audio, n = read_sound(sound, n_frames, models.fps, models.sound_features.sample_rate)
        notes += n
    maps = None
    if layouts is not None:
        if isinstance(layouts, (str, Path)):
            maps, n = read_layouts(layouts, n_frames, size, models.layout_classes, resize=resize)
            notes += n
        else:
            arr = np.asarray(layouts)
            if arr.ndim != 3 or len(arr) < n_frames or arr.min(initial=0) < 0 or \
                    arr.max(initial=0) >= models.layout_classes:
                raise SynthesisInputError(f"the given layouts: need ≥ {n_frames} maps with labels "
                                          f"< {models.layout_classes}, got {arr.shape}")
            maps = fit_images(arr[:n_frames].astype(np.uint8), size, resize, "the given layouts",
                            "layouts", nearest=True).data

    # 3. the models
    device = models.device
    if end_image is not None:
        out.end_frame = frame_tokens(models.autoencoder, end_image[None], 1, device)[0]
    if audio is not None:
        try:
            out.audio = sound_codes(models.sound, models.sound_features, audio,
                                    models.sound_features.sample_rate, models.fps, n_frames,
                                    batch, device)
        except (AudioError, AudioConfigError) as err:
            raise SynthesisInputError(f"{sound}: {err}") from None
    if maps is not None:
        out.layout = layout_codes(models.layout, maps, batch, device)
    return out, notes


def build_controls(models: SynthesisModels, n_frames: int, *,
                   end_frame: str | Path | np.ndarray | None = None, end_time: int | None = None,
                   trajectory: str | Path | np.ndarray | None = None,
                   sound: str | Path | None = None, label: str | int | None = None,
                   layouts: str | Path | np.ndarray | None = None, resize: bool = True
                   ) -> tuple[TokenControls, list[str]]:
    """:func:`control_tokens` as a batch-1 ``TokenControls`` on the models' device, and notes."""
    tokens, notes = control_tokens(models, n_frames, end_frame=end_frame, end_time=end_time,
                                   trajectory=trajectory, sound=sound, label=label,
                                   layouts=layouts, resize=resize)
    return to_token_controls(tokens, models.device), notes


def clip_control_tokens(models: SynthesisModels, token_sample: Mapping[str, Any],
                        kinds: Iterable[str] | None = None, num_frames: int | None = None
                        ) -> ControlTokens:
    """A tokenized clip (``pipeline.token_shards.iter_token_samples`` item) → its controls of the
    given ``kinds`` (default: every kind T has), the others None. The output video is the clip's
    first ``num_frames`` frames (default all T): frame-level rows are cut to it, and the end
    frame is the clip's frame n − 1 (= ``end_frame.npy`` when n = T). Rows a clip lacks
    (``meta.missing``) hold the null id, as in training."""
    key = token_sample.get("key", "?")
    kinds = set(models.conditioning if kinds is None else kinds)
    unknown = kinds - set(CONTROL_KINDS)
    if unknown:
        raise ValueError(f"unknown control kinds {sorted(unknown)}; known: {list(CONTROL_KINDS)}")
    for kind in sorted(kinds):
        if kind not in models.conditioning:
            raise _not_trained(models, kind, f"clip {key}")
    frames = np.asarray(token_sample["frames"])
    t = len(frames)
    n = t if num_frames is None else int(num_frames)
    if not 1 <= n <= t:
        raise SynthesisInputError(f"clip {key}: {t} frames, {n} requested")
    out = ControlTokens()
    for kind in ("state", "audio", "layout"):
        if kind in kinds:
            if kind not in token_sample:
                raise SynthesisInputError(f"clip {key}: no {kind}.npy in the token sample")
            setattr(out, kind, np.asarray(token_sample[kind])[:n].astype(np.int64))
    if "end_frame" in kinds:
        out.end_frame = (np.asarray(token_sample["end_frame"]) if n == t else frames[n - 1]) \
            .astype(np.int64)
    if "label" in kinds:
        out.label = int(token_sample.get("meta", {}).get("label_id", 0))
    return out


def clip_controls(models: SynthesisModels, token_sample: Mapping[str, Any] |
                  Sequence[Mapping[str, Any]], kinds: Iterable[str] | None = None,
                  num_frames: int | None = None) -> TokenControls:
    """One token sample or a list of B → ``TokenControls`` of batch B (see
    :func:`clip_control_tokens`), e.g. ``clip_controls(models, sample, kinds={"state"})``."""
    samples = [token_sample] if isinstance(token_sample, Mapping) else list(token_sample)
    kinds = None if kinds is None else set(kinds)
    return to_token_controls([clip_control_tokens(models, s, kinds, num_frames) for s in samples],
                             models.device)


__all__ = ["CONTROL_KINDS", "ControlTokens", "Loaded", "SynthesisInputError", "SynthesisModels",
           "build_controls", "class_id", "clip_control_tokens", "clip_controls", "contact_sheet",
           "control_tokens", "fit_image", "load_models", "read_image", "read_layouts",
           "read_sound", "read_start_frames", "read_trajectory", "read_trajectory_xy",
           "to_model_frames", "to_token_controls", "to_uint8", "trained_conditioning",
           "write_samples"]
