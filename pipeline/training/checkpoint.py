"""Checkpoints and model files: atomic writes, ``weights_only`` loads, RNG capture.

Two kinds of file go through here (docs/CONTRACTS.md, "Checkpoints"):

* **Training checkpoints** (``<ckpt_dir>/step-00001000.pt``), written by ``pipeline.training.loop.fit``::

      {"format": 1, "config": {...}, "state": {name: state_dict}, "optimizers": {name: state_dict},
       "ema": {name: state_dict}, "step": int, "rng": {...}, "extra": {...}}

* **Stage output models** (``models/autoencoder.pt``): the (EMA) weights plus the config that built
  them, small, no optimizer::

      save_model("models/autoencoder.pt", dataclasses.asdict(cfg), ema_state, steps=20000)
      config, state, meta = load_model("models/autoencoder.pt")
      model = Autoencoder(AutoencoderConfig(**config)); model.load_state_dict(state)

Every file is written to a temporary name in the same directory, flushed, fsynced and renamed with
``os.replace``, so a run killed mid-write leaves the previous file intact and never a half-written
file under the final name. Every file loads with ``torch.load(weights_only=True)``: payloads may
hold only tensors, numbers, strings, bools, None, lists, tuples and dicts. ``save_*`` checks this
before writing and names the offending key (a numpy array, a dataclass, a ``Path``...) instead of
failing later at load time. Numpy and Python RNG states are therefore stored as tensors and plain
numbers (``rng_state`` / ``set_rng_state``).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pipeline.errors import UserError

FORMAT = 1  # bump when the payload layout changes incompatibly
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
_TMP_MARK = ".tmp-"  # temp files: "<final name>.tmp-<pid>"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint or model file that cannot be written or read; the message names the file."""


# --------------------------------------------------------------------------- plain payloads


def to_plain(config: Any) -> Any:
    """A config as plain data: dataclass → dict (recursively), tuples kept, Paths → str."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return to_plain(dataclasses.asdict(config))
    if isinstance(config, dict):
        return {str(k): to_plain(v) for k, v in config.items()}
    if isinstance(config, (list, tuple)):
        return type(config)(to_plain(v) for v in config)
    if isinstance(config, Path):
        return str(config)
    return config


_SCALARS = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.Size)


def check_plain(obj: Any, where: str = "payload") -> None:
    """Raise ``TypeError`` naming the first value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, (torch.Tensor, *_SCALARS)):
        return
    if isinstance(obj, (dict, collections.OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} ({type(k).__name__}) is not a str or int")
            check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where}: {type(obj).__module__}.{type(obj).__name__} cannot be loaded with "
        "weights_only=True; store tensors, numbers, strings, lists or dicts"
    )


# --------------------------------------------------------------------------- atomic save / load


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same dir, fsync, ``os.replace``)."""
    path = Path(path)
    try:
        check_plain(payload)
    except TypeError as err:
        raise CheckpointError(f"{path}: {err}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves no debris (SIGKILL may: see prune)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a file written by ``save_checkpoint`` with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip/pickle/weights_only errors: one line naming the file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict payload, got {type(payload).__name__}")
    return payload


# --------------------------------------------------------------------------- checkpoint dirs


def checkpoint_path(ckpt_dir: str | Path, step: int) -> Path:
    """``<ckpt_dir>/step-<step:08d>.pt``."""
    return Path(ckpt_dir) / f"step-{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the finished checkpoints in ``ckpt_dir``, oldest first (temps ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for p in ckpt_dir.iterdir():
        m = _STEP_FILE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``ckpt_dir``, or None."""
    found = list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def prune_checkpoints(ckpt_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints (``keep <= 0``: keep all) and stale temps."""
    removed = []
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():  # left by a SIGKILL mid-write
            if _TMP_MARK in p.name and p.name.startswith("step-"):
                p.unlink(missing_ok=True)
                removed.append(p)
    found = list_checkpoints(ckpt_dir)
    if keep > 0:
        for _, p in found[:-keep]:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


# --------------------------------------------------------------------------- stage model files


class LoadedModel(NamedTuple):
    """What ``load_model`` returns (unpacks as ``config, state, meta``)."""

    config: dict[str, Any]  # the config that built the model (dataclasses.asdict)
    state: dict[str, torch.Tensor]  # the model's state dict (EMA weights for trained stages)
    meta: dict[str, Any]  # anything else the stage recorded (step, which weights, ...)


def save_model(path: str | Path, config: Any, state_dict: dict[str, torch.Tensor], **meta: Any) -> Path:
    """Write a stage's output model: config (dataclass or dict) + CPU state dict + meta, atomically."""
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
    payload = {"format": FORMAT, "kind": "model", "config": to_plain(config), "state": state,
               "meta": to_plain(meta)}
    return save_checkpoint(path, payload)


def load_model(path: str | Path, map_location: Any = "cpu") -> LoadedModel:
    """Read a file written by ``save_model``; a clear error if it is anything else."""
    payload = load_checkpoint(path, map_location)
    missing = [k for k in ("config", "state") if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a model file (missing {', '.join(missing)})")
    return LoadedModel(payload["config"], payload["state"], payload.get("meta", {}))


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """The global torch (CPU and CUDA), numpy and Python RNG states as weights_only-safe data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


def seed_all(seed: int) -> None:
    """Seed the global torch, numpy and Python RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
