"""Stage ``layout_vq``: layout tokens for layout-conditioned synthesis (App. E, Table D2, Fig. D1).

App. E "Layout-conditioned synthesis" (Cityscapes): layouts are frame-level annotations that "are
encoded, quantized, and decoded just as it is done for images", then used by the transformer T
like the other annotations. Here each frame's layout (uint8 H × W class ids, from the clip
shards' ``layout.npy``) becomes a one-hot map with K channels, the shared
``ccvs_models.vq_autoencoder.VQAutoencoder`` (in/out channels K, 3 stride-2 blocks: 64 × 64 →
8 × 8 tokens) encodes and quantizes it, and D predicts K class logits per pixel, trained with
cross-entropy + λ_q · L_q (Eq. (3)); dead codes are re-seeded as in ``sound_vq`` (same task,
``pipeline.training.vq.VQTask``) and training runs in the shared loop (``pipeline.training.loop.fit``,
checkpoints in ``<ckpt_dir>/<config hash>/``, resume).

K (``model.in_channels``): 0 = from the data, max label + 1 over the train clips (the demo world:
0 background, 1 gripper, 2.. objects); it is stored in the model file. Val clips with a label
≥ K are skipped with a reason.

Reports on val (``metrics/layout_vq.json`` and MLflow): per-class IoU and mean IoU of the
reconstruction (classes absent from both truth and reconstruction are left out of the mean),
pixel accuracy, next to a baseline that predicts every pixel's most frequent train class; codebook
perplexity and dead codes; a PNG of true vs reconstructed layouts (colour-coded) as an artifact.

Not built: the paper's second prediction head on the frame decoder D that outputs layouts next to
the frames (App. E, Fig. D2); these layout tokens have their own small decoder.

No layouts in the data (no clip carries ``layout.npy``): the stage writes a model file with
``meta.available = False`` and ``meta.reason = "no layouts in the data"`` and metrics saying so,
so the DAG still runs; ``tokenize`` then emits no layout tokens.

    python -m stages.layout_vq --params params.yaml --clips data/clips
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ccvs_models.vq_autoencoder import VQAutoencoder
from pipeline.atomic import write_json
from pipeline.training.checkpoint import save_model
from pipeline.params import LayoutVQParams, ParamsError
from pipeline.training.loop import fit
from pipeline.training.vq import VQTask, array_batches, codebook_usage, encode_tokens, labelled_rows, predict, report_skipped, split_samples, write_placeholder
from pipeline.data.splits import holdout_keys
from pipeline.data.shards import NO_LAYOUT
from pipeline.errors import StageError
from pipeline.stage import stage_main


@dataclasses.dataclass
class LayoutSplit:
    """The layouts of one split's clips, frames stacked."""

    layouts: np.ndarray  # uint8 (N, H, W)
    keys: list[str]
    frames: list[int]  # frames per clip, in order
    skipped: list[tuple[str, str]]
    with_layout: int  # clips that carried a layout


def load_layouts(clips: str | Path, split: str) -> LayoutSplit:
    """Every labelled layout frame of ``split`` (clips without ``layout.npy`` are skipped with a
    reason; frames whose map is all ``NO_LAYOUT``, 255, are left out)."""
    arrays, keys, frames, skipped = [], [], [], []
    shape = None
    for sample in split_samples(clips, split):
        key = sample["key"]
        layout = sample.get("layout")
        if layout is None:
            skipped.append((key, "no layout"))
            continue
        if layout.ndim != 3 or layout.dtype != np.uint8:
            skipped.append((key, f"layout must be uint8 (T, H, W), got {layout.dtype} {layout.shape}"))
            continue
        if shape is None:
            shape = layout.shape[1:]
        elif layout.shape[1:] != shape:
            skipped.append((key, f"layout is {layout.shape[1:]}, other clips are {shape}"))
            continue
        layout = layout[~(layout == NO_LAYOUT).all(axis=(1, 2))]  # frames nobody labelled
        if not len(layout):
            skipped.append((key, "no labelled frame"))
            continue
        arrays.append(layout)
        keys.append(key)
        frames.append(layout.shape[0])
    stacked = np.concatenate(arrays) if arrays else np.zeros((0, 1, 1), np.uint8)
    return LayoutSplit(stacked, keys, frames, skipped, len(arrays))


def _take(split: LayoutSplit, keep: list[bool]) -> LayoutSplit:
    starts = np.cumsum([0, *split.frames])
    idx = [i for i, k in enumerate(keep) if k]
    arr = (np.concatenate([split.layouts[starts[i]:starts[i + 1]] for i in idx])
           if idx else split.layouts[:0])
    return LayoutSplit(arr, [split.keys[i] for i in idx], [split.frames[i] for i in idx], [], len(idx))


