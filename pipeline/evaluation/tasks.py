"""Synthesis tasks on held-out clips and their metrics (the ``evaluate`` stage; paper §4).

Paper §4 "Metrics": SSIM [77] and PSNR between each real frame and its synthetic counterpart,
reported at given timesteps (BAIR: t = 8, 15); FVD [66] on I3D features; Fig. 6: DIV, the mean
pixel distance among S samples of the same input, on whole frames and on moving parts.

Timesteps are the paper's, **1-based**: t = 1 is the first frame (Fig. 6 shows the input at
t = 1; Table 3's t = 15 of a 16-frame BAIR video is "the one-before-last frame", t = 8 "the
mid-point"), so ``ssim@t`` scores frame index t − 1. The m given start frames (t ≤ m) are never
scored as predictions: a timestep among them is not reported, and ``ssim`` / ``psnr`` average the
synthesized frames only. ``m`` is ``evaluate.start_frames`` (BAIR 1, Kinetics 5, AudioSet-Drums
15) for every task that starts from real frames.

The tasks are the paper's experiments as they apply to the demo world:

- ``reconstruction`` (Table 1 "Reconstruction"): the clip's own tokens Q(E(x_t)) decoded frame by
  frame by D with F over the last c decoded frames (App. A's recursive decoding); frame 0 given.
- ``prediction`` (Table 1/2, BAIR): frame 0 given, T samples the rest with top-k (§3.1); no
  annotation (every annotation token is its null id).
- ``prediction_greedy``: the same with k = 1 (Table 2's greedy/top-k observation: greedy samples
  are all alike and move little).
- ``point_to_point`` (App. E, Table D4): frame 0 and the clip's last frame as the end frame;
  ``best/ssim@t`` is the best of the S samples, ``end/*`` the control-point consistency (the last
  synthetic frame against the end frame).
- ``state`` (§4 state-conditioned BAIR): frame 0 and the clip's gripper trajectory (state tokens).
- ``sound`` (§4 AIST++-style): frame 0 and the clip's sound tokens.
- ``class`` (App. E Weizmann/UCF): frame 0 and the clip's class label.
- ``unconditional``: nothing given. When T has a video-level token (class or end frame), T samples
  frame 0 too (its null ids as the only context); otherwise frame 0 comes from the dataset. The
  result says which (``start``).

A task the trained T cannot do (it was trained without that annotation) is listed as skipped with
the reason, never silently dropped. Everything here is model-side maths on tensors; the stage
(``stages/evaluate.py``) reads files, writes GIFs/PNGs/CSVs and logs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ccvs_models.autoencoder import CCVSAutoencoder, ContextBuffer, context_indices
from ccvs_models.sampler import SamplerConfig, TokenControls, synthesize
from ccvs_models.transformer import CCVSTransformer
from pipeline.metrics.video import diversity, frame_psnr, frame_ssim
from pipeline.synthesis.writers import to_uint8

PSNR_CAP_DB = 100.0  # identical frames (the given ones) would give +inf: capped, and never averaged


@dataclasses.dataclass(frozen=True)
class EvalData:
    """n held-out clips: real frames and their tokens (pipeline.tokens.shards.TokenSplit rows)."""

    keys: list[str]
    frames: torch.Tensor  # (n, T, 3, H, W) real frames in [−1, 1]
    codes: torch.Tensor  # (n, T, h, w) long, Q(E(x_t))
    end_frame: torch.Tensor  # (n, h, w) long, codes of the clip's last frame
    label: torch.Tensor  # (n,) long
    state: torch.Tensor | None  # (n, T, 2) long state bins
    audio: torch.Tensor | None  # (n, T, l_a) long
    layout: torch.Tensor | None  # (n, T, l_l) long
    layouts: np.ndarray | None = None  # uint8 (n, T, H, W) ground-truth layouts, when every clip
    # has them for every frame (the demo world): the object-region metrics' masks

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, idx: slice) -> EvalData:
        pick = (lambda a: None if a is None else a[idx])  # noqa: E731
        return EvalData(self.keys[idx], self.frames[idx], self.codes[idx], self.end_frame[idx],
                        self.label[idx], pick(self.state), pick(self.audio), pick(self.layout),
                        pick(self.layouts))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a task gives T: m start frames, which annotations, how it samples."""

    name: str
    start_frames: int  # m (0 = T samples frame 0 too)
    controls: tuple[str, ...]  # annotation kinds taken from the clip
    greedy: bool = False  # k = 1 whatever evaluate.top_k says
    teacher_forced: bool = False  # the clip's own codes (reconstruction), nothing sampled


