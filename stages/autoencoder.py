"""Stage ``autoencoder``: train E, Q, F, D (+ Δi, Δt) on the clips (§3.2, App. A, C, D, F; Table 1).

1. loads the train clips into memory and ``val_clips`` validation clips (``val_frames`` frames
   each). Without a val split it holds out the clips of the last ~10 % of the train videos and
   says so (stderr, MLflow tag ``autoencoder.val_source = train_holdout``, metrics);
2. loads the VGG of Eq. (4) (``pipeline.weights.load_vgg``: ``vgg_weights`` path, the torch hub
   cache, then ``vgg_url``). Without weights it prints one line, sets the MLflow tag
   ``vgg_weights = unavailable: <reason>`` and trains without the term — never silently;
3. trains with the shared loop (``pipeline.training.loop.fit``) the task of ``pipeline.training.autoencoder.task``:
   image steps (self-supervised context, L_c) alternating with recursive video steps (Δt);
   checkpoints in ``<ckpt_dir>``, resumed when they were written by the same config and data
   (``fit(resume="auto")``: a changed param starts afresh); evaluation every ``loop.eval_every`` steps with the Table 1
   "Reconstruction" protocol (PSNR / SSIM, codebook perplexity and usage);
4. writes ``models/autoencoder.pt`` (the EMA weights of E, Q, F, D with their
   ``AutoencoderConfig``; meta: step, val metrics, which VGG weights), ``metrics/autoencoder.json``,
   ``<plots_dir>/val.csv`` (the validation curve, x = step, for ``dvc plots``) and
   ``<plots_dir>/reconstruction.gif`` (real | reconstructed val clips), also logged as artifacts.

    python -m stages.autoencoder --params params.yaml --clips data/clips
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ccvs_models.autoencoder import CCVSAutoencoder
from pipeline.training.autoencoder.task import AutoencoderTask
from pipeline.training.autoencoder.batches import make_batch_stream
from pipeline.training.autoencoder.forward import copy_first_scores, reconstruct_clips, side_by_side
from pipeline.atomic import write_json
from pipeline.training.checkpoint import save_model, to_plain
from pipeline.data.media_write import write_gif
from pipeline.params import AutoencoderParams
from pipeline.data.shards import iter_clips
from pipeline.training.curves import CurveLogger
from pipeline.training.loop import fit
from pipeline.weights import WeightsError, load_vgg
from pipeline.data.splits import holdout_keys
from pipeline.errors import StageError
from pipeline.stage import stage_main

STAGE = "autoencoder"
# the validation curve (plots/autoencoder/val.csv, for dvc plots): step, then these metrics
VAL_CURVE = ("val/psnr", "val/ssim", "val/psnr_last", "val/ssim_last", "codebook/perplexity",
             "codebook/usage")
OBJECT_CURVE = ("val/psnr_objects", "val/ssim_objects", "val/edge_ratio_objects")  # with layouts



# --------------------------------------------------------------------------- data


@dataclasses.dataclass
class ClipSet:
    frames: np.ndarray  # uint8 (N, T, H, W, 3)
    keys: list[str]
    layouts: np.ndarray | None = None  # uint8 (N, T, H, W) when every clip has one (demo data)


DEMO_VIDEO = re.compile(r"demo_\d+$")  # the demo world's video ids: its clips always carry layouts


def load_clips(clips_dir: str | Path, split: str, limit: int | None = None,
               num_frames: int = 0) -> ClipSet:
    """The clips of ``split`` stacked in memory; a clip of another shape stops the stage.

    Layouts (the object-region metrics' masks) are kept when every clip has one; clips without
    any give ``layouts = None`` (the metrics are then absent). A demo clip without its layout,
    or some clips with and some without, stop the stage with the clip named.
    """
    frames, keys, layouts, missing = [], [], [], []
    for sample in iter_clips(clips_dir, split, limit=limit):
        f = sample["frames"]
        if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
            raise StageError(f"{clips_dir}: clip {sample['key']} ({split}): frames must be uint8 "
                             f"T×H×W×3, got {f.dtype} {f.shape}")
        if frames and f.shape[1:] != frames[0].shape[1:]:
            raise StageError(f"{clips_dir}: clip {sample['key']} ({split}) has frames "
                             f"{f.shape[1:3]}, others {frames[0].shape[1:3]}")
        if num_frames:
            if len(f) < num_frames:
                raise StageError(f"{clips_dir}: clip {sample['key']} ({split}) has {len(f)} "
                                 f"frames, {num_frames} needed (autoencoder.val_frames)")
            f = f[:num_frames]
        if frames and len(f) != len(frames[0]):
            raise StageError(f"{clips_dir}: clip {sample['key']} ({split}) has {len(f)} frames, "
                             f"others {len(frames[0])} (prepare writes clips of one length)")
        lay = sample.get("layout")
        video = str(sample.get("meta", {}).get("video_id", sample["key"].rsplit("_", 1)[0]))
        if lay is None:
            missing.append((sample["key"], bool(DEMO_VIDEO.match(video))))
        else:
            if lay.shape[:3] != sample["frames"].shape[:3]:
                raise StageError(f"{clips_dir}: clip {sample['key']} ({split}): layout {lay.shape} "
                                 f"does not match its frames {sample['frames'].shape[:3]}; "
                                 "re-run prepare")
            layouts.append(lay[: len(f)])
        frames.append(f)
        keys.append(sample["key"])
    if not frames:
        return ClipSet(np.zeros((0, 0, 0, 0, 3), np.uint8), [])
    demo = [m for m in missing if m[1]]
    if demo or (missing and layouts):
        key, _ = (demo or missing)[0]
        raise StageError(f"{clips_dir}: clip {key} ({split}) has no layout.npy, which the "
                         "object-region metrics need on demo data; re-run `dvc repro prepare` "
                         "(demo_data writes layouts/<video>.npz for every video)")
    return ClipSet(np.stack(frames), keys, np.stack(layouts) if layouts else None)


def holdout(train: ClipSet, seed: int) -> tuple[ClipSet, ClipSet]:
    """(train, val): the clips of whole train videos held out (``pipeline.data.splits``)."""
    held = holdout_keys(train.keys, seed=seed)
    is_val = np.array([k in held for k in train.keys], bool)
    pick = lambda mask: ClipSet(train.frames[mask], [k for k, m in zip(train.keys, mask) if m],  # noqa: E731
                                None if train.layouts is None else train.layouts[mask])
    return pick(~is_val), pick(is_val)


def fit_to_data(params: AutoencoderParams, frames: np.ndarray) -> AutoencoderParams:
    """``params`` with the discriminators' input size set to the frames' size; stops with a
    message naming the param when the clips do not fit the model."""
    _, t, h, w, _ = frames.shape
    d = params.model.downsampling
    if h % d or w % d:
        raise StageError(f"frames of {h}×{w} are not divisible by 2^K = {d} "
                         f"(autoencoder.model.num_levels)")
    if (params.use_image_disc or params.use_temporal_disc) and h != w:
        raise StageError(f"frames of {h}×{w}: the discriminators need square frames "
                         f"(prepare.resolution crops them square)")
    try:
        params = dataclasses.replace(
            params, image_disc=dataclasses.replace(params.image_disc, resolution=h),
            temporal_disc=dataclasses.replace(params.temporal_disc, resolution=h))
    except ValueError as err:
        raise StageError(f"autoencoder.image_disc / temporal_disc: {err}") from None
    if params.video_every and params.video_warmup + params.video_frames > t:
        raise StageError(f"autoencoder.video_warmup + video_frames = "
                         f"{params.video_warmup} + {params.video_frames} but clips have {t} frames")
    return params


# --------------------------------------------------------------------------- outputs


def ema_model_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``CCVSAutoencoder`` state dict inside the wrapper's (``model.`` prefix removed)."""
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


# --------------------------------------------------------------------------- stage


def run(
    params: AutoencoderParams,
    clips_dir: str | Path,
    out_model: str | Path,
    metrics_path: str | Path,
    plots_dir: str | Path,
    ckpt_dir: str | Path,
    logger: Any,
    resume: bool | str = "auto",
) -> dict[str, float]:
    """Train on ``clips_dir`` (prepare's output); write model, metrics, curve and GIF; return metrics."""
    start = time.perf_counter()
    out_model, metrics_path, plots_dir = Path(out_model), Path(metrics_path), Path(plots_dir)
    train = load_clips(clips_dir, "train")
    if len(train.keys) == 0:
        raise StageError(f"{clips_dir}: no train clips (run the prepare stage first)")
    params = fit_to_data(params, train.frames)
    val_source = "val"
    no_val_folder = Path(clips_dir).is_dir() and not (Path(clips_dir) / "val").is_dir()
    val = ClipSet(train.frames[:0], []) if no_val_folder else load_clips(
        clips_dir, "val", limit=params.val_clips, num_frames=params.val_frames)
    if len(val.keys) == 0:
        train, val = holdout(train, params.loop.seed)
        val_source = "train_holdout"
        if len(val.keys) == 0 or len(train.keys) == 0:
            raise StageError(f"{clips_dir}: no val clips and too few train videos to hold some out")
        val = ClipSet(val.frames[: params.val_clips, : params.val_frames or None],
                      val.keys[: params.val_clips],
                      None if val.layouts is None
                      else val.layouts[: params.val_clips, : params.val_frames or None])
        print(f"{STAGE}: no val clips in {clips_dir}: evaluating on {len(val.keys)} held-out "
              f"clips of the train videos (not trained on)", file=sys.stderr)
    logger.set_tag(f"{STAGE}.val_source", val_source)

    vgg, vgg_info = None, "off (use_vgg: false)"
    if params.use_vgg:
        try:
            loaded = load_vgg(params.vgg_weights or None, params.vgg_url, params.vgg.arch,
                              layers=params.vgg.layers)
        except WeightsError as err:
            raise StageError(str(err)) from None
        vgg = loaded.module
        print(f"{STAGE}: {loaded.info.message}", file=sys.stderr)  # once, whatever the outcome
        if vgg is None:
            reason = loaded.info.message.removeprefix("VGG weights unavailable: ")
            vgg_info = f"unavailable: {reason}"
        else:
            vgg.cfg = params.vgg  # same arch and layers; carries the per-layer weights
            vgg_info = f"{loaded.info.source}: {loaded.info.ident}"
    logger.set_tag("vgg_weights", vgg_info)

    data_hash = hashlib.sha1(train.frames.tobytes()).hexdigest()[:16]
    loop = params.loop
    config = {
        "params": {k: v for k, v in to_plain(params).items() if k != "loop"},
        "loop": {k: getattr(loop, k) for k in ("ema_decay", "bf16", "seed", "grad_clip")},
        "data": data_hash,
        "vgg": vgg_info,
    }
    task = AutoencoderTask(params, vgg, val.frames, config=config, val_layouts=val.layouts)
    curves = CurveLogger(logger, plots_dir,
                         {"val": VAL_CURVE + (OBJECT_CURVE if val.layouts is not None else ())})
    t_fit = time.perf_counter()
    result = fit(task, make_batch_stream(train.frames, params, loop.seed), loop, Path(ckpt_dir),
                 curves, resume=resume)
    fit_s = time.perf_counter() - t_fit
    if not result.is_main:
        return {}
    curves.finish()

    state = ema_model_state(result.state["ae"])
    evaluation = task.last_eval
    if evaluation is None:  # no evaluation ran in this process: do it now on the saved weights
        model = CCVSAutoencoder(params.model)
        model.load_state_dict(state)
        evaluation = reconstruct_clips(model, val.frames, "cpu", layouts=val.layouts)
    val_metrics = {k: v for k, v in result.eval_metrics.items()}
    times = {k: v for k, v in result.metrics.items() if k.startswith("time/")}
    metrics: dict[str, float] = {
        **val_metrics,
        "steps": float(result.step),
        "train_clips": float(len(train.keys)),
        "val_clips": float(len(val.keys)),
        "val_frames": float(val.frames.shape[1]),
        "val_holdout": 1.0 if val_source == "train_holdout" else 0.0,
        "vgg_used": 1.0 if vgg is not None else 0.0,
        "codebook/reseeded_total": float(task.reseeded_total),
        "resumed_from": float(result.resumed_from if result.resumed_from is not None else -1),
        "fit_seconds": fit_s,
        **times,
        **copy_first_scores(val.frames, val.layouts),  # the no-model reference
    }
    save_model(out_model, dataclasses.asdict(params.model), state, step=result.step,
               weights="ema" if loop.ema_decay > 0 else "raw", val_metrics=val_metrics,
               val_source=val_source, vgg_weights=vgg_info)
    n = min(params.gif_clips, len(val.keys))
    gif = plots_dir / "reconstruction.gif"
    if n > 0:
        write_gif(gif, side_by_side(val.frames[:n], evaluation.recon[:n]),
                  fps=int(os.environ.get("CCVS_GIF_FPS", "5")), scale=2)
        logger.log_artifact(gif, STAGE)
    logger.log_artifact(plots_dir / "val.csv", STAGE)
    metrics["seconds"] = time.perf_counter() - start
    write_json(metrics_path, metrics)
    return metrics


PATHS = {
    "clips": ("data/clips", "prepare's output folder"),
    "model": ("models/autoencoder.pt", "output model file"),
    "metrics": ("metrics/autoencoder.json", "output metrics"),
    "plots": ("plots/autoencoder", "folder of val.csv and the GIF"),
    "ckpt": ("checkpoints/autoencoder", "checkpoint folder"),
}


def summary(metrics: dict[str, float], args: argparse.Namespace) -> str:
    return (f"val PSNR {metrics.get('val/psnr', float('nan')):.2f} dB, SSIM "
            f"{metrics.get('val/ssim', float('nan')):.3f} (last frame "
            f"{metrics.get('val/psnr_last', float('nan')):.2f} dB), codebook perplexity "
            f"{metrics.get('codebook/perplexity', float('nan')):.1f}, {metrics['steps']:.0f} steps "
            f"in {metrics['seconds']:.0f}s → {args.model}")


def main(argv: list[str] | None = None) -> None:
    stage_main(STAGE, __doc__, PATHS,
               lambda p, a, log: run(p, a.clips, a.model, a.metrics, a.plots, a.ckpt, log),
               summary=summary, argv=argv)


if __name__ == "__main__":
    main()
