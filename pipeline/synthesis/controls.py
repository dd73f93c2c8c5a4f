"""A user's controls → the annotation tokens T is given (Fig. 1, §3.3 "Inference", App. A, App. E).

§3.3 "Inference": annotation tokens are *given* to T for every frame of the output video (never
predicted) and T completes the frame tokens. This module turns what a user gives (read by
``pipeline.synthesis.readers``: a class name, an end frame, a trajectory CSV, a sound track,
layouts) or what a tokenized clip carries into those tokens, every input validated before any
model runs:

- :func:`build_controls` / :func:`control_tokens`: a user's inputs → ``TokenControls``;
- :func:`clip_controls` / :func:`clip_control_tokens`: the same from tokenized clip samples;
- :class:`ControlTokens`, :func:`to_token_controls`: one video's tokens, and a batch of them.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from pipeline.tokens.annotations import (
    frame_tokens,
    layout_codes,
    sound_codes,
)
from pipeline.data.audio_features import AudioConfigError, AudioError, hop_length
from pipeline.synthesis.readers import (
    SynthesisInputError,
    class_id,
    fit_images,
    read_image,
    read_layouts,
    read_sound,
    read_trajectory,
)

if TYPE_CHECKING:  # the sampler is imported lazily (TokenControls lives there)
    from ccvs_models.sampler import TokenControls

from pipeline.synthesis.models import CONTROL_KINDS, WHY_ABSENT, SynthesisModels


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
                               f"has no {WHY_ABSENT[kind]}")


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
    """A tokenized clip (``pipeline.tokens.shards.iter_token_samples`` item) → its controls of the
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


__all__ = [
    "ControlTokens",
    "build_controls",
    "clip_control_tokens",
    "clip_controls",
    "control_tokens",
    "to_token_controls",
]
