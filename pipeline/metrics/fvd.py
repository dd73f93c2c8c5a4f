"""Fréchet video distance (§4 "Metrics", [66] Unterthiner et al. 2018): maths, weights, protocol.

FVD fits a Gaussian to the I3D features of real and of synthetic clips and reports the Fréchet
(2-Wasserstein) distance between the two:

    d²((μ_r, Σ_r), (μ_g, Σ_g)) = ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2})

* ``frechet_distance`` evaluates it in float64 with a symmetric, stable square root:
  tr (Σ_r Σ_g)^{1/2} = tr (A Σ_g A)^{1/2} with A = Σ_r^{1/2}; both roots come from ``eigh`` of
  symmetric positive semi-definite matrices, tiny negative eigenvalues (round-off of rank-deficient
  covariances, e.g. fewer clips than 400 features) clamped to 0.
* ``gaussian_stats``: mean and unbiased covariance of (N, D) features.
* ``preprocess``: the protocol's input — every frame resized bilinearly to 224 × 224 (directly,
  no crop, as the TF original), RGB, values in [-1, 1], laid out (N, 3, T, 224, 224).
* ``load_i3d``: the Kinetics-400 I3D (``ccvs_models.i3d``) from a local state dict, the torch hub
  cache or the public URL; without any, a randomly initialised I3D (fixed seed) that is flagged:
  ``info.pretrained`` is False and the metric is named ``fvd_untrained_i3d``, never ``fvd``
  (DESIGN.md, "Offline weights").
* ``compute_fvd``: one call for two sets of clips — ``frames`` frames per clip after
  ``skip_frames`` (to leave out conditioning frames), the 400 logits as features, ``repeats``
  values on random subsets → mean ± std, and a dict that says which weights and which protocol
  produced the number. The ``evaluate`` stage follows the paper instead: R evaluation runs of
  fresh samples, the real statistics cached (``pipeline.metrics.fvd_runs``).

Protocol facts that change the number (DESIGN.md): 16 frames, 224 bilinear, RGB, [-1, 1], whether
conditioning frames are counted, the number of clips (CCVS: 5 × 256 on BAIR).

Use::

    model, info = load_i3d(params.fvd.weights or None, params.fvd.url or None, device=device)
    result = compute_fvd(real, fake, model, info, batch_size=8, frames=16, skip_frames=0)
    metrics[result["metric"]] = result["mean"]   # "fvd" only with real weights
    logger.set_tag("fvd_weights", info.message)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from ccvs_models.i3d import I3DConfig, InceptionI3d
from pipeline.weights import WeightsError, is_offline, read_weights_file, sha256_file

log = logging.getLogger(__name__)

# VideoGPT's PyTorch conversion of TF-Hub's deepmind/i3d-kinetics-400 (a state dict for
# ``InceptionI3d(400, in_channels=3)``, ~49 MB), the checkpoint the VideoGPT / TATS / MCVD FVD
# code loads. VideoGPT distributes it through Google Drive (id 1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT),
# which is no direct download; this is a commit-pinned copy of the same file in the
# Open-Sora-Plan v1.0.0 repository on the Hugging Face hub (opensora/eval/fvd/videogpt/).
I3D_URL = (
    "https://huggingface.co/spaces/LanguageBind/Open-Sora-Plan-v1.0.0/resolve/"
    "810fa8c4bdb3a4c8eec9bd57375c29bde6fb46de/opensora/eval/fvd/videogpt/i3d_pretrained_400.pt"
)
I3D_FILE = "i3d_pretrained_400.pt"  # name in the torch hub cache ($TORCH_HOME/hub/checkpoints/)
RANDOM_INIT = "random-init"
RANDOM_SEED = 0  # seed of the stand-in I3D, so untrained values are comparable between runs
FVD_NAME = "fvd"
UNTRAINED_NAME = "fvd_untrained_i3d"


# --------------------------------------------------------------------------------------------
# Fréchet distance


def _as_f64(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D) with N ≥ 2."""
    f = _as_f64(features)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats: expected features (N >= 2, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric PSD matrix via eigh; eigenvalues < 0 (round-off) → 0."""
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: Any, sigma2: Any) -> float:
    """tr (Σ1 Σ2)^{1/2} = tr (A Σ2 A)^{1/2}, A = Σ1^{1/2} (symmetric form, float64)."""
    s1, s2 = _as_f64(sigma1), _as_f64(sigma2)
    a = _psd_sqrt(s1)
    w = np.linalg.eigvalsh(_sym(a @ s2 @ a))
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def _sym(m: np.ndarray) -> np.ndarray:
    return (m + m.T) / 2


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^{1/2}) in float64 (≥ 0; round-off clamped to 0).

    mu (D,), sigma (D, D) symmetric PSD (numpy arrays or tensors).
    """
    m1, m2, s1, s2 = _as_f64(mu1), _as_f64(mu2), _as_f64(sigma1), _as_f64(sigma2)
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes mu1 {m1.shape}, sigma1 {s1.shape}, mu2 {m2.shape}, "
            f"sigma2 {s2.shape} do not match (D,), (D, D)"
        )
    value = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                  - 2.0 * trace_sqrt_product(s1, s2))
    return max(value, 0.0)


