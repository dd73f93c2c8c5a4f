"""Stage ``positions``: train the position estimator on the annotated frames, then label every clip.

Paper: §4 "Datasets" (the gripper's (x, y) hand-annotated in 500 BAIR frames) and App. A
"Position estimator" (a small regressor trained with an MSE, used to extract the arm's trajectory
from every video for state-conditioned synthesis). The model is ``ccvs_models.position``; it reads
frames, not E's latents, because this stage runs beside the autoencoder in the DAG.

1. **Annotated frames.** Only the train-split clips are read for training, and in them only the
   frames whose ``positions.npy`` row is finite (the annotations ``prepare`` carried over from
   ``data.annotations`` or the demo's ``annotations.csv``; NaN = not annotated). Clips overlap
   (``clip_stride < clip_length``), so a frame is identified by (video_id, source frame =
   ``first_frame + t · frame_step``) and kept once.
2. **Held-out set.** ``holdout_fraction`` of the annotated frames, taken as whole videos (seeded by
   ``loop.seed``), are kept out of training; their mean / median error in pixels is the stage's
   accuracy estimate on data without ground truth. With a single annotated video the split is by
   frame instead.
3. **Training** with the shared loop (``pipeline.training.loop.fit``: checkpoints in ``ckpt_dir``,
   exact resume): Adam, linear warm-up then cosine decay of the learning rate (a function of the
   step, so resuming needs no scheduler state), augmentation = horizontal flip (x → W − 1 − x) and a
   per-channel gain/offset colour jitter. A checkpoint written for other data or other params is
   not resumed: training restarts (the fingerprint of the annotated set is part of the config).
4. **Labelling.** Every frame of every clip of every split is labelled, and the trajectories are
   written as ``out_dir/<split>.parquet`` with **one row per clip frame**: ``key`` (the clip's shard
   key, ``<video_id>_<clip:04d>``), ``t`` (frame index in the clip, 0 … T−1), ``x``, ``y`` (float32
   pixels of the clip frames: x right, y down, origin at the top-left pixel's centre). Annotated
   frames get the model's prediction too, so every trajectory comes from one estimator. A split
   with no clips gets an empty table with the same columns.
5. **Metrics** (``metrics_path``, JSON, also logged): ``heldout_error_px_{mean,median}`` and, when
   ``raw_dir/ground_truth/<video_id>.npz`` exists (the demo world), the error on frames that no clip
   annotates, against that kept-apart ground truth: ``never_annotated_error_px_{mean,median,p95}``.
   ``ground_truth`` in the JSON says which was available. ``out_dir/examples.png`` draws predicted
   (red) and true (green) positions on a few frames; it is logged as an artifact.

No annotations (a folder of videos nobody labelled): nothing to train on, so the stage writes a
placeholder model (``meta["available"] = False`` and the reason, as the sound and layout VQs do
without audio or layouts), ``out_dir/unavailable.json`` with the reason instead of the parquet
files, and metrics saying so; ``tokenize`` then writes no state tokens and T trains without them.

Steps 1–3 (the annotated frames, the held-out split, the training task, augmentation, learning
rate and batched ``predict``) live in ``pipeline/training/positions.py``; this module re-exports
them and keeps the labelling, the ground-truth comparison, the report and the CLI.

    python -m stages.positions --params params.yaml --clips data/clips --raw data/raw/demo \\
        --model models/position.pt --out data/positions --metrics metrics/positions.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ccvs_models.position import PositionEstimator
from pipeline.atomic import write_json, write_parquet
from pipeline.training.checkpoint import save_model
from pipeline.params import PositionsParams
from pipeline.training.positions import (
    NoAnnotations,
    PositionTask,
    _batches,
    _frame_id,
    _split_clips,
    load_annotated,
    predict,
)
from pipeline.training.loop import fit
from pipeline.data.splits import holdout_mask
from pipeline.errors import StageError
from pipeline.stage import stage_main

__all__ = [
    "SPLITS",
    "GroundTruth",
    "main",
    "run",
]

SPLITS = ("train", "val", "test")
_EXAMPLES = 8  # frames drawn in examples.png


# --------------------------------------------------------------------------- labelling + ground truth


class GroundTruth:
    """The demo's kept-apart positions (``raw_dir/ground_truth/<video_id>.npz``) in clip pixels."""

    def __init__(self, raw_dir: Path | None):
        self.folder = Path(raw_dir) / "ground_truth" if raw_dir is not None else None
        self._cache: dict[str, np.ndarray | None] = {}

    @property
    def available(self) -> bool:
        return self.folder is not None and self.folder.is_dir()

    def _load(self, vid: str, size: int) -> np.ndarray | None:
        path = self.folder / f"{vid}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                pos = archive["positions"].astype(np.float64)
        except (OSError, KeyError, ValueError) as err:
            raise StageError(f"{path}: cannot read ground-truth positions ({err})") from None
        video = self.folder.parent / "videos" / f"{vid}.mp4"
        if video.is_file():  # map raw pixels through prepare's resize + centre crop
            from pipeline.data.media import MediaError, probe

            try:
                info = probe(video)
            except MediaError as err:
                raise StageError(str(err)) from None
            short = min(info.height, info.width)
            origin = np.array([(info.width - short) / 2, (info.height - short) / 2])
            pos = (pos + 0.5 - origin) * (size / short) - 0.5
        return pos.astype(np.float32)

    def get(self, vid: str, frame: int, size: int) -> np.ndarray | None:
        if vid not in self._cache:
            self._cache[vid] = self._load(vid, size)
        pos = self._cache[vid]
        return None if pos is None or frame >= len(pos) else pos[frame]


