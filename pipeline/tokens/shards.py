"""Token shards: what ``tokenize`` writes and the ``transformer`` stage (and samplers) read.

Paper §3.3: T reads a video as tokens — h·w frame codes per frame from E and Q (§3.1), with the
annotations turned into tokens too (state, audio, layout per frame; class label and, for
point-to-point synthesis, the end frame per video, App. E). This module is that on-disk form
(docs/CONTRACTS.md "Token sample"):

- ``data/tokens/{split}/tokens-%05d.tar`` (webdataset, written by ``pipeline.data.shards.ShardWriter``:
  size-capped, ``*.tar.tmp`` then renamed, fixed tar headers → byte-identical for the same input);
- a sample, key ``<video_id>_<clip:04d>`` (the clip's key):
  ``frames.npy`` int16 (int32 when q > 32767) T×h×w codebook indices of Q(E(x_t));
  ``end_frame.npy`` h×w, the clip's last frame's codes (App. E point-to-point end frame);
  ``state.npy`` int16 T×2 bins (x, y) — :class:`StateBins`; ``audio.npy`` int16 T×l_a sound-VQ
  codes; ``layout.npy`` int16 T×l_l layout-VQ codes (each only when that annotation exists);
  ``json`` meta: key, video_id, split, label (name), label_id, fps, first_frame, frame_step,
  num_frames, ``missing`` (annotation kinds this clip lacks: their rows hold the null id);
- ``data/tokens/manifest.parquet`` (one row per sample) and ``data/tokens/vocab.json``
  (:func:`read_vocab`: codebook sizes, tokens per frame, which annotations exist, state bins and
  their range, classes).

Null ids: an annotation missing for a clip or a frame (no audio track, no trajectory row, NaN
position) is written as that kind's null id = its vocabulary size, the id
``ccvs_models.transformer.SequenceLayout.null_id`` reserves — the same token conditioning dropout
uses, so T reads "unknown" the way it was trained to.

State bins (paper §4: the gripper's (x, y), 128 bins per coordinate in our default; the paper does
not give B): each coordinate's range [lo, hi] is cut into B equal bins, bin b covers
[lo + b·Δ, lo + (b+1)·Δ), Δ = (hi − lo)/B; values outside are clamped into the first/last bin. The
bin centre lo + (b + ½)Δ is the inverse, within Δ/2 of the value for every value in range. The
range is stored in vocab.json so a sampler maps bins back to pixels. It lives here (not in the
stage) so later stages dequantize without importing a stage.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.atomic import write_json

from pipeline.data.shard_writing import Npy
from pipeline.data.shards import iter_shard, list_shards
from pipeline.errors import UserError

TOKEN_PATTERN = "tokens-%05d.tar"
VOCAB_FILE = "vocab.json"
MANIFEST_FILE = "manifest.parquet"
ANNOTATIONS = ("state", "audio", "layout")  # frame-level annotation arrays, in sequence order


class TokenShardError(UserError, ValueError):
    """A token sample or vocab that does not follow the contract; the message names it."""


# --------------------------------------------------------------------------- state bins


@dataclasses.dataclass(frozen=True)
class StateBins:
    """Uniform quantization of the (x, y) state into ``bins`` bins per coordinate."""

    bins: int  # B, bins per coordinate (ids 0 … B−1; B is the null id)
    x_range: tuple[float, float]  # [lo, hi] of x (pixels)
    y_range: tuple[float, float]  # [lo, hi] of y (pixels)

    def __post_init__(self) -> None:
        if self.bins < 1:
            raise ValueError(f"state bins must be >= 1, got {self.bins}")
        for name, (lo, hi) in (("x_range", self.x_range), ("y_range", self.y_range)):
            if not hi > lo:
                raise ValueError(f"state {name} must have hi > lo, got [{lo}, {hi}]")

    @classmethod
    def for_frame(cls, bins: int, height: int, width: int) -> StateBins:
        """Bins over the whole frame: pixel-centre coordinates span [−½, W − ½] × [−½, H − ½]."""
        return cls(bins, (-0.5, width - 0.5), (-0.5, height - 0.5))

    @property
    def null_id(self) -> int:
        return self.bins

    def quantize(self, xy: np.ndarray) -> np.ndarray:
        """(..., 2) float (x, y) → (..., 2) int16 bins; NaN/Inf → the null id B."""
        xy = np.asarray(xy, dtype=np.float64)
        lo = np.array([self.x_range[0], self.y_range[0]])
        hi = np.array([self.x_range[1], self.y_range[1]])
        finite = np.isfinite(xy)
        scaled = np.where(finite, (xy - lo) / (hi - lo) * self.bins, 0.0)
        b = np.clip(np.floor(scaled), 0, self.bins - 1)
        return np.where(finite, b, self.bins).astype(np.int16)

    def dequantize(self, bins: np.ndarray) -> np.ndarray:
        """(..., 2) bins → (..., 2) float32 bin centres; the null id → NaN."""
        b = np.asarray(bins, dtype=np.float64)
        lo = np.array([self.x_range[0], self.y_range[0]])
        hi = np.array([self.x_range[1], self.y_range[1]])
        out = lo + (b + 0.5) * (hi - lo) / self.bins
        return np.where(b >= self.bins, np.nan, out).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"bins": self.bins, "x_range": list(self.x_range), "y_range": list(self.y_range),
                "null_id": self.null_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StateBins:
        return cls(int(d["bins"]), tuple(d["x_range"]), tuple(d["y_range"]))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- samples


def code_dtype(vocab: int) -> np.dtype:
    """int16 when every id (and the null id = vocab) fits, else int32."""
    return np.dtype(np.int16) if vocab < np.iinfo(np.int16).max else np.dtype(np.int32)


def encode_token_sample(
    key: str,
    frames: np.ndarray,
    meta: dict[str, Any],
    *,
    frame_vocab: int,
    state: np.ndarray | None = None,
    audio: np.ndarray | None = None,
    layout: np.ndarray | None = None,
) -> dict[str, Any]:
    """A clip's tokens as webdataset members (``ShardWriter.write`` takes it).

    frames (T, h, w) ids in ⟦0, q⟦; state (T, 2); audio (T, l_a); layout (T, l_l) (ids up to the
    kind's null id). The end frame (App. E) is frames[−1]. Checked here, so a malformed sample
    never reaches a shard.
    """
    if "." in key or "/" in key:
        raise TokenShardError(f"token sample key {key!r} must not contain '.' or '/'")
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise TokenShardError(f"{key}: frames must be (T, h, w), got {frames.shape}")
    if frames.size and (int(frames.min()) < 0 or int(frames.max()) >= frame_vocab):
        raise TokenShardError(f"{key}: frame codes must be in [0, {frame_vocab}), got "
                              f"[{int(frames.min())}, {int(frames.max())}]")
    dtype = code_dtype(frame_vocab)
    frames = frames.astype(dtype)
    sample: dict[str, Any] = {"__key__": key, "frames.npy": Npy.of(frames),
                              "end_frame.npy": Npy.of(frames[-1])}
    for name, arr in (("state", state), ("audio", audio), ("layout", layout)):
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.ndim != 2 or arr.shape[0] != frames.shape[0]:
            raise TokenShardError(f"{key}: {name} must be (T={frames.shape[0]}, n), got {arr.shape}")
        if arr.size and int(arr.min()) < 0:
            raise TokenShardError(f"{key}: {name} ids must be >= 0")
        sample[f"{name}.npy"] = Npy.of(arr.astype(np.int16 if arr.size == 0 or
                                                  int(arr.max()) < 32767 else np.int32))
    sample["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return sample


def iter_token_samples(root: str | Path, split: str, *, limit: int | None = None
                       ) -> Iterator[dict[str, Any]]:
    """Every token sample of ``split`` in shard order: ``{"key", "frames", "end_frame", ["state"],
    ["audio"], ["layout"], "meta"}`` with numpy arrays (one sample in memory at a time)."""
    count = 0
    root = Path(root)
    folder = root / split
    urls = list_shards(folder) if folder.is_dir() else []
    for url in urls:
        for sample in iter_shard(url):
            if limit is not None and count >= limit:
                return
            if "end_frame" not in sample:
                raise TokenShardError(f"{url}: sample {sample['key']} has no end_frame.npy")
            yield sample
            count += 1


@dataclasses.dataclass
class TokenSplit:
    """One split's token samples stacked (tokens are small: 2 bytes each, so T's training keeps
    them in memory). n clips of T frames; annotation arrays are None when absent from the data."""

    keys: list[str]
    frames: np.ndarray  # (n, T, h, w) int
    end_frame: np.ndarray  # (n, h, w) int
    label: np.ndarray  # (n,) int64, label ids
    state: np.ndarray | None  # (n, T, 2)
    audio: np.ndarray | None  # (n, T, l_a)
    layout: np.ndarray | None  # (n, T, l_l)

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, index: Sequence[int] | np.ndarray) -> TokenSplit:
        idx = np.asarray(index, dtype=np.int64)
        pick = (lambda a: None if a is None else a[idx])  # noqa: E731
        return TokenSplit([self.keys[i] for i in idx], self.frames[idx], self.end_frame[idx],
                          self.label[idx], pick(self.state), pick(self.audio), pick(self.layout))


def load_token_split(root: str | Path, split: str, vocab: dict[str, Any]) -> TokenSplit:
    """Stack every sample of ``split``; a clip whose frame count differs from the split's first
    clip is an error naming it (``prepare`` cuts clips of one length). An unlabelled clip (label
    id −1: a video at the top of a folder source) gets the label's null id, ``num_classes``."""
    h, w = vocab["frame"]["height"], vocab["frame"]["width"]
    null_label = int(vocab.get("label", {}).get("num_classes", 0))
    kinds = [k for k in ANNOTATIONS if vocab.get(k)]
    keys, frames, ends, labels = [], [], [], []
    ann: dict[str, list[np.ndarray]] = {k: [] for k in kinds}
    for s in iter_token_samples(root, split):
        if frames and s["frames"].shape != frames[0].shape:
            raise TokenShardError(f"{root}/{split}: sample {s['key']} has frames "
                                  f"{s['frames'].shape}, the split's first has {frames[0].shape}")
        if s["frames"].shape[1:] != (h, w):
            raise TokenShardError(f"{root}/{split}: sample {s['key']} has {s['frames'].shape[1:]} "
                                  f"tokens per frame, vocab.json says {(h, w)}")
        for k in kinds:
            if k not in s:
                raise TokenShardError(f"{root}/{split}: sample {s['key']} lacks {k}.npy, which "
                                      f"vocab.json lists")
            ann[k].append(s[k])
        keys.append(s["key"])
        frames.append(s["frames"])
        ends.append(s["end_frame"])
        label = int(s["meta"].get("label_id", 0))
        labels.append(label if label >= 0 else null_label)
    if not keys:
        empty = np.zeros((0, 1, h, w), np.int16)
        return TokenSplit([], empty, empty[:, 0], np.zeros(0, np.int64),
                          *(np.zeros((0, 1, 2 if k == "state" else vocab[k]["tokens_per_frame"]),
                                     np.int16) if vocab.get(k) else None for k in ANNOTATIONS))
    stack = {k: np.stack(v) for k, v in ann.items()}
    return TokenSplit(keys, np.stack(frames), np.stack(ends), np.asarray(labels, np.int64),
                      stack.get("state"), stack.get("audio"), stack.get("layout"))


# --------------------------------------------------------------------------- vocab.json


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> Path:
    """JSON with sorted keys, written to a temp name then renamed (``pipeline.atomic``)."""
    return write_json(path, data)


def read_vocab(root: str | Path) -> dict[str, Any]:
    """``root/vocab.json``: ``frame`` {vocab, height, width}; ``state`` {bins, x_range, y_range,
    null_id} or null; ``audio`` / ``layout`` {vocab, tokens_per_frame, null_id} or null;
    ``label`` {num_classes, classes}; ``end_frame``: true; ``absent`` {kind: reason}."""
    path = Path(root) / VOCAB_FILE
    if not path.exists():
        raise TokenShardError(f"{path}: not found (run the tokenize stage)")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TokenShardError(f"{path}: not valid JSON ({err})") from None
    for key in ("frame", "label"):
        if key not in vocab:
            raise TokenShardError(f"{path}: no '{key}' entry")
    return vocab


__all__ = [
    "StateBins",
    "TokenSplit",
    "TokenShardError",
    "encode_token_sample",
    "iter_token_samples",
    "load_token_split",
    "read_vocab",
    "write_json_atomic",
    "code_dtype",
    "TOKEN_PATTERN",
    "ANNOTATIONS",
]