TASKS: dict[str, TaskSpec] = {
    "reconstruction": TaskSpec("reconstruction", 1, (), teacher_forced=True),
    "prediction": TaskSpec("prediction", 1, ()),
    "prediction_greedy": TaskSpec("prediction_greedy", 1, (), greedy=True),
    "point_to_point": TaskSpec("point_to_point", 1, ("end_frame",)),
    "state": TaskSpec("state", 1, ("state",)),
    "sound": TaskSpec("sound", 1, ("audio",)),
    "class": TaskSpec("class", 1, ("label",)),
    "unconditional": TaskSpec("unconditional", 0, ()),
}


def transformer_kinds(transformer: CCVSTransformer) -> set[str]:
    """The annotation kinds T was trained with (its sequence has tokens for them)."""
    cfg = transformer.config
    kinds = set()
    if cfg.state:
        kinds.add("state")
    if cfg.audio_tokens_per_frame:
        kinds.add("audio")
    if cfg.layout_tokens_per_frame:
        kinds.add("layout")
    if cfg.num_classes:
        kinds.add("label")
    if cfg.end_frame:
        kinds.add("end_frame")
    return kinds


_LACKING = {"state": "no annotated position", "audio": "no audio track", "layout": "no layout"}


def resolve_task(spec: TaskSpec, transformer: CCVSTransformer, data: EvalData,
                 null_ids: Mapping[str, int] | None = None) -> tuple[TaskSpec | None, str]:
    """The task as it can run with this T and these data, or (None, why it is skipped).

    ``null_ids`` (kind → its null id, from vocab.json): a control every evaluated clip lacks —
    all its tokens the null id, e.g. test videos without an audio track — would make the task
    the same as ``prediction`` under another name, so it is skipped too."""
    kinds = transformer_kinds(transformer)
    for kind in spec.controls:
        if kind not in kinds:
            return None, f"the transformer was trained without {kind} tokens"
        if kind in ("state", "audio", "layout"):
            tokens = getattr(data, kind)
            if tokens is None:
                return None, f"the token shards have no {kind} tokens"
            null = (null_ids or {}).get(kind)
            if null is not None and len(data) and bool((tokens == null).all()):
                return None, (f"none of the {len(data)} clips evaluated has {kind} tokens (all "
                              f"null ids: {_LACKING[kind]})")
    if spec.start_frames == 0 and not ({"label", "end_frame"} & kinds):
        # no token precedes frame 0's first code: frame 0 must be given
        return dataclasses.replace(spec, start_frames=1), "dataset_first_frame"
    return spec, "sampled" if spec.start_frames == 0 else "given"


def task_controls(spec: TaskSpec, batch: EvalData, num_frames: int) -> TokenControls:
    """TokenControls holding the kinds ``spec`` takes from the clip (the rest: null ids)."""
    given: dict[str, Any] = {}
    if "end_frame" in spec.controls:
        given["end_frame"] = batch.end_frame
        given["end_time"] = batch.codes.shape[1] - 1
    if "label" in spec.controls:
        given["label"] = batch.label
    for kind in ("state", "audio", "layout"):
        if kind in spec.controls:
            given[kind] = getattr(batch, kind)[:, :num_frames]
    return TokenControls(**given)


# --------------------------------------------------------------------------- decoding


