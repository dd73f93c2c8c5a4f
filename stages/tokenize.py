"""Stage ``tokenize``: every clip → the token sample T reads (§3.1, §3.3, App. A, App. E).

Paper §3.3: a video becomes h·w frame tokens per frame — Q(E(x_t)) with the frozen E and Q of the
autoencoder (§3.1) — and its annotations become tokens too: the frame-level state (x, y) in B bins
per coordinate, audio tokens from the sound autoencoder (App. A), layout tokens from the layout
autoencoder (App. E); the video-level class label and, for point-to-point synthesis, the end
frame's tokens (App. E; here the clip's last frame). The format is ``pipeline.tokens.shards``
(docs/CONTRACTS.md "Token sample"). The conversions themselves (loading the upstream models,
frames → codes, audio → patches → codes, layouts → codes, trajectories → bins) live in
``pipeline.tokens.annotations``, shared with synthesis (``pipeline.synthesis.models``); this stage
streams the clips through them.

Inputs (each annotation is optional: a model file that is missing or says ``available: False``
— "no layouts in the data", "no audio in the data" — or no ``positions`` folder means that
annotation is simply absent, and ``vocab.json``'s ``absent`` says why):

- ``clips``: prepare's shards (``pipeline.data.shards.iter_clips``) and ``classes.json``;
- ``models/autoencoder.pt`` (required): ``CCVSAutoencoder.tokenize`` on frames scaled to [−1, 1];
- ``models/sound_vq.pt``: ``pipeline.data.audio_features.frame_patches`` (the feature config saved in the
  model) → ``VQAutoencoder.encode`` → l_a tokens per frame. A clip without usable audio (no track,
  silence-filled by prepare, bad samples) gets the null id on every frame (``meta.missing``);
- ``models/layout_vq.pt``: one-hot K-channel layout → ``VQAutoencoder.encode`` → l_l tokens per
  frame; a clip without layout (or with a label ≥ K) gets null ids, and so does a frame nobody
  labelled (layout 255, ``NO_LAYOUT``: Cityscapes labels one frame per 30-frame snippet);
- ``data/positions/<split>.parquet`` (key, t, x, y pixels): quantized by
  ``pipeline.tokens.shards.StateBins`` over the frame ([−½, W − ½] per coordinate, ``state_bins``
  bins; range in vocab.json); frames without a finite row get the null id.

Outputs: ``out/{split}/tokens-%05d.tar`` (``ShardWriter``: size-capped, atomic, byte-identical for
the same inputs), ``out/manifest.parquet`` (one row per sample: key, video_id, split, shard,
label_id, num_frames, first_frame, missing), ``out/vocab.json``.

Streaming: clips are read in shard order and grouped until they hold ``batch_size`` frames; the
group goes through E/Q (and the VQs) in chunks of ``batch_size`` frames — E's convolutions are ~3×
faster on such batches than per clip — and its samples are written at once. Memory holds one group
plus the split's trajectory table (8 bytes per frame) and the manifest rows. The grouping depends
only on the clip order, so a rerun gives byte-identical shards.

    python -m stages.tokenize --params params.yaml --clips data/clips --out data/tokens
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.training import distributed
from pipeline.tokens.annotations import (
    KINDS,
    Upstream,
    UpstreamError,
    file_hash,
    frame_tokens,
    layout_codes,
    layout_tokens_per_frame,
    sound_patches,
    sound_tokens_per_frame,
    trajectory_state,
    vq_tokens,
)
from pipeline.tokens.annotations import load_upstream as _load_upstream
from pipeline.atomic import write_parquet
from pipeline.data.audio_features import AudioConfigError, AudioError
from pipeline.params import TokenizeParams
from pipeline.data.shard_writing import ShardWriter
from pipeline.data.shards import NO_LAYOUT, iter_clips
from pipeline.tokens.shards import (
    MANIFEST_FILE,
    TOKEN_PATTERN,
    VOCAB_FILE,
    StateBins,
    TokenShardError,
    encode_token_sample,
    write_json_atomic,
)
from pipeline.errors import StageError
from pipeline.stage import stage_main

SPLITS = ("train", "val", "test")



def load_upstream(params: TokenizeParams, autoencoder: Path, sound_vq: Path | None,
                  layout_vq: Path | None, device: torch.device) -> Upstream:
    """The frozen upstream models (``pipeline.tokens.annotations.load_upstream``); the kinds this
    stage's params turn off are recorded as absent."""
    disabled = {kind: f"tokenize.{kind} is false" for kind in KINDS if not getattr(params, kind)}
    try:
        return _load_upstream(autoencoder, sound_vq, layout_vq, device, disabled=disabled)
    except UpstreamError as err:
        raise StageError(str(err)) from None