def features_distance(real: Any, fake: Any) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (N, D) and (M, D)."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


# --------------------------------------------------------------------------------------------
# Preprocessing


def preprocess(videos: Any, resolution: int = 224) -> torch.Tensor:
    """videos (N, T, 3, H, W), float in [-1, 1] or uint8 in [0, 255] → (N, 3, T, R, R) float32.

    Each frame is resized bilinearly (no antialiasing, half-pixel centres, as TF's
    ``resize_bilinear`` in the FVD original) to R × R = ``resolution`` (protocol: 224) without
    cropping, then clamped to [-1, 1]. Channels must be RGB.
    """
    x = videos if isinstance(videos, torch.Tensor) else torch.from_numpy(np.asarray(videos))
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(f"FVD preprocess: expected videos (N, T, 3, H, W), got {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float() / 127.5 - 1.0
    elif x.is_floating_point():
        x = x.float()
    else:
        raise ValueError(f"FVD preprocess: expected uint8 or float videos, got {x.dtype}")
    n, t, c, h, w = x.shape
    frames = x.reshape(n * t, c, h, w)
    if (h, w) != (resolution, resolution):
        frames = F.interpolate(frames, size=(resolution, resolution), mode="bilinear",
                               align_corners=False, antialias=False)
    frames = frames.clamp(-1.0, 1.0)
    return frames.reshape(n, t, c, resolution, resolution).permute(0, 2, 1, 3, 4).contiguous()


# --------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class I3DWeightsInfo:
    """Which I3D weights produced a number (goes into the metrics JSON and MLflow tags)."""

    pretrained: bool  # True only for real Kinetics-400 weights
    source: Literal["path", "cache", "url", "random"]  # where they came from
    location: str  # the file path or URL read, or "random-init"
    ident: str  # "sha256:<hex>" of the file read, "url:<url>", or "seed:<n>" for random init
    message: str  # one line for the log / an MLflow tag


class LoadedI3D(NamedTuple):
    model: InceptionI3d  # eval mode, requires_grad False
    info: I3DWeightsInfo


def fvd_metric_name(info: I3DWeightsInfo) -> str:
    """``fvd`` with real Kinetics-400 weights, otherwise ``fvd_untrained_i3d``."""
    return FVD_NAME if info.pretrained else UNTRAINED_NAME


def _state_of(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded state dict (unwrapping ``{"state_dict": ...}`` and ``module.``)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{where}: not an I3D state dict (got {type(obj).__name__})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def build_i3d(state: dict[str, torch.Tensor], where: str,
              config: I3DConfig | None = None) -> InceptionI3d:
    """An ``InceptionI3d`` with ``state`` loaded strictly; a one-line ``WeightsError`` naming
    ``where`` on missing / unexpected keys or a wrong shape (``num_batches_tracked`` optional)."""
    model = InceptionI3d(config)
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"{where}: not a Kinetics I3D state dict in the pytorch-i3d layout: "
            f"{len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}"
        )
    for key, ref in expected.items():
        if key not in state:
            continue
        got = state[key]
        if not isinstance(got, torch.Tensor) or got.shape != ref.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise WeightsError(f"{where}: {key} has shape {shape}, I3D expects {tuple(ref.shape)}")
    full = {k: (state[k] if k in state else expected[k]) for k in expected}
    full = {k: (v.float() if v.is_floating_point() else v) for k, v in full.items()}
    model.load_state_dict(full, strict=True)
    return model


def _load_file(path: Path, config: I3DConfig | None) -> InceptionI3d:
    obj = read_weights_file(path, "I3D weights", "; a TorchScript file (i3d_torchscript.pt) is "
                            "not supported, use a state dict")
    return build_i3d(_state_of(obj, str(path)), str(path), config)


def random_i3d(config: I3DConfig | None = None, seed: int = RANDOM_SEED) -> InceptionI3d:
    """A randomly initialised I3D, the same for a given seed, without touching the global RNG.

    He-normal convolutions (ReLU gain) keep activations at a usable scale through the eval-mode
    batch norms (running mean 0, variance 1), so the stand-in features are not degenerate.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InceptionI3d(config)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv3d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
    return model


def _ready(model: InceptionI3d, device: torch.device | str | None) -> InceptionI3d:
    model = model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model


def load_i3d(
    path: str | os.PathLike | None = None,
    url: str | None = None,
    *,
    offline: bool | None = None,
    device: torch.device | str | None = None,
    config: I3DConfig | None = None,
) -> LoadedI3D:
    """The Kinetics-400 I3D for FVD and where its weights came from; never fails for lack of them.

    Order: ``path`` (a local state dict; "" or None = none) → the torch hub cache
    (``<hub dir>/checkpoints/<file name of url>``) → ``url`` (default ``I3D_URL``) unless offline
    (``offline`` or ``CCVS_OFFLINE=1``) → a random-init I3D (seed ``RANDOM_SEED``) with
    ``info.pretrained=False`` and a warning in the log. A file that exists but is unreadable or
    holds another network raises ``WeightsError`` naming the file (one line).
    """
    url = url or I3D_URL
    reasons: list[str] = []

    def found(model: InceptionI3d, source: Literal["path", "cache", "url"], location: str,
              ident: str, what: str) -> LoadedI3D:
        msg = f"Kinetics-400 I3D weights {what} ({ident[:19]}…)"
        log.info(msg)
        info = I3DWeightsInfo(True, source, location, ident, msg)
        return LoadedI3D(_ready(model, device), info)

    if path:
        file = Path(path)
        if file.is_file():
            return found(_load_file(file, config), "path", str(file),
                         f"sha256:{sha256_file(file)}", f"from {file}")
        reasons.append(f"{file} not found")

    name = os.path.basename(urlparse(url).path) or I3D_FILE
    cached = Path(torch.hub.get_dir()) / "checkpoints" / name
    if cached.is_file():
        return found(_load_file(cached, config), "cache", str(cached),
                     f"sha256:{sha256_file(cached)}", f"from the torch hub cache {cached}")

    if is_offline(offline):
        reasons.append(f"offline, no download of {url}")
    else:
        try:
            obj = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=False, file_name=name,
                weights_only=True,
            )
        except Exception as err:  # noqa: BLE001 - network, HTTP, unpickling: "not available"
            detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            reasons.append(f"download of {url} failed ({type(err).__name__}: {detail})")
        else:
            model = build_i3d(_state_of(obj, url), url, config)
            ident = f"sha256:{sha256_file(cached)}" if cached.is_file() else f"url:{url}"
            return found(model, "url", url, ident, f"downloaded from {url}")

    msg = (f"Kinetics-400 I3D weights unavailable ({'; '.join(reasons)}): using a random-init "
           f"I3D (seed {RANDOM_SEED}); the metric is reported as '{UNTRAINED_NAME}', not FVD")
    log.warning(msg)
    info = I3DWeightsInfo(False, "random", RANDOM_INIT, f"seed:{RANDOM_SEED}", msg)
    return LoadedI3D(_ready(random_i3d(config), device), info)


# --------------------------------------------------------------------------------------------
# Protocol


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def i3d_features(
    model: torch.nn.Module,
    videos: Any,
    batch_size: int = 8,
    *,
    resolution: int = 224,
    desc: str = "I3D features",
) -> np.ndarray:
    """The I3D logits (N, num_classes) float64 of videos (N, T, 3, H, W) (see ``preprocess``).

    Batches are preprocessed one at a time (a 224² float copy of all clips would not fit) and run
    on the model's device; a tqdm bar is shown when there are more than 4 batches.
    """
    from tqdm.auto import tqdm

    n = len(videos)
    if n == 0:
        raise ValueError("i3d_features: no videos")
    device = _device_of(model)
    starts = range(0, n, batch_size)
    out = []
    for i in tqdm(starts, desc=desc, disable=len(starts) <= 4, leave=False):
        batch = preprocess(videos[i:i + batch_size], resolution).to(device)
        out.append(model(batch).logits.double().cpu())
    return torch.cat(out).numpy()


def _clip(videos: Any, frames: int | None, skip_frames: int, what: str) -> Any:
    t = videos.shape[1]
    stop = t if frames is None else skip_frames + frames
    if skip_frames < 0 or stop > t or stop <= skip_frames:
        raise ValueError(
            f"compute_fvd: {what} videos have {t} frames, cannot take frames "
            f"{skip_frames}..{stop - 1} (skip_frames={skip_frames}, frames={frames})"
        )
    return videos[:, skip_frames:stop]


def compute_fvd(
    real: Any,
    fake: Any,
    model: torch.nn.Module,
    info: I3DWeightsInfo,
    batch_size: int = 8,
    frames: int | None = 16,
    skip_frames: int = 0,
    repeats: int = 1,
    seed: int = 0,
    *,
    subset_size: int | None = None,
    resolution: int = 224,
    real_features: np.ndarray | None = None,
) -> dict[str, Any]:
    """FVD [66] between real (N, T, 3, H, W) and fake (M, T', 3, H, W) videos ([-1, 1] or uint8).

    Clips are frames ``skip_frames … skip_frames + frames − 1`` of each video (``frames=None``: all
    after ``skip_frames``; set ``skip_frames`` to the number of given frames to leave conditioning
    frames out). Features are extracted once; with ``repeats`` > 1 each repeat draws independent
    random subsets (without replacement, ``seed``) of ``subset_size`` clips (default: half of each
    set) from the real and the fake sets. Returns a JSON-ready dict::

        metric          "fvd" or "fvd_untrained_i3d" (``fvd_metric_name(info)``)
        mean, std       over repeats (population std, 0.0 for one repeat); values: one per repeat
        pretrained      bool; weights: the path / URL read or "random-init"; weights_ident
        num_real, num_fake, subset_size, repeats, frames, skip_frames,
        conditioning_frames_counted (skip_frames == 0), resolution

    ``real_features``: the real clips' I3D features from an earlier call (``i3d_features`` of the
    same clips), so several fake sets are scored against one real set without re-extracting it.
    """
    if repeats < 1:
        raise ValueError(f"compute_fvd: repeats must be >= 1, got {repeats}")
    real_clips = _clip(real, frames, skip_frames, "real")
    fake_clips = _clip(fake, frames, skip_frames, "fake")
    n_real, n_fake = len(real_clips), len(fake_clips)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"compute_fvd: need at least 2 real and 2 fake videos, got "
                         f"{n_real} and {n_fake}")
    if real_features is not None and len(real_features) != n_real:
        raise ValueError(f"compute_fvd: {len(real_features)} real features for {n_real} videos")
    f_real = (real_features if real_features is not None else
              i3d_features(model, real_clips, batch_size, resolution=resolution, desc="I3D real"))
    f_fake = i3d_features(model, fake_clips, batch_size, resolution=resolution, desc="I3D fake")

    if repeats == 1 and subset_size is None:
        values = [features_distance(f_real, f_fake)]
        size = None
    else:
        size = subset_size if subset_size is not None else min(n_real, n_fake) // 2
        if not 2 <= size <= min(n_real, n_fake):
            raise ValueError(f"compute_fvd: subset_size {size} must be in 2..{min(n_real, n_fake)}")
        rng = np.random.default_rng(seed)
        values = [
            features_distance(f_real[rng.choice(n_real, size, replace=False)],
                              f_fake[rng.choice(n_fake, size, replace=False)])
            for _ in range(repeats)
        ]
    return {
        "metric": fvd_metric_name(info),
        "mean": float(np.mean(values)),
        "std": float(np.std(values)) if len(values) > 1 else 0.0,
        "values": [float(v) for v in values],
        "pretrained": bool(info.pretrained),
        "weights": info.location,
        "weights_ident": info.ident,
        "num_real": n_real,
        "num_fake": n_fake,
        "subset_size": size,
        "repeats": repeats,
        "frames": real_clips.shape[1],
        "skip_frames": skip_frames,
        "conditioning_frames_counted": skip_frames == 0,
        "resolution": resolution,
    }


__all__ = [
    "FVD_NAME",
    "I3D_FILE",
    "I3D_URL",
    "I3DWeightsInfo",
    "LoadedI3D",
    "RANDOM_INIT",
    "UNTRAINED_NAME",
    "build_i3d",
    "compute_fvd",
    "features_distance",
    "frechet_distance",
    "fvd_metric_name",
    "gaussian_stats",
    "i3d_features",
    "load_i3d",
    "preprocess",
    "random_i3d",
    "trace_sqrt_product",
]