@torch.no_grad()
def decode_video(autoencoder: CCVSAutoencoder, codes: torch.Tensor, given: torch.Tensor | None,
                 context_frames: int) -> torch.Tensor:
    """D·S·E·F over known codes (Fig. 1 without T; App. A recursive decoding).

    codes (B, n, h, w); given (B, m, 3, H, W) in [−1, 1] or None (m = 0) → (B, n, 3, H, W):
    frames t < m are the given ones; frame t ≥ m is D(U(codes_t)) with F over E of the frames
    the model's context rule picks (``ContextBuffer``: the last c frames, given or decoded, or
    with ``context_anchor`` the first frames kept plus the latest), each frame encoded at most
    once; frame 0 without context when m = 0.
    """
    problem = autoencoder.config.context_problem(context_frames)
    if problem:
        raise ValueError(f"decode_video: {problem}")
    b, n = codes.shape[:2]
    m = 0 if given is None else given.shape[1]
    out: list[torch.Tensor] = []
    use_context = autoencoder.has_flow and context_frames > 0
    buffer = ContextBuffer(context_frames, min(autoencoder.config.context_anchor, context_frames)
                           ) if use_context else None
    read_given = set(context_indices(m, context_frames, buffer.anchor)) if buffer else set()

    for t in range(n):
        if t < m:
            x = given[:, t]
        else:
            context = buffer.context() if buffer is not None else None
            x = autoencoder.decode_tokens(codes[:, t], context).x_hat.clamp(-1, 1)
        out.append(x)
        if buffer is not None and t + 1 < n:
            wanted = t in read_given if t < m else buffer.reads(t)
            buffer.push(autoencoder.encode(x).features if wanted else None)
    return torch.stack(out, dim=1)


@dataclasses.dataclass
class TaskOutput:
    """One task's synthetic videos for a batch of inputs."""

    frames: torch.Tensor  # (B, S, n, 3, H, W) in [−1, 1]
    start_frames: int  # m actually given


@torch.no_grad()
def run_task(spec: TaskSpec, autoencoder: CCVSAutoencoder, transformer: CCVSTransformer,
             batch: EvalData, num_frames: int, samples: int, sampler: SamplerConfig,
             context_frames: int, seeds: Sequence[int],
             on_frame: Callable[[int], None] | None = None) -> TaskOutput:
    """Synthesize ``samples`` videos of ``num_frames`` for every input of ``batch``."""
    real = batch.frames[:, :num_frames]
    m = spec.start_frames
    if spec.teacher_forced:
        video = decode_video(autoencoder, batch.codes[:, :num_frames], real[:, :m], context_frames)
        return TaskOutput(video[:, None].expand(-1, samples, -1, -1, -1, -1).clone(), m)
    config = dataclasses.replace(sampler, top_k=1) if spec.greedy else sampler
    controls = task_controls(spec, batch, num_frames)
    # m = 0: T samples frame 0 too (from the video-level tokens), D decodes it without context
    out = synthesize(autoencoder, transformer, real[:, :m], num_frames, controls, config,
                     samples=samples, seeds=list(seeds), context_frames=context_frames,
                     on_frame=on_frame)
    return TaskOutput(out.frames, m)


# --------------------------------------------------------------------------- metrics