def _why_no_trajectories(positions_dir: Path | None) -> str:
    """The reason the positions stage wrote in ``unavailable.json`` (no annotations), else where
    the trajectories were looked for."""
    if positions_dir is not None and (positions_dir / "unavailable.json").is_file():
        try:
            return str(json.loads((positions_dir / "unavailable.json").read_text())["reason"])
        except (OSError, KeyError, TypeError, json.JSONDecodeError):
            pass
    return f"no trajectories ({positions_dir}/<split>.parquet)"


def read_trajectories(positions_dir: Path, split: str) -> dict[str, np.ndarray] | None:
    """``positions_dir/<split>.parquet`` → key → (T, 2) float32 (NaN where no row); None if absent."""
    path = positions_dir / f"{split}.parquet"
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["key", "t", "x", "y"]).to_pydict()
    except Exception as err:  # pyarrow raises several types; all mean "unreadable"
        raise StageError(f"{path}: cannot read the trajectories ({err})") from None
    rows: dict[str, list[tuple[int, float, float]]] = {}
    for key, t, x, y in zip(table["key"], table["t"], table["x"], table["y"]):
        rows.setdefault(key, []).append((int(t), x, y))
    out = {}
    for key, items in rows.items():
        arr = np.full((max(t for t, _, _ in items) + 1, 2), np.nan, np.float32)
        for t, x, y in items:
            if t >= 0:
                arr[t] = (np.nan if x is None else x, np.nan if y is None else y)
        out[key] = arr
    return out


# --------------------------------------------------------------------------- the stage


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa

    cols = {"key": pa.string(), "video_id": pa.string(), "split": pa.string(), "shard": pa.string(),
            "label_id": pa.int32(), "num_frames": pa.int32(), "first_frame": pa.int32(),
            "missing": pa.string()}
    table = pa.table({c: pa.array([r[c] for r in rows], t) for c, t in cols.items()})
    write_parquet(path, table)


