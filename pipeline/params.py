"""Typed parameters: ``params.yaml`` → frozen dataclasses.

Every section of ``params.yaml`` maps to one frozen dataclass below. Loading is strict:
an unknown key or a missing key is an error that names the key with its full dotted path
(``prepare.clip_lenght: unknown key (did you mean 'clip_length'?)``), so a typo never
silently falls back to a default.

Stages receive the one section they read (DVC tracks exactly those keys, see ``dvc.yaml``).
Model hyper-parameters live in ``ccvs_models`` config dataclasses; a stage section nests
them (``autoencoder.model``) and this loader builds them with the same strictness.

Written once: the ``training`` section holds the ``loop`` keys every training stage shares
(device, seed, precision, checkpoints kept); a stage's ``loop`` block gives the rest and may
override any of them. A config field whose metadata says ``from_data`` (the discriminators'
input resolution) is set by the stage from its data and is not a param.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from ccvs_models.augment import AugmentConfig
from ccvs_models.autoencoder import AutoencoderConfig
from ccvs_models.discriminators import DiscriminatorConfig
from ccvs_models.perceptual import VGGConfig
from ccvs_models.position import PositionEstimatorConfig
from ccvs_models.vq_autoencoder import VQAutoencoderConfig
from pipeline.data.audio_features import AudioFeatureConfig
from pipeline.engine.config import EngineParams
from pipeline.training.config import LoopConfig
from pipeline.training.transformer import Conditioning, TransformerArch
from pipeline.errors import UserError

T = TypeVar("T")


class ParamsError(UserError, ValueError):
    """A problem in params.yaml, with the dotted key it concerns."""


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class TrackingParams:
    """Where runs are logged."""

    uri: str  # MLflow tracking URI; the MLFLOW_TRACKING_URI env var overrides it
    experiment: str  # MLflow experiment name


@dataclasses.dataclass(frozen=True)
class TrainingDefaults:
    """``loop`` keys shared by every training stage (a stage's ``loop`` block may override them)."""

    keep_checkpoints: int  # newest checkpoints kept per stage
    bf16: bool  # bf16 autocast of the training steps
    device: Literal["cpu", "cuda", "auto"]  # auto: CUDA when available
    seed: int  # global RNG seed of every training stage
    shuffle_block: int  # samples per shuffle block of the training shard stream (0: shard order)
    data_workers: int  # DataLoader processes per rank reading the shards (0: the training process)


TRAINING_STAGES = ("sound_vq", "layout_vq", "autoencoder", "positions", "transformer")


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """The procedurally rendered robot-pushing world (the ``demo_data`` stage)."""

    seed: int  # one seed → one byte-identical world
    num_videos: int  # videos rendered in all
    test_fraction: float  # share of videos in the test split
    val_fraction: float  # share of videos in the val split
    resolution: int  # frames are resolution × resolution
    fps: int  # frames per second of the mp4
    num_frames: int  # frames per video
    min_objects: int  # objects per video are drawn in [min_objects, max_objects]
    max_objects: int
    audio_rate: int  # sample rate of the AAC track
    annotated_frames: int  # how many (video, frame) gripper positions annotations.csv gives


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Which videos ``prepare`` reads."""

    source: Literal["demo", "folder", "manifest", "bair", "kinetics600", "ucf101",
                    "audioset_drums", "cityscapes", "weizmann"]
    # demo: the demo_data stage's output; folder: a glob of video files (label = parent folder
    # name, split drawn by hash); manifest: a CSV with columns path,label,split; the others: the
    # paper's datasets in their released layout (pipeline/data/datasets/, README "Datasets").
    path: str
    annotations: str  # optional CSV video,frame,x,y of annotated gripper positions ("" = none)
    val_fraction: float  # folder source: share of videos hashed into val
    test_fraction: float  # folder source: share of videos hashed into test
    fold: int  # ucf101: official split 1-3; weizmann: held-out subject 1-9 (sorted names)


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    """Decode-and-shard (the ``prepare`` stage)."""

    resolution: int  # output frames are resolution × resolution (resize short side, center crop)
    fps: float  # every video is resampled to this frame rate (the nearest frame in time; VFR too)
    clip_length: int  # T, frames per clip
    clip_stride: int  # frames between the starts of two consecutive clips of a video
    frame_step: int  # keep every frame_step-th frame (temporal subsampling)
    audio: bool  # decode the audio track
    audio_rate: int  # audio is resampled to this rate, mono
    missing_audio: Literal["reject", "silence"]  # a video without audio when audio is requested
    shard_max_bytes: int  # a shard is closed once it holds this many bytes
    workers: int  # processes decoding files in parallel
    decoder: Literal["auto", "decord", "av"]  # auto: decord, PyAV where decord is missing/fails
    shards: str = ""  # where the shards go: "" = the output folder; an fsspec URL (s3://bucket/
    # clips, gs://..., file:///...) = object storage, the output folder then holds shards.json


@dataclasses.dataclass(frozen=True)
class SoundVQParams:
    """The sound VQ autoencoder over per-frame STFT patches (``sound_vq`` stage, App. A)."""

    features: AudioFeatureConfig  # audio → (T, 1, 64, 16) patches (pipeline/data/audio_features.py)
    model: VQAutoencoderConfig  # E/Q/D; in/out_channels 0 = 1 (one patch channel)
    batch_size: int  # patches per step
    lr: float  # Adam learning rate
    loss: Literal["l1", "mse"]  # reconstruction loss on the [-1, 1] patches
    q_weight: float  # λ_q, weight of L_q (Eq. (2)/(3))
    dead_code_every: int  # re-seed codes unused over this many steps (0: never)
    griffin_lim_iters: int  # Griffin-Lim iterations for the listening artifact
    loop: LoopConfig  # steps, logging, checkpoints, EMA, device (pipeline/training/loop.py)


@dataclasses.dataclass(frozen=True)
class LayoutVQParams:
    """The layout VQ autoencoder over one-hot layout maps (``layout_vq`` stage, App. E)."""

    model: VQAutoencoderConfig  # E/Q/D; in/out_channels = number of classes, 0 = from the data
    batch_size: int  # layout frames per step
    lr: float  # Adam learning rate
    q_weight: float  # λ_q, weight of L_q (Eq. (2)/(3))
    dead_code_every: int  # re-seed codes unused over this many steps (0: never)
    loop: LoopConfig  # steps, logging, checkpoints, EMA, device (pipeline/training/loop.py)


@dataclasses.dataclass(frozen=True)
class AutoencoderParams:
    """E, Q, F, D and their training (the ``autoencoder`` stage; §3.2, App. A, C, D, F, Table 1).

    The ``use_*`` switches and ``self_supervision`` are Table 1's columns; its "F" / "Ctxt."
    columns are ``model.context_frames`` (0 = no F). See ``pipeline/training/autoencoder/task.py``.
    """

    model: AutoencoderConfig  # E/Q/F/D sizes; context_frames = c (0: no F at all)
    augment: AugmentConfig  # App. F augmentations A, blur B, occlusion o_c of the context
    image_disc: DiscriminatorConfig  # Δi (resolution = the frames' size)
    temporal_disc: DiscriminatorConfig  # Δt over video_frames consecutive frames
    vgg: VGGConfig  # the VGG of Eq. (4) and the layers it compares
    vgg_weights: str  # local torchvision VGG state dict ("" = torch hub cache, then vgg_url)
    vgg_url: str  # public weights URL (used only with a network and CCVS_OFFLINE unset)
    use_rgb: bool  # L1 RGB term of Eq. (4) (Table 1 "RGB")
    use_vgg: bool  # VGG term of Eq. (4) (Table 1 "VGG"); dropped, with a tag, without weights
    use_image_disc: bool  # Δi with Eq. (5)/(6) (Table 1 "Δi")
    use_temporal_disc: bool  # Δt on the video steps' clips (Table 1 "Δt")
    self_supervision: bool  # augmented-view context + L_c, Eq. (7) (Table 1 "Sup.")
    lambda_q: float  # λ_q of Eq. (2) (paper: 1)
    lambda_r: float  # λ_r of Eq. (2) (paper: 10)
    lambda_a: float  # λ_a of Eq. (2) (paper: 1)
    lambda_c: float  # λ_c of Eq. (2) (paper: 1)
    lambda_free: float  # × λ_r: L_r of D(z_q) decoded without context on image steps with F (0:
    # off; not in the paper: keeps the tokens informative so F cannot make them unnecessary)
    r1_gamma: float  # R1 penalty weight γ on Δi/Δt (0: off; not in the paper)
    lr: float  # Adam learning rate of E, Q, F, D (paper: 0.02, see ae_training)
    disc_lr: float  # Adam learning rate of Δi, Δt
    betas: tuple[float, float]  # Adam (β1, β2) of both optimizers
    batch_size: int  # frames per image step
    video_batch_size: int  # clips per video step (App. A recursive decoding)
    video_frames: int  # frames per clip of a video step (the first one is the real context)
    video_every: int  # every video_every-th step is a video step (0: image steps only)
    val_clips: int  # validation clips for the reconstruction metrics (Table 1 protocol)
    val_frames: int  # frames per validation clip (0: the whole clip)
    gif_clips: int  # clips in the real | reconstructed GIF
    dead_code_every: int  # re-seed codes unused over this many steps with encoder outputs (0: never;
    # not in the paper: keeps the codebook from collapsing while F can copy the context)
    loop: LoopConfig  # steps, logging, evaluation, checkpoints, EMA, bf16, device
    codebook_ema: float = 0.0  # γ: codebook as EMA of assigned E outputs, no codebook term (0: Eq. (3))
    context_warmup: int = 0  # first steps decoded without context, F bypassed (0: none; ours)
    video_warmup: int = 0  # video steps first decode this many frames without gradients, so the
    # graded frames' contexts are W recursions deep, as late in a clip at inference (0: none; ours)
    lambda_fm: float = 0.0  # Δi feature matching ‖Δi_k(x̂) − Δi_k(x)‖₁ on every graded frame, a
    # learned perceptual term where Eq. (4)'s VGG has no weights (0: off; ours, pix2pixHD's)

    def __post_init__(self) -> None:
        for name in ("batch_size", "video_batch_size", "val_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("video_every", "val_frames", "gif_clips", "dead_code_every", "video_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.video_frames < 2:
            raise ValueError(f"video_frames must be >= 2 (a real first frame + decoded ones), "
                             f"got {self.video_frames}")
        if self.val_frames == 1:
            raise ValueError("val_frames must be 0 (whole clip) or >= 2")
        for name in ("lambda_q", "lambda_r", "lambda_a", "lambda_c", "lambda_free", "r1_gamma",
                     "lambda_fm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or self.disc_lr <= 0 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"lr, disc_lr must be > 0 and betas in [0, 1), got "
                             f"{self.lr}, {self.disc_lr}, {self.betas}")


@dataclasses.dataclass(frozen=True)
class PositionsParams:
    """The position estimator (the ``positions`` stage; §4, App. A "Position estimator")."""

    model: PositionEstimatorConfig  # the estimator's sizes and head (ccvs_models/position.py)
    loop: LoopConfig  # steps, checkpoints, EMA, device, seed (pipeline/training/loop.py)
    batch_size: int  # annotated frames per step
    lr: float  # Adam peak learning rate (linear warm-up, then cosine decay to 0)
    warmup_steps: int  # steps of linear learning-rate warm-up
    holdout_fraction: float  # share of annotated frames (whole videos) kept out to report the error
    flip: bool  # augmentation: random horizontal flips (the target's x flips too)
    color_jitter: float  # augmentation: per-channel gain in 1 ± j and offset in ± j (0 = off)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ValueError("batch_size must be >= 1, lr > 0 and warmup_steps >= 0")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")
        if not 0 <= self.color_jitter < 1:
            raise ValueError(f"color_jitter must be in [0, 1), got {self.color_jitter}")


@dataclasses.dataclass(frozen=True)
class TokenizeParams:
    """Clips → token shards (the ``tokenize`` stage; §3.3, App. E; stages/tokenize.py)."""

    state_bins: int  # B, bins per coordinate of the (x, y) state (paper setup: 128)
    state: bool  # state tokens from data/positions (when present)
    audio: bool  # audio tokens from models/sound_vq.pt (when available)
    layout: bool  # layout tokens from models/layout_vq.pt (when available)
    batch_size: int  # frames per E/Q (and VQ) forward pass
    shard_max_bytes: int  # a token shard is closed once it holds this many bytes
    device: Literal["cpu", "cuda", "auto"]  # where E, Q and the VQs run
    shards: str = ""  # where the token shards go: "" = the output folder; an fsspec URL = object
    # storage (the output folder then holds shards.json, pipeline/data/shard_index.py)

    def __post_init__(self) -> None:
        if self.state_bins < 1 or self.batch_size < 1 or self.shard_max_bytes < 1:
            raise ValueError("state_bins, batch_size and shard_max_bytes must be >= 1")


@dataclasses.dataclass(frozen=True)
class TransformerParams:
    """The controllable transformer T and its training (``transformer`` stage; §3.3, App. A, E).

    The sequence fields of ``TransformerConfig`` (codebook sizes, tokens per frame, classes) come
    from ``data/tokens/vocab.json``; ``model`` holds the rest (pipeline/training/transformer.py).
    """

    model: TransformerArch  # N, layers, heads, width, positions (Table 2)
    conditioning: Conditioning  # which annotations T reads, and their conditioning dropout
    batch_size: int  # sequences per step
    lr: float  # AdamW peak learning rate
    min_lr: float  # learning rate at the end of the cosine decay
    warmup_steps: int  # steps of linear warm-up
    weight_decay: float  # AdamW weight decay (matrices and embeddings only)
    betas: tuple[float, float]  # AdamW (β1, β2)
    val_clips: int  # validation clips for the perplexity (0: all)
    loop: LoopConfig  # steps, logging, eval, checkpoints, bf16, device (pipeline/training/loop.py)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0 or self.min_lr < 0 or self.warmup_steps < 0:
            raise ValueError("batch_size must be >= 1, lr > 0, min_lr >= 0, warmup_steps >= 0")
        if self.min_lr > self.lr or self.weight_decay < 0 or self.val_clips < 0:
            raise ValueError("min_lr must be <= lr, weight_decay >= 0, val_clips >= 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")


EVALUATE_TASKS = ("reconstruction", "prediction", "prediction_greedy", "point_to_point", "state",
                  "sound", "class", "unconditional")


@dataclasses.dataclass(frozen=True)
class FVDParams:
    """FVD protocol (§4, [66]): I3D features of 16-frame clips at 224×224, Fréchet distance."""

    weights: str  # local Kinetics-400 I3D state dict ("" = the torch hub cache, then url)
    url: str  # public URL of the converted checkpoint (used only with a network)
    frames: int  # frames per clip fed to I3D (protocol: 16)
    videos: int  # inputs scored per task (sample 0 of each; 0 = every input). I3D at 224² costs
    # ~1–3 s per clip on a 2-core CPU, so the demo scores a subset; the paper uses 256 videos
    repeats: int  # R evaluation runs, each scoring a fresh sample of every input → mean ± std
    # (paper: 5; 2 on Kinetics); evaluate draws max(samples, repeats) samples per input
    batch_size: int  # clips per I3D forward pass
    count_conditioning: bool  # the given start frames are part of the clips scored

    def __post_init__(self) -> None:
        if self.frames < 1 or self.repeats < 1 or self.batch_size < 1 or self.videos < 0:
            raise ValueError("frames, repeats and batch_size must be >= 1, videos >= 0")
        if self.videos == 1:
            raise ValueError("videos must be 0 (all) or >= 2 (a covariance needs 2 videos)")


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    """Synthesis on held-out clips and its metrics (``evaluate`` stage; §4, Tables 1–6, Fig. 6)."""

    split: Literal["train", "val", "test"]  # clips evaluated (paper: the test split)
    num_videos: int  # inputs evaluated per task (0 = every clip of the split)
    num_frames: int  # frames per synthetic video, the given ones included (0 = clip length)
    start_frames: int  # m real frames given to every task that starts from real frames (BAIR 1,
    # Kinetics 5, AudioSet-Drums 15); never scored as predictions
    samples: int  # S samples per input (DIV, best-of-S SSIM of Table D4)
    top_k: int  # top-k sampling (§3.1; 1 = greedy)
    temperature: float  # logits / temperature before top-k
    context_frames: int | None  # c frames of context for D (null = the autoencoder's own c)
    timesteps: tuple[int, ...]  # SSIM / PSNR reported at these frames, 1-based as in the paper
    # (t = 1 is the first frame; BAIR: 8 = mid-clip, 15 = one before the last of 16)
    tasks: tuple[str, ...]  # subset of EVALUATE_TASKS, in this order in the report
    batch_size: int  # inputs per synthesis batch (each carries S samples)
    gif_videos: int  # inputs shown per task in the GIF and the PNG grid
    seed: int  # seeds of sample s of input i: seed + i·S + s
    device: Literal["cpu", "cuda", "auto"]  # where T, E, D, F and I3D run
    fvd: FVDParams

    def __post_init__(self) -> None:
        if self.num_videos < 0 or self.num_frames < 0:
            raise ValueError("num_videos and num_frames must be >= 0")
        if self.samples < 1 or self.top_k < 1 or self.batch_size < 1 or self.gif_videos < 0:
            raise ValueError("samples, top_k and batch_size must be >= 1, gif_videos >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.context_frames is not None and not 0 <= self.context_frames <= 16:
            raise ValueError(f"context_frames must be in 0..16 or null, got {self.context_frames}")
        unknown = [t for t in self.tasks if t not in EVALUATE_TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"tasks: unknown {unknown} (known: {list(EVALUATE_TASKS)})"
                             if unknown else "tasks: give at least one")
        if any(t < 1 for t in self.timesteps):
            raise ValueError(f"timesteps are 1-based (t = 1 is the first frame), got "
                             f"{list(self.timesteps)}")
        if self.start_frames < 1:
            raise ValueError(f"start_frames must be >= 1, got {self.start_frames}")
        if self.num_frames and self.start_frames >= self.num_frames:
            raise ValueError(f"start_frames ({self.start_frames}) must be < num_frames "
                             f"({self.num_frames}): nothing would be synthesized")


def section_types() -> dict[str, type]:
    """Every section params.yaml must have, name → dataclass (one place knows the file's shape)."""
    return {
        "tracking": TrackingParams,
        "engine": EngineParams,
        "training": TrainingDefaults,
        "demo": DemoParams,
        "data": DataParams,
        "prepare": PrepareParams,
        "sound_vq": SoundVQParams,
        "layout_vq": LayoutVQParams,
        "autoencoder": AutoencoderParams,
        "positions": PositionsParams,
        "tokenize": TokenizeParams,
        "transformer": TransformerParams,
        "evaluate": EvaluateParams,
    }


# --------------------------------------------------------------------------- strict building


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {_describe(value)}")
        return build(tp, value, where)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ParamsError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ParamsError as err:
                errors.append(str(err))
        raise ParamsError(errors[0] if errors else f"{where}: bad value {_describe(value)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{where}: expected a list, got {_describe(value)}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ParamsError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {_describe(value)}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{where}: expected true/false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{where}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{where}: expected a string, got {_describe(value)}")
        return value
    return value


def build(cls: type[T], raw: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``raw``, failing on unknown or missing keys.

    ``where`` is the dotted prefix used in error messages (``"autoencoder.model"``).
    Every field must be given, even one with a default: params.yaml lists every key, so what
    a run used is written down and DVC tracks it.
    """
    prefix = f"{where}." if where else ""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    from_data = {n for n, f in fields.items() if f.metadata.get("from_data")}
    for key in raw:
        if key in from_data:
            raise ParamsError(f"{prefix}{key}: not a param, set from the data "
                              f"({fields[key].metadata['from_data']}); remove it")
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamsError(f"{prefix}{key}: unknown key{hint}")
    kwargs = {}
    for name, field in fields.items():
        if name in from_data:
            continue
        if name not in raw:
            raise ParamsError(f"{prefix}{name}: missing key")
        kwargs[name] = _coerce(raw[name], hints[name], f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ParamsError(f"{where or cls.__name__}: {err}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_section(name: str, path: str | Path = "params.yaml", cls: type[T] | None = None) -> T:
    """Load one section of ``params.yaml`` into its dataclass (strictly)."""
    raw = read_yaml(path)
    cls = cls or section_types().get(name)
    if cls is None:
        raise ParamsError(f"{name}: no such params section")
    if name not in raw:
        raise ParamsError(f"{name}: missing section in {path}")
    if not isinstance(raw[name], dict):
        raise ParamsError(f"{name}: expected a mapping, got {_describe(raw[name])}")
    return build(cls, with_training_defaults(raw, name), name)


def with_training_defaults(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """Section ``name`` of ``raw`` with the ``training`` keys filled into its ``loop`` block
    (keys the block gives win); other sections unchanged."""
    section = raw[name]
    if name not in TRAINING_STAGES or not isinstance(section.get("loop"), dict):
        return section
    defaults = raw.get("training")
    if not isinstance(defaults, dict):
        raise ParamsError("training: missing section (the loop keys every training stage shares)")
    return {**section, "loop": {**defaults, **section["loop"]}}


def load_all(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Parse every section (used by tests and ``ccvs check``); unknown sections are errors."""
    raw = read_yaml(path)
    types_ = section_types()
    out = {}
    for name, value in raw.items():
        if name == "vars":  # dvc.yaml templating values, not a stage section
            continue
        if name not in types_:
            close = difflib.get_close_matches(str(name), list(types_), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamsError(f"{name}: unknown section{hint}")
        out[name] = build(types_[name], with_training_defaults(raw, name), name) if isinstance(
            value, dict) else _coerce(value, types_[name], name)
    for name in types_:
        if name not in raw:
            raise ParamsError(f"{name}: missing section in {path}")
    return out


def flatten(obj: Any, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"autoencoder.lr": 1e-4, ...}`` from a dataclass or mapping (for MLflow params); ``sep``
    joins the keys (``/`` for metric names)."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}{sep}{key}" if prefix else str(key)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            if isinstance(value, dict):
                out.update(flatten(value, name, sep))
            else:
                out[name] = value
    else:
        out[prefix] = obj
    return out