def _write_parquet(path: Path, rows: dict[str, list]) -> None:
    import pyarrow as pa

    table = pa.table({
        "key": pa.array(rows["key"], pa.string()),
        "t": pa.array(rows["t"], pa.int32()),
        "x": pa.array(rows["x"], pa.float32()),
        "y": pa.array(rows["y"], pa.float32()),
    })
    write_parquet(path, table)


def _draw_examples(path: Path, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]],
                   scale: int = 4) -> Path:
    """Frames side by side, ×scale: prediction = red cross, truth = green ring."""
    from PIL import Image, ImageDraw

    tiles = []
    for frame, pred, true in examples:
        img = Image.fromarray(frame).resize((frame.shape[1] * scale, frame.shape[0] * scale),
                                            Image.NEAREST)
        draw = ImageDraw.Draw(img)

        def at(p):  # pixel-centre coordinates → the centre of the upscaled pixel
            return (p[0] + 0.5) * scale, (p[1] + 0.5) * scale

        if true is not None:
            cx, cy = at(true)
            draw.ellipse([cx - 6, cy - 6, cx + 6, cy + 6], outline=(0, 255, 0), width=2)
        cx, cy = at(pred)
        draw.line([cx - 5, cy - 5, cx + 5, cy + 5], fill=(255, 0, 0), width=2)
        draw.line([cx - 5, cy + 5, cx + 5, cy - 5], fill=(255, 0, 0), width=2)
        tiles.append(np.asarray(img))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)
    return path


def _stats(errors: list[float] | np.ndarray, prefix: str, p95: bool = False) -> dict[str, float]:
    e = np.asarray(errors, dtype=np.float64)
    if e.size == 0:
        return {}
    out = {f"{prefix}_mean": float(e.mean()), f"{prefix}_median": float(np.median(e))}
    if p95:
        out[f"{prefix}_p95"] = float(np.percentile(e, 95))
    return out


# --------------------------------------------------------------------------- stage

UNAVAILABLE = "unavailable.json"  # in out_dir instead of <split>.parquet: why there are none