def run(
    params: TokenizeParams,
    clips: str | Path,
    autoencoder: str | Path,
    out_dir: str | Path,
    logger: Any,
    sound_vq: str | Path | None = None,
    layout_vq: str | Path | None = None,
    positions: str | Path | None = None,
) -> dict[str, float]:
    """Tokenize every clip of every split; write shards, manifest and vocab; return metrics."""
    start = time.perf_counter()
    clips, out_dir = Path(clips), Path(out_dir)
    device = distributed.device_for(0, params.device)
    up = load_upstream(params, Path(autoencoder), Path(sound_vq) if sound_vq else None,
                       Path(layout_vq) if layout_vq else None, device)
    classes_path = clips / "classes.json"
    try:
        classes = json.loads(classes_path.read_text(encoding="utf-8")) if classes_path.exists() else []
    except json.JSONDecodeError as err:
        raise StageError(f"{classes_path}: not valid JSON ({err})") from None

    positions_dir = Path(positions) if positions else None
    use_state = params.state and positions_dir is not None and any(
        (positions_dir / f"{s}.parquet").exists() for s in SPLITS)
    if not params.state:
        up.absent["state"] = "tokenize.state is false"
    elif not use_state:
        up.absent["state"] = _why_no_trajectories(positions_dir)
    else:
        up.sources["positions"] = hashlib.sha1(b"".join(
            file_hash(positions_dir / f"{s}.parquet").encode()
            for s in SPLITS if (positions_dir / f"{s}.parquet").exists())).hexdigest()[:16]

    if out_dir.exists():  # a stage output is rewritten whole (DVC removes it first anyway)
        ours = {*SPLITS, VOCAB_FILE, MANIFEST_FILE}
        foreign = sorted(p.name for p in out_dir.iterdir()
                         if p.name not in ours and not p.name.startswith("."))
        if foreign:
            raise StageError(f"{out_dir}: holds {foreign[:3]}, not a tokenize output; "
                                f"refusing to replace it")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    counts = {f"{s}_clips": 0.0 for s in SPLITS}
    missing_counts = {k: 0.0 for k in ("state", "audio", "layout")}
    frame_hw: tuple[int, int] | None = None
    bins: StateBins | None = None
    audio_tpf = layout_tpf = 0
    for split in SPLITS:
        trajectories = read_trajectories(positions_dir, split) if use_state else None
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        writer = ShardWriter(out_dir / split, params.shard_max_bytes, pattern=TOKEN_PATTERN)
        try:
            def emit(sample: dict[str, Any], codes: np.ndarray, audio: np.ndarray | None,
                     layout: np.ndarray | None) -> None:
                nonlocal bins
                key, meta, frames = sample["key"], sample.get("meta", {}), sample["frames"]
                n = int(frames.shape[0])
                missing: list[str] = []
                state = None
                if use_state:
                    bins = bins or StateBins.for_frame(params.state_bins, frames.shape[1],
                                                       frames.shape[2])
                    traj = trajectories.get(key) if trajectories is not None else None
                    state = trajectory_state(traj, n, bins)
                    if traj is None or (state == bins.null_id).any():
                        missing.append("state")
                if audio is not None and (audio == up.sound.config.codebook_size).all():
                    missing.append("audio")
                if layout is not None and (layout == up.layout.config.codebook_size).all():
                    missing.append("layout")
                for kind in missing:
                    missing_counts[kind] += 1
                token_meta = {
                    "key": key, "video_id": meta.get("video_id", key.rsplit("_", 1)[0]),
                    "split": split, "label": meta.get("label", ""),
                    "label_id": int(meta.get("label_id", 0)), "fps": meta.get("fps"),
                    "first_frame": int(meta.get("first_frame", 0)),
                    "frame_step": int(meta.get("frame_step", 1)), "num_frames": n,
                    "missing": missing,
                }
                try:
                    encoded = encode_token_sample(key, codes, token_meta,
                                                  frame_vocab=up.frame_vocab, state=state,
                                                  audio=audio, layout=layout)
                except TokenShardError as err:
                    raise StageError(str(err)) from None
                shard = writer.write(encoded)
                rows.append({"key": key, "video_id": token_meta["video_id"], "split": split,
                             "shard": shard, "label_id": token_meta["label_id"], "num_frames": n,
                             "first_frame": token_meta["first_frame"],
                             "missing": ",".join(missing)})
                counts[f"{split}_clips"] += 1

            pending: list[dict[str, Any]] = []
            source = iter_clips(clips, split) if (clips / split).is_dir() else iter(())
            for sample in itertools.chain(source, [None]):
                if sample is not None:
                    pending.append(sample)
                    if sum(int(s["frames"].shape[0]) for s in pending) < params.batch_size:
                        continue
                if not pending:
                    continue
                for item in zip(pending, *encode_group(up, pending, params.batch_size, device)):
                    frame_hw = frame_hw or item[1].shape[1:]
                    audio_tpf = audio_tpf or (item[2].shape[1] if item[2] is not None else 0)
                    layout_tpf = layout_tpf or (item[3].shape[1] if item[3] is not None else 0)
                    emit(*item)
                pending = []
        except BaseException:
            writer.abort()
            raise
        writer.close()

    if frame_hw is None:
        raise StageError(f"{clips}: no clips in any split")
    num_classes = max(len(classes), 1 + max((r["label_id"] for r in rows), default=-1))
    sizes = [r["num_frames"] for r in rows]
    vocab = {
        "frame": {"vocab": up.frame_vocab, "height": frame_hw[0], "width": frame_hw[1],
                  "dtype": "int16" if up.frame_vocab < 32767 else "int32"},
        "end_frame": True,  # end_frame.npy = the clip's last frame's codes (App. E)
        "state": bins.to_dict() if bins is not None else None,
        "audio": ({"vocab": up.sound.config.codebook_size, "tokens_per_frame": audio_tpf,
                   "null_id": up.sound.config.codebook_size} if up.sound is not None else None),
        "layout": ({"vocab": up.layout.config.codebook_size, "tokens_per_frame": layout_tpf,
                    "null_id": up.layout.config.codebook_size} if up.layout is not None else None),
        "label": {"num_classes": num_classes, "classes": list(classes)},
        "absent": dict(sorted(up.absent.items())),
        "clip_frames": {"min": min(sizes), "max": max(sizes)},
        "splits": {s: int(counts[f"{s}_clips"]) for s in SPLITS},
        "sources": dict(sorted(up.sources.items())),
    }
    write_json_atomic(out_dir / VOCAB_FILE, vocab)
    _write_manifest(out_dir / MANIFEST_FILE, rows)
    for kind, reason in up.absent.items():
        logger.set_tag(f"tokenize.absent.{kind}", reason)
        print(f"tokenize: no {kind} tokens: {reason}", file=sys.stderr)
    metrics = {**counts, **{f"missing_{k}_clips": v for k, v in missing_counts.items()},
               "tokens_per_frame": float(frame_hw[0] * frame_hw[1]),
               "seconds": time.perf_counter() - start}
    logger.log_metrics(metrics)
    return metrics