def frame_scores(fake: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fake (B, S, n, 3, H, W), real (B, n, 3, H, W) in [−1, 1] → SSIM, PSNR (B, S, n) per frame
    (``pipeline.metrics.video``: Gaussian-window SSIM [77]; PSNR capped at PSNR_CAP_DB)."""
    b, s, n = fake.shape[:3]
    f = fake.flatten(0, 1)
    r = real[:, None].expand_as(fake).flatten(0, 1)
    ssim_v = torch.from_numpy(frame_ssim(r, f)).float().view(b, s, n)
    psnr_v = torch.from_numpy(frame_psnr(r, f, max_db=PSNR_CAP_DB)).float().view(b, s, n)
    return ssim_v, psnr_v


def sample_diversity(samples: torch.Tensor, moving: torch.Tensor | None
                     ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """DIV (Fig. 6) of samples (B, S, n, 3, H, W) on whole frames and on the pixels where
    ``moving`` (B, n, H, W) is True (``motion_mask`` of the real clips: flow ≥ 20 % of its max);
    None when S < 2."""
    if samples.shape[1] < 2:
        return None, None
    div = diversity(samples, moving)
    return torch.as_tensor(div.whole), torch.as_tensor(div.moving)


def frame_motion(video: torch.Tensor, first: int = 0) -> float:
    """Mean |x_t − x_{t−1}| over t > first of videos (..., n, 3, H, W) in [−1, 1], in [0, 1] pixel
    units: how much a video moves (Table 2's observation: greedy samples barely move)."""
    x = video[..., first:, :, :, :].float()
    if x.shape[-4] < 2:
        return float("nan")
    return float((x[..., 1:, :, :, :] - x[..., :-1, :, :, :]).abs().mean() / 2)


def scored_timesteps(timesteps: Sequence[int], m: int, n: int) -> list[int]:
    """The paper's (1-based) timesteps that are synthesized frames of an n-frame video with m
    given ones: m < t ≤ n."""
    return [t for t in timesteps if m < t <= n]


def summarize(name: str, ssim_v: torch.Tensor, psnr_v: torch.Tensor, m: int,
              timesteps: Sequence[int], div: torch.Tensor | None,
              div_moving: torch.Tensor | None, has_reference: bool,
              end_index: int | None = None, runs: int = 1) -> dict[str, float]:
    """Per-task scalar metrics from per-frame SSIM/PSNR (B, S, n), synthesized frames only.

    ``timesteps`` are 1-based (``ssim@t`` = frame index t − 1; see the module doc). ``runs`` > 1:
    sample r of every input is evaluation run r (r < runs); ``ssim@t_std`` / ``psnr@t_std`` are
    the std over runs of each run's mean (§4: mean ± std over 5 runs).

    ``end/ssim``, ``end/psnr``: the synthesized frame at ``end_index`` (the index of the clip's
    last frame, which point-to-point gives T as the end frame) against the real one — Table D4's
    control-point consistency for point-to-point, and the same frame's score for every other task
    (prediction's is the reference a given end frame must beat). Never a given start frame."""
    n = ssim_v.shape[2]
    out: dict[str, float] = {}
    if has_reference and n > m:
        for t in scored_timesteps(timesteps, m, n):
            i = t - 1
            out[f"ssim@{t}"] = float(ssim_v[:, :, i].mean())
            out[f"psnr@{t}"] = float(psnr_v[:, :, i].mean())
            out[f"best/ssim@{t}"] = float(ssim_v[:, :, i].max(dim=1).values.mean())
            if runs > 1:
                out[f"ssim@{t}_std"] = float(ssim_v[:, :runs, i].mean(0).std(unbiased=False))
                out[f"psnr@{t}_std"] = float(psnr_v[:, :runs, i].mean(0).std(unbiased=False))
        out["ssim"] = float(ssim_v[:, :, m:].mean())
        out["psnr"] = float(psnr_v[:, :, m:].mean())
        out["best/ssim"] = float(ssim_v[:, :, m:].mean(2).max(dim=1).values.mean())
        if end_index is not None and m <= end_index < n:
            out["end/ssim"] = float(ssim_v[:, :, end_index].mean())
            out["end/psnr"] = float(psnr_v[:, :, end_index].mean())
    if div is not None and not torch.isnan(div).all():
        out["div"] = float(div.mean())
    if div_moving is not None and not torch.isnan(div_moving).all():
        out["div_moving"] = float(div_moving.mean())
    return out


def per_timestep(ssim_v: torch.Tensor, psnr_v: torch.Tensor, m: int) -> list[dict[str, float]]:
    """Rows (t, ssim, psnr) of the mean over inputs and samples for every synthesized frame, t
    1-based as ``ssim@t`` (t = m + 1 … n; dvc plots)."""
    return [{"t": i + 1, "ssim": float(ssim_v[:, :, i].mean()),
             "psnr": float(psnr_v[:, :, i].mean())} for i in range(m, ssim_v.shape[2])]


def finite(value: float) -> float | None:
    """JSON-safe float (NaN/inf → None)."""
    return value if math.isfinite(value) else None


def comparison_grid(real: torch.Tensor, fake: torch.Tensor, gap: int = 2) -> np.ndarray:
    """real (B, n, 3, H, W), fake (B, S, n, 3, H, W) → uint8 (n, B·(H+gap), (1+S)·(W+gap), 3):
    per frame t, one row per input: the real clip then its S samples (a GIF of it plays them)."""
    b, s, n, _, h, w = fake.shape
    canvas = np.full((n, b * (h + gap), (1 + s) * (w + gap), 3), 255, np.uint8)
    r, f = to_uint8(real[:, :n]), to_uint8(fake)
    for i in range(b):
        y = i * (h + gap)
        canvas[:, y:y + h, 0:w] = r[i]
        for j in range(s):
            x = (1 + j) * (w + gap)
            canvas[:, y:y + h, x:x + w] = f[i, j]
    return canvas