def iou_per_class(true: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[int, float]:
    """IoU of each class present in ``true`` or ``pred`` (absent classes are left out)."""
    out = {}
    for c in range(num_classes):
        t, p = true == c, pred == c
        union = int(np.logical_or(t, p).sum())
        if union:
            out[c] = float(np.logical_and(t, p).sum() / union)
    return out


def majority_layout(layouts: np.ndarray, num_classes: int) -> np.ndarray:
    """(H, W) most frequent class of each pixel over ``layouts`` (N, H, W)."""
    counts = np.stack([(layouts == c).sum(axis=0) for c in range(num_classes)])
    return counts.argmax(axis=0).astype(np.uint8)


_PALETTE = np.array([[40, 40, 40], [235, 235, 235], [220, 50, 47], [38, 160, 70], [40, 100, 220],
                     [240, 200, 30], [245, 130, 20], [150, 70, 200], [30, 180, 190],
                     [200, 120, 150]], dtype=np.uint8)


def colorize_layout(layout: np.ndarray) -> np.ndarray:
    """(H, W) class ids → (H, W, 3) uint8 (0 dark, 1 white, 2.. colours; cycles past 10)."""
    return _PALETTE[np.asarray(layout).astype(np.int64) % len(_PALETTE)]


def layout_artifact(true: np.ndarray, pred: np.ndarray, key: str, folder: Path,
                    max_frames: int = 8) -> Path:
    """PNG: a row of true layouts of one clip over the row of their reconstructions."""
    folder.mkdir(parents=True, exist_ok=True)
    step = max(1, len(true) // max_frames)
    pick = list(range(0, len(true), step))[:max_frames]
    gap = np.full((true.shape[1], 2, 3), 255, np.uint8)

    def strip(frames: np.ndarray) -> np.ndarray:
        tiles = []
        for i in pick:
            tiles += [colorize_layout(frames[i]), gap]
        return np.concatenate(tiles[:-1], axis=1)

    path = folder / "layout_vq_reconstructions.png"
    labelled_rows([(f"{key} true", strip(true)), ("reconstructed (VQ)", strip(pred))]).save(path)
    return path


def run(
    params: LayoutVQParams,
    clips: str | Path,
    model_out: str | Path,
    metrics_out: str | Path,
    ckpt_dir: str | Path,
    logger: Any,
    artifacts_dir: str | Path | None = None,
) -> dict[str, float]:
    """Train the layout VQ on ``clips`` (prepare's output); write the model and metrics."""
    start = time.perf_counter()
    model_out, metrics_out = Path(model_out), Path(metrics_out)
    m = params.model
    if m.out_channels not in (0, m.in_channels):
        raise ParamsError(f"layout_vq.model.out_channels: must be 0 or equal in_channels "
                          f"({m.in_channels}), got {m.out_channels}")
    train = load_layouts(clips, "train")
    val = load_layouts(clips, "val")
    if train.with_layout == 0:
        report_skipped("layout_vq", [], logger)
        return write_placeholder("layout_vq", "no layouts in the data", model_out, metrics_out, logger,
                            {"clips_without_layout": float(len(train.skipped) + len(val.skipped))})
    val_source = "val"
    if val.with_layout == 0:
        held = holdout_keys(train.keys, seed=params.loop.seed)
        val = _take(train, [k in held for k in train.keys])
        train = _take(train, [k not in held for k in train.keys])
        val_source = "train_holdout"
        if not val.keys:
            raise StageError(f"{clips}: no val layouts and too few train videos to hold some out")
    if val.layouts.shape[1:] != train.layouts.shape[1:]:
        raise StageError(f"{clips}: val layouts are {val.layouts.shape[1:]}, train layouts "
                         f"{train.layouts.shape[1:]}")
    h, w = train.layouts.shape[1:]
    if h % m.downsampling or w % m.downsampling:
        raise StageError(f"{clips}: layouts of {h}×{w} cannot be downsampled {len(m.channels)} "
                         f"times (need both divisible by {m.downsampling})")
    data_classes = int(train.layouts.max()) + 1
    num_classes = m.in_channels or data_classes
    if data_classes > num_classes:
        raise StageError(f"{clips}: train layouts have label {data_classes - 1} but "
                         f"layout_vq.model.in_channels = {num_classes}")
    skipped = train.skipped + val.skipped
    keep = []
    starts = np.cumsum([0, *val.frames])
    for i, key in enumerate(val.keys):
        top = int(val.layouts[starts[i]:starts[i + 1]].max())
        keep.append(top < num_classes)
        if top >= num_classes:
            skipped.append((key, f"label {top} >= num_classes {num_classes} (from the train clips)"))
    if not all(keep):
        val = _take(val, keep)
        if not val.keys:
            raise StageError(f"{clips}: every val clip has labels unseen in train")
    report_skipped("layout_vq", skipped, logger)
    logger.set_tag("layout_vq.val_source", val_source)
    model_cfg = dataclasses.replace(m, in_channels=num_classes, out_channels=num_classes)

    x_train, x_val = train.layouts, val.layouts
    config = {"model": dataclasses.asdict(model_cfg), "batch_size": params.batch_size,
              "lr": params.lr, "q_weight": params.q_weight,
              "dead_code_every": params.dead_code_every, "seed": params.loop.seed,
              "ema_decay": params.loop.ema_decay, "grad_clip": params.loop.grad_clip,
              "bf16": params.loop.bf16,
              "data": hashlib.sha1(x_train.tobytes()).hexdigest()[:16]}

    def make_input(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = batch.long()
        return F.one_hot(target, num_classes).permute(0, 3, 1, 2).float(), target

    task = VQTask(model_cfg, params.lr, params.q_weight, params.dead_code_every,
                  recon_loss=F.cross_entropy, make_input=make_input, config=config,
                  seed=params.loop.seed)

    def miou(true: np.ndarray, pred: np.ndarray) -> tuple[float, dict[int, float]]:
        ious = iou_per_class(true, pred, num_classes)
        return (float(np.mean(list(ious.values()))) if ious else 0.0), ious

    last: dict[str, np.ndarray] = {}  # the latest evaluation's outputs (the final one = the saved weights)

    def evaluator(model: VQAutoencoder, device: torch.device) -> dict[str, float]:
        logits, _ = predict(model, x_val, device, make_input=make_input)
        last["pred"] = logits.argmax(1).astype(np.uint8)
        last["tok_train"] = encode_tokens(model, x_train, device, make_input=make_input)
        usage = codebook_usage(last["tok_train"], model_cfg.codebook_size)
        return {"val/miou": miou(x_val, last["pred"])[0],
                "codebook/perplexity": usage["perplexity"], "codebook/dead_codes": usage["dead_codes"]}

    task.evaluator = evaluator
    batch_idx = array_batches(len(x_train), params.batch_size, params.loop.seed)
    x_train_t = torch.from_numpy(x_train)
    t_fit = time.perf_counter()
    result = fit(task, lambda s: (x_train_t[idx] for idx in batch_idx(s)), params.loop,
                 Path(ckpt_dir), logger, resume="auto")
    fit_s = time.perf_counter() - t_fit
    if not result.is_main:
        return {}

    # fit's final evaluation ran on the weights we save (EMA when on, else raw)
    pred, tok_train = last["pred"], last["tok_train"]
    mean_iou, ious = miou(x_val, pred)
    base = np.broadcast_to(majority_layout(x_train, num_classes), x_val.shape)
    base_miou, _ = miou(x_val, base)
    usage = codebook_usage(tok_train, model_cfg.codebook_size)
    th, tw = h // model_cfg.downsampling, w // model_cfg.downsampling
    metrics = {
        "available": 1.0,
        "num_classes": float(num_classes),
        "val/miou": mean_iou,
        **{f"val/iou/class_{c}": v for c, v in ious.items()},
        "val/pixel_accuracy": float((pred == x_val).mean()),
        "baseline/miou": base_miou,
        "baseline/pixel_accuracy": float((base == x_val).mean()),
        "codebook/perplexity": usage["perplexity"],
        "codebook/dead_codes": usage["dead_codes"],
        "codebook/used_codes": usage["used_codes"],
        "codebook/reseeded_total": float(task.reseeded_total),
        "codebook_size": float(model_cfg.codebook_size),
        "tokens_per_frame": float(th * tw),
        "train_clips": float(len(train.keys)),
        "val_clips": float(len(val.keys)),
        "train_frames": float(len(x_train)),
        "val_frames": float(len(x_val)),
        "skipped_clips": float(len(skipped)),
        "steps": float(result.step),
        "resumed_from": float(result.resumed_from if result.resumed_from is not None else -1),
        "fit_seconds": fit_s,
    }
    save_model(model_out, {"model": dataclasses.asdict(model_cfg)}, result.state["vq"],
               available=True, num_classes=num_classes, step=result.step,
               weights="ema" if params.loop.ema_decay > 0 else "raw", token_grid=[th, tw],
               skipped=[list(s) for s in skipped], val_source=val_source)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(artifacts_dir) if artifacts_dir else Path(tmp)
        n0 = val.frames[0]
        logger.log_artifact(layout_artifact(x_val[:n0], pred[:n0], val.keys[0], folder), "layout_vq")
    metrics["seconds"] = time.perf_counter() - start
    logger.log_metrics(metrics, step=result.step)
    write_json(metrics_out, metrics)
    return metrics


PATHS = {
    "clips": ("data/clips", "prepare's output folder"),
    "model": ("models/layout_vq.pt", "output model file"),
    "metrics": ("metrics/layout_vq.json", "output metrics file"),
    "ckpt": ("checkpoints/layout_vq", "checkpoint folder"),
    "artifacts": (None, "also keep the artifacts in this folder"),
}


def summary(metrics: dict[str, float], args: argparse.Namespace) -> str | None:
    if not (metrics.get("available", 0.0) and "val/miou" in metrics):
        return None
    return (f"val mIoU {metrics['val/miou']:.3f} (majority baseline "
            f"{metrics['baseline/miou']:.3f}), {int(metrics['num_classes'])} classes, perplexity "
            f"{metrics['codebook/perplexity']:.1f}, {int(metrics['codebook/dead_codes'])} dead "
            f"codes, {metrics['seconds']:.1f}s → {args.model}")


def main(argv: list[str] | None = None) -> None:
    stage_main("layout_vq", __doc__, PATHS,
               lambda p, a, log: run(p, a.clips, a.model, a.metrics, a.ckpt, log, a.artifacts),
               summary=summary, argv=argv)


if __name__ == "__main__":
    main()
