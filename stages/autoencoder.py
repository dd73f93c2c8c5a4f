"""Stage ``autoencoder``: train E, Q, F, D (+ Δi, Δt) on the clips (§3.2, App. A, C, D, F; Table 1).

1. streams the train clips from prepare's shards (``pipeline.training.autoencoder.batches.clip_stream``
   over ``pipeline.data.stream.ShardStream``: shuffle blocks of ``training.shuffle_block`` clips,
   each clip once per epoch, split over ranks and ``training.data_workers``, exact resume at the
   position a checkpoint recorded), never the whole set in memory; holds in memory only the
   ``val_clips`` validation clips (``val_frames`` frames each; the demo's 8 × 16 × 64 × 64 × 3
   bytes are 1.6 MB). Without a val split it holds out the clips of ~10 % of the train videos
   (``pipeline.data.splits``: the stream skips them, the first ``val_clips`` are validated on)
   and says so (stderr, MLflow tag ``autoencoder.val_source = train_holdout``, metrics);
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
from pipeline.training.autoencoder.batches import clip_stream
from pipeline.training.autoencoder.forward import copy_first_scores, reconstruct_clips, side_by_side
from pipeline.atomic import write_json
from pipeline.training.checkpoint import save_model, to_plain
from pipeline.data.media_write import write_gif
from pipeline.params import AutoencoderParams
from pipeline.data import storage
from pipeline.data.shard_index import INDEX_FILE, read_index
from pipeline.data.shards import count_samples, iter_clips, list_shards
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
               num_frames: int = 0, keys: set[str] | frozenset[str] | None = None) -> ClipSet:
    """The clips of ``split`` (only those in ``keys`` when given; the first ``limit``) stacked in
    memory — the validation set, benches; training streams. A clip of another shape stops the
    stage.

    Layouts (the object-region metrics' masks) are kept when every clip has one; clips without
    any give ``layouts = None`` (the metrics are then absent). A demo clip without its layout,
    or some clips with and some without, stop the stage with the clip named.
    """
    frames, keys_out, layouts, missing = [], [], [], []
    for sample in iter_clips(clips_dir, split, limit=None if keys is not None else limit):
        if keys is not None:
            if sample["key"] not in keys:
                continue
            if limit is not None and len(frames) >= limit:
                break
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
        keys_out.append(sample["key"])
    if not frames:
        return ClipSet(np.zeros((0, 0, 0, 0, 3), np.uint8), [])
    demo = [m for m in missing if m[1]]
    if demo or (missing and layouts):
        key, _ = (demo or missing)[0]
        raise StageError(f"{clips_dir}: clip {key} ({split}) has no layout.npy, which the "
                         "object-region metrics need on demo data; re-run `dvc repro prepare` "
                         "(demo_data writes layouts/<video>.npz for every video)")
    return ClipSet(np.stack(frames), keys_out, np.stack(layouts) if layouts else None)


def split_keys(clips_dir: str | Path, split: str) -> list[str]:
    """The keys of ``split``'s clips: from prepare's ``manifest.parquet`` (no shard is read), else
    by reading the clips one at a time (a folder of shards written by other means)."""
    manifest = Path(clips_dir) / "manifest.parquet"
    if not storage.is_url(str(clips_dir)) and manifest.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(manifest, columns=["key", "split"]).to_pydict()
        return [k for k, s in zip(table["key"], table["split"]) if s == split]
    return [sample["key"] for sample in iter_clips(clips_dir, split)]


def count_clips(clips_dir: str | Path, urls: list[str]) -> int:
    """How many clips the train shards ``urls`` hold: from the shard index when the shards are
    in object storage (``shards.json`` lists each shard's samples), else from the tar headers
    (no clip is decoded)."""
    index = None if storage.is_url(str(clips_dir)) else read_index(clips_dir)
    if index is not None:
        return sum(int(entry["samples"]) for entry in index["splits"].get("train", []))
    return sum(count_samples(url) for url in urls)


def data_fingerprint(clips_dir: str | Path, urls: list[str]) -> str:
    """What a resumed checkpoint's data must match: prepare's manifest and shard index (their
    bytes change whenever the clips do) and the shard list; a folder without them adds each
    local shard's size and modification time."""
    h = hashlib.sha1("\n".join(urls).encode())
    folder = None if storage.is_url(str(clips_dir)) else Path(clips_dir)
    found = False
    for name in ("manifest.parquet", INDEX_FILE):
        if folder is not None and (folder / name).is_file():
            h.update((folder / name).read_bytes())
            found = True
    if not found:
        for url in urls:
            if not storage.is_url(url) and Path(url).is_file():
                st = Path(url).stat()
                h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def fit_to_data(params: AutoencoderParams, shape: tuple[int, int, int]) -> AutoencoderParams:
    """``params`` with the discriminators' input size set to the frames' size; stops with a
    message naming the param when clips of ``shape`` = (T, H, W) do not fit the model."""
    t, h, w = shape
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
    urls = list_shards(clips_dir, "train")
    first = next(iter_clips(urls, limit=1), None)
    if first is None:
        raise StageError(f"{clips_dir}: no train clips (run the prepare stage first)")
    frames0 = first["frames"]
    if frames0.ndim != 4 or frames0.shape[-1] != 3 or frames0.dtype != np.uint8:
        raise StageError(f"{clips_dir}: clip {first['key']} (train): frames must be uint8 "
                         f"T×H×W×3, got {frames0.dtype} {frames0.shape}")
    shape = tuple(int(n) for n in frames0.shape[:3])
    params = fit_to_data(params, shape)  # type: ignore[arg-type]
    held: frozenset[str] = frozenset()
    val_source = "val"
    no_val_folder = Path(clips_dir).is_dir() and not (Path(clips_dir) / "val").is_dir()
    val = ClipSet(frames0[None][:0], []) if no_val_folder else load_clips(
        clips_dir, "val", limit=params.val_clips, num_frames=params.val_frames)
    train_clips = count_clips(clips_dir, urls)
    if len(val.keys) == 0:  # the clips of whole train videos held out (pipeline.data.splits)
        train_keys = split_keys(clips_dir, "train")
        held = frozenset(holdout_keys(train_keys, seed=params.loop.seed))
        val_source = "train_holdout"
        if not held or len(held) == len(train_keys):
            raise StageError(f"{clips_dir}: no val clips and too few train videos to hold some out")
        val = load_clips(urls, None, limit=params.val_clips, num_frames=params.val_frames,
                         keys=held)
        print(f"{STAGE}: no val clips in {clips_dir}: evaluating on {len(val.keys)} held-out "
              f"clips of the train videos (not trained on)", file=sys.stderr)
        train_clips = len(train_keys) - len(held)
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

    data_hash = data_fingerprint(clips_dir, urls)
    loop = params.loop
    config = {
        "params": {k: v for k, v in to_plain(params).items() if k != "loop"},
        "loop": {k: getattr(loop, k) for k in ("ema_decay", "bf16", "seed", "grad_clip",
                                               "shuffle_block")},
        "data": data_hash,
        "vgg": vgg_info,
    }
    task = AutoencoderTask(params, vgg, val.frames, config=config, val_layouts=val.layouts)
    curves = CurveLogger(logger, plots_dir,
                         {"val": VAL_CURVE + (OBJECT_CURVE if val.layouts is not None else ())})
    t_fit = time.perf_counter()
    logger.set_tag(f"{STAGE}.train_shards", str(len(urls)))
    stream = clip_stream(urls, params, shape, str(clips_dir), exclude=held)  # type: ignore[arg-type]
    result = fit(task, stream, loop, Path(ckpt_dir), curves, resume=resume)
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
        "train_clips": float(train_clips),
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