def _audio_patches(up: Upstream, sample: dict[str, Any]) -> np.ndarray | None:
    """(T, 1, F, W) sound patches of a clip, or None when it has no usable audio."""
    assert up.sound_features is not None
    meta, n = sample.get("meta", {}), int(sample["frames"].shape[0])
    fps, rate = meta.get("fps"), meta.get("audio_rate")
    if "audio" not in sample or meta.get("audio_silent") or not fps or not rate:
        return None
    try:
        return sound_patches(sample["audio"], float(rate), float(fps), n, up.sound_features)
    except AudioConfigError as err:
        raise StageError(f"clip {sample['key']}: {err}") from None
    except AudioError as err:
        print(f"tokenize: clip {sample['key']}: audio unusable ({err}): null audio tokens",
              file=sys.stderr)
        return None


def _grouped(inputs: list[np.ndarray | None], encode, null_shape: tuple[int, int],
             null_id: int, sizes: list[int]) -> list[np.ndarray]:
    """Encode the non-None per-clip inputs as one stream; None → (T, n) null ids."""
    usable = [x for x in inputs if x is not None]
    codes = encode(np.concatenate(usable)) if usable else None
    out, at = [], 0
    for x, t in zip(inputs, sizes):
        if x is None:
            out.append(np.full((t, null_shape[1]), null_id, np.int64))
        else:
            out.append(codes[at:at + t])
            at += t
    return out


def encode_group(up: Upstream, samples: list[dict[str, Any]], batch: int, device: torch.device
                 ) -> tuple[list[np.ndarray], list[np.ndarray | None], list[np.ndarray | None]]:
    """Frame codes (T, h, w), audio codes (T, l_a) and layout codes (T, l_l) of each clip.

    The clips' frames are concatenated and cut into chunks of ``batch`` (E's convolutions are much
    faster on big batches than per clip); the grouping depends only on the clip order, so the
    output is reproducible. Clips without usable audio / layout get null ids.
    """
    sizes = [int(s["frames"].shape[0]) for s in samples]
    frames = np.concatenate([s["frames"] for s in samples])
    codes = frame_tokens(up.autoencoder, frames, batch, device)
    frame_codes = list(np.split(codes, np.cumsum(sizes)[:-1]))
    audio: list[np.ndarray | None] = [None] * len(samples)
    if up.sound is not None:
        l_a = sound_tokens_per_frame(up.sound, up.sound_features)
        audio = _grouped([_audio_patches(up, s) for s in samples],
                         lambda x: vq_tokens(up.sound, x, batch, device), (0, l_a),
                         up.sound.config.codebook_size, sizes)
    layout: list[np.ndarray | None] = [None] * len(samples)
    if up.layout is not None:
        hw = layout_tokens_per_frame(up.layout, samples[0]["frames"].shape[1],
                                     samples[0]["frames"].shape[2])
        maps = [s.get("layout") for s in samples]
        unlabelled = [None if m is None else (m == NO_LAYOUT).all(axis=(1, 2)) for m in maps]
        maps = [None if m is None else np.where(u[:, None, None], 0, m)  # coded, then nulled
                for m, u in zip(maps, unlabelled)]
        maps = [m if m is not None and int(m.max(initial=0)) < up.layout_classes else None
                for m in maps]
        layout = _grouped(maps, lambda x: layout_codes(up.layout, x, batch, device),
                          (0, hw), up.layout.config.codebook_size, sizes)
        for codes, u in zip(layout, unlabelled):  # a frame nobody labelled: null ids
            if u is not None:
                codes[u] = up.layout.config.codebook_size
    return frame_codes, audio, layout


PATHS = {
    "clips": ("data/clips", "prepare's output folder"),
    "autoencoder": "models/autoencoder.pt",
    "sound_vq": "models/sound_vq.pt",
    "layout_vq": "models/layout_vq.pt",
    "positions": ("data/positions", "positions stage folder"),
    "out": "data/tokens",
}


def main(argv: list[str] | None = None) -> None:
    stage_main("tokenize", __doc__, PATHS,
               lambda p, a, log: run(p, a.clips, a.autoencoder, a.out, log, sound_vq=a.sound_vq,
                                     layout_vq=a.layout_vq, positions=a.positions), argv=argv)


if __name__ == "__main__":
    main()