def _placeholder(reason: str, out_model: Path, out_dir: Path, metrics_path: Path, logger: Any,
                 start: float) -> dict[str, Any]:
    """No annotations: no estimator, no trajectories. Writes a model file saying so
    (``meta["available"] = False``, like the sound and layout VQs), ``out_dir/unavailable.json``
    with the reason instead of the parquet files (``tokenize`` then writes no state tokens and T
    trains without them) and the metrics; the DAG goes on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (out_dir / f"{split}.parquet").unlink(missing_ok=True)
    write_json(out_dir / UNAVAILABLE, {"available": False, "reason": reason})
    save_model(out_model, {}, {}, available=False, reason=reason)
    metrics = {"available": 0.0, "reason": reason, "seconds": time.perf_counter() - start}
    write_json(metrics_path, metrics)
    logger.set_tags({"positions.available": "false", "positions.reason": reason})
    logger.log_metrics({"available": 0.0})
    print(f"positions: {reason}: no position model, no state tokens", file=sys.stderr)
    return metrics


def run(
    params: PositionsParams,
    clips_dir: Path,
    raw_dir: Path | None,
    out_model: Path,
    out_dir: Path,
    metrics_path: Path,
    logger: Any,
    *,
    ckpt_dir: Path = Path("checkpoints/positions"),
    resume: bool | str = "auto",
) -> dict[str, Any]:
    """Train on the annotated train frames, label every clip, write model / parquet / metrics.

    Returns the metrics dict written to ``metrics_path`` (numbers, plus ``ground_truth``: a note).
    """
    start = time.perf_counter()
    clips_dir, out_dir = Path(clips_dir), Path(out_dir)
    try:
        annotated = load_annotated(clips_dir)
    except NoAnnotations as err:
        return _placeholder(str(err), out_model, out_dir, Path(metrics_path), logger, start)
    size = tuple(int(s) for s in annotated.frames.shape[1:3])  # (H, W)
    step = params.model.downsampling
    if size[0] % step or size[1] % step:
        raise StageError(
            f"{clips_dir}: frames are {size[0]}×{size[1]}, not divisible by the estimator's "
            f"downsampling {step} (positions.model.stem_stride × 2^len(channels))")
    held = holdout_mask([vid for vid, _ in annotated.ids], params.holdout_fraction,
                        params.loop.seed)
    train_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    heldout = (annotated.frames[held_idx], annotated.xy[held_idx])
    logger.log_metrics({"annotated_frames": len(annotated.ids), "train_frames": len(train_idx),
                        "heldout_frames": len(held_idx)})

    task = PositionTask(params, annotated.fingerprint(), size, heldout)
    batches = _batches(params, annotated.frames[train_idx], annotated.xy[train_idx])
    result = fit(task, batches, params.loop, ckpt_dir, logger, resume=resume)
    if not result.is_main:
        return {}
    train_seconds = time.perf_counter() - start

    model = PositionEstimator(params.model)
    model.load_state_dict(result.state["position"])
    device = next(task.model.parameters()).device
    model.to(device).eval()
    save_model(out_model, params.model, model.state_dict(), steps=result.step,
               frame_size=list(size), annotations=annotated.fingerprint(),
               annotated_frames=len(annotated.ids), train_frames=len(train_idx))

    # held-out annotated error
    metrics: dict[str, Any] = {"annotated_frames": len(annotated.ids),
                               "train_frames": len(train_idx), "heldout_frames": len(held_idx)}
    pred_train = predict(model, annotated.frames[train_idx], device)
    metrics.update(_stats(np.linalg.norm(pred_train - annotated.xy[train_idx], axis=1),
                          "train_error_px"))
    pred_held = predict(model, heldout[0], device)
    metrics.update(_stats(np.linalg.norm(pred_held - heldout[1], axis=1), "heldout_error_px"))

    # label every clip; on frames no clip annotates, compare with the ground truth if any
    truth = GroundTruth(raw_dir)
    annotated_ids = set(annotated.ids)
    never_errors: list[float] = []
    never_seen: set[tuple[str, int]] = set()
    annotated_check: list[float] = []  # ground truth vs the annotations: are they the same data?
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
    clip_count = 0
    for split in SPLITS:
        rows: dict[str, list] = {"key": [], "t": [], "x": [], "y": []}
        for sample in _split_clips(clips_dir, split):
            frames = sample["frames"]
            if frames.shape[1:3] != size:
                raise StageError(f"{clips_dir}/{split}: clip {sample['key']} is "
                                     f"{frames.shape[1]}×{frames.shape[2]}, the annotated frames {size[0]}×{size[1]}")
            pred = predict(model, frames, device)
            clip_count += 1
            n = len(frames)
            rows["key"] += [sample["key"]] * n
            rows["t"] += list(range(n))
            rows["x"] += pred[:, 0].tolist()
            rows["y"] += pred[:, 1].tolist()
            pos = sample.get("positions")
            where = f"{clips_dir}/{split}: clip {sample['key']}"
            for t in range(n):
                fid = _frame_id(sample["meta"], t, where)
                marked = pos is not None and bool(np.isfinite(pos[t]).all())
                if not truth.available or fid in never_seen:
                    continue
                shown = sample["meta"].get("source_frames")  # prepare resampled the video
                true = truth.get(fid[0], int(shown[t]) if shown else fid[1], size[1])
                if true is None:
                    continue
                if marked or fid in annotated_ids:
                    if marked:
                        annotated_check.append(float(np.abs(true - pos[t]).max()))
                    continue
                never_seen.add(fid)
                never_errors.append(float(np.linalg.norm(pred[t] - true)))
                if split == "test" and len(examples) < _EXAMPLES and t == n // 2:
                    examples.append((frames[t], pred[t], true))
        _write_parquet(out_dir / f"{split}.parquet", rows)
    metrics["clips_labelled"] = clip_count

    if truth.available and never_errors:
        if annotated_check and float(np.median(annotated_check)) > 0.05:
            raise StageError(
                f"{truth.folder}: ground truth disagrees with the clips' annotations by "
                f"{np.median(annotated_check):.2f} px (median): not the videos these clips come from")
        metrics.update(_stats(never_errors, "never_annotated_error_px", p95=True))
        metrics["never_annotated_frames"] = len(never_errors)
        metrics["ground_truth"] = f"{truth.folder} (every frame; errors in clip pixels)"
    else:
        metrics["ground_truth"] = ("none: only the held-out annotated error is available "
                                   f"({'no ground_truth folder in ' + str(raw_dir) if raw_dir else 'no raw folder given'})")
    if not examples:  # no ground truth: show held-out (else training) frames with their annotation
        src = held_idx if len(held_idx) else train_idx
        for i in src[:_EXAMPLES]:
            pred = predict(model, annotated.frames[i : i + 1], device)[0]
            examples.append((annotated.frames[i], pred, annotated.xy[i]))
    metrics["frame_height"], metrics["frame_width"] = size
    metrics["steps"] = result.step
    metrics["train_seconds"] = train_seconds
    metrics["seconds"] = time.perf_counter() - start

    write_json(Path(metrics_path), metrics)
    logger.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    logger.set_tag("positions.ground_truth", metrics["ground_truth"])
    logger.log_artifact(_draw_examples(out_dir / "examples.png", examples), "positions")
    return metrics


PATHS = {
    "clips": ("data/clips", "clip shards (the prepare stage's output)"),
    "raw": ("", "raw data folder; its ground_truth/ (demo) is used for evaluation only ('' = none)"),
    "model": ("models/position.pt", "output model file"),
    "out": ("data/positions", "output folder of <split>.parquet"),
    "metrics": ("metrics/positions.json", "output metrics JSON"),
    "ckpt": ("checkpoints/positions", "training checkpoints"),
}


def summary(metrics: dict[str, Any], args: argparse.Namespace) -> str:
    if not metrics.get("available", 1.0):
        return f"skipped (no annotations): placeholder {args.model}, no trajectories"
    never = metrics.get("never_annotated_error_px_mean")
    extra = f", never-annotated {never:.2f} px" if never is not None else ""
    return (f"{metrics['train_frames']} train / {metrics['heldout_frames']} held-out annotated "
            f"frames, held-out error {metrics.get('heldout_error_px_mean', float('nan')):.2f} px"
            f"{extra}; {metrics['clips_labelled']} clips labelled in {metrics['seconds']:.0f}s "
            f"→ {args.out}")


def main(argv: list[str] | None = None) -> None:
    stage_main("positions", __doc__, PATHS,
               lambda p, a, log: run(p, Path(a.clips), Path(a.raw) if a.raw else None,
                                     Path(a.model), Path(a.out), Path(a.metrics), log,
                                     ckpt_dir=Path(a.ckpt)),
               summary=summary, argv=argv)


if __name__ == "__main__":
    main()
