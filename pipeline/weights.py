"""Pretrained weights for the perceptual term of Eq. (4): torchvision's ImageNet VGG16 / VGG19.

``load_vgg`` finds the weights, in this order:

1. ``path``: a local state dict file (torchvision's ``vgg16-397923af.pth`` or any state dict with
   the ``features.N.weight`` / ``.bias`` keys; ``classifier.*`` keys may be present or not, a
   ``{"state_dict": ...}`` wrapper and a DDP ``module.`` prefix are accepted);
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file name of url>``), no network needed;
3. the public URL through ``torch.hub.load_state_dict_from_url``, unless offline
   (``offline=True`` or the environment variable ``CCVS_OFFLINE=1``).

Missing weights never raise: the result is ``(None, info)`` with ``info.message`` =
"VGG weights unavailable: <reason>; training without the perceptual term", which the stage logs
once and records as an MLflow tag (DESIGN.md, "Offline weights"). A file that exists but is corrupt
or holds another network raises ``WeightsError`` naming the file and the problem.
Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, Literal, NamedTuple
from urllib.parse import urlparse

import torch

from ccvs_models.perceptual import VGGConfig, VGGFeatures, layer_names
from pipeline.errors import UserError

# torchvision's ImageNet weights (the hash prefix in the file name is checked on download).
VGG_URLS = {
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "vgg19": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
}
OFFLINE_ENV = "CCVS_OFFLINE"


class WeightsError(UserError, ValueError):
    """A weights file that exists but cannot be used (corrupt, or another architecture)."""


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
    source: Literal["path", "cache", "url", "none"]  # where the weights came from
    ident: str  # "sha256:<hex>" of the file read, "" when no weights
    message: str  # one line for the log / an MLflow tag


class LoadedVGG(NamedTuple):
    module: VGGFeatures | None  # frozen VGG in eval mode, or None without weights
    info: WeightsInfo


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else the ``CCVS_OFFLINE`` environment variable (1/true/yes/on)."""
    if offline is not None:
        return offline
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _unavailable(reason: str) -> LoadedVGG:
    msg = f"VGG weights unavailable: {reason}; training without the perceptual term"
    return LoadedVGG(None, WeightsInfo(source="none", ident="", message=msg))


def _features_state(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The ``features.*`` tensors of a loaded object (unwrapping common containers)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WeightsError(f"{where}: not a state dict (got {type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    feats = {k: v for k, v in state.items() if k.startswith("features.")}
    if not feats:
        sample = ", ".join(list(state)[:3]) or "none"
        raise WeightsError(
            f"{where}: no 'features.*' keys, not a torchvision VGG state dict (keys: {sample}, ...)"
        )
    return feats


def build_vgg(state: dict[str, torch.Tensor], cfg: VGGConfig, where: str) -> VGGFeatures:
    """A ``VGGFeatures`` with ``state`` loaded, strictly on the ``features.*`` keys."""
    module = VGGFeatures(cfg)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        other = "vgg19" if cfg.arch == "vgg16" else "vgg16"
        other_keys = 2 * sum(name.startswith("conv") for name in layer_names(other))
        hint = f" (a {other} file? set arch: {other})" if len(state) == other_keys else ""
        raise WeightsError(
            f"{where}: does not match {cfg.arch}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}{hint}"
        )
    for key, value in expected.items():
        if not isinstance(state[key], torch.Tensor) or state[key].shape != value.shape:
            got = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else state[key]
            raise WeightsError(
                f"{where}: {key} has shape {got}, {cfg.arch} expects {tuple(value.shape)}"
            )
    module.load_state_dict({k: state[k].float() for k in expected}, strict=True)
    return module


def read_weights_file(path: Path, what: str, hint: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one ``WeightsError``
    line naming the file, what it should hold and ``hint``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise WeightsError(
            f"{path}: cannot read {what} ({type(err).__name__}: {detail}){hint}"
        ) from None


def _load_file(path: Path, cfg: VGGConfig) -> VGGFeatures:
    obj = read_weights_file(path, "VGG weights")
    return build_vgg(_features_state(obj, str(path)), cfg, str(path))


def load_vgg(
    path: str | os.PathLike | None = None,
    url: str | None = None,
    arch: Literal["vgg16", "vgg19"] = "vgg16",
    *,
    layers: tuple[str, ...] | None = None,
    offline: bool | None = None,
    device: torch.device | str | None = None,
) -> LoadedVGG:
    """Load ImageNet VGG weights for Eq. (4); ``(None, info)`` when there are none.

    path: local state dict ("" or None = no local file); url: download address (default:
    torchvision's for ``arch``); layers: activations compared (default ``VGGConfig``'s);
    offline: forbid the download (default: the ``CCVS_OFFLINE`` environment variable).
    Raises WeightsError only for a file that exists but is unusable.
    """
    cfg = VGGConfig(arch=arch) if layers is None else VGGConfig(arch=arch, layers=tuple(layers))
    url = url or VGG_URLS[arch]
    reasons = []

    if path:
        file = Path(path)
        if file.is_file():
            module = _load_file(file, cfg).to(device)
            ident = f"sha256:{sha256_file(file)}"
            msg = f"{arch} ImageNet weights from {file} ({ident[:19]}…)"
            return LoadedVGG(module, WeightsInfo(source="path", ident=ident, message=msg))
        reasons.append(f"{file} not found")

    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cached.is_file():
        module = _load_file(cached, cfg).to(device)
        ident = f"sha256:{sha256_file(cached)}"
        msg = f"{arch} ImageNet weights from the torch hub cache {cached} ({ident[:19]}…)"
        return LoadedVGG(module, WeightsInfo(source="cache", ident=ident, message=msg))

    if is_offline(offline):
        reasons.append(f"offline ({OFFLINE_ENV}=1), no download of {url}")
        return _unavailable("; ".join(reasons))
    try:
        obj = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as err:  # noqa: BLE001 - network, HTTP, hash: all mean "not available"
        detail = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        reasons.append(f"download of {url} failed ({type(err).__name__}: {detail})")
        return _unavailable("; ".join(reasons))
    module = build_vgg(_features_state(obj, url), cfg, url).to(device)
    ident = f"sha256:{sha256_file(cached)}" if cached.is_file() else f"url:{url}"
    msg = f"{arch} ImageNet weights downloaded from {url}"
    return LoadedVGG(module, WeightsInfo(source="url", ident=ident, message=msg))


__all__ = ["LoadedVGG", "VGG_URLS", "WeightsError", "WeightsInfo", "build_vgg", "is_offline",
           "load_vgg", "sha256_file"]
