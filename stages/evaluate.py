"""Stage ``evaluate``: every synthesis task on held-out clips → SSIM, PSNR, DIV, FVD (paper §4).

Paper §4 "Metrics" (SSIM [77], PSNR, FVD [66]), Tables 1–6 / D2–D4, Fig. 6 (DIV). The tasks and
the per-task maths are in ``pipeline.evaluation.tasks``; FVD (I3D features, Fréchet distance) in
``pipeline.metrics.fvd``; the sampler in ``ccvs_models.sampler``.

1. Reads ``evaluate.split`` clips (``data/clips``: the real frames) and their tokens
   (``data/tokens``: frame codes, end frame, state, sound, class), matched by clip key.
2. For each task of ``evaluate.tasks``: S samples per input (one batch of B·S rows), decoded by
   D·S·E·F as the tokens arrive; a task the trained T cannot do is reported as skipped, with why.
3. Writes ``metrics/evaluate.json`` (``{"tasks": {task: {metric: value}}, "skipped": …, "fvd": the
   weights it used}``), the same as MLflow metrics ``<task>/<metric>``; with ground-truth layouts
   (the demo world) also ``psnr_objects``, ``ssim_objects``, ``edge_ratio_objects`` per task (the
   synthesized frames inside the moving objects, ``pipeline.metrics.objects``; absent without
   layouts) and ``baseline/copy_first/*`` (the real frame 0 copied, the no-model reference); per task a GIF (real clip
   then its samples, one row per input) and a PNG contact sheet in ``samples/evaluate/``, and
   ``plots/evaluate/<task>.csv`` (t, ssim, psnr) for ``dvc plots``.

FVD needs Kinetics-400 I3D weights (``evaluate.fvd.weights`` or the URL). Without them the value is
computed with a randomly initialised I3D and reported as ``fvd_untrained_i3d``, never as ``fvd``.

    python -m stages.evaluate --params params.yaml
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ccvs_models.sampler import SamplerConfig
from pipeline.atomic import write_json
from pipeline.training.distributed import device_for
from pipeline.evaluation.tasks import (
    TASKS,
    EvalData,
    comparison_grid,
    finite,
    frame_motion,
    frame_scores,
    per_timestep,
    resolve_task,
    run_task,
    sample_diversity,
    summarize,
)
from pipeline.data.media_write import write_gif, write_png
from pipeline.params import EvaluateParams
from pipeline.data.shards import NO_LAYOUT, iter_clips
from pipeline.synthesis.writers import contact_sheet, to_uint8
from pipeline.synthesis.models import load_models
from pipeline.tokens.shards import load_token_split, read_vocab
from pipeline.metrics.objects import video_object_scores
from pipeline.metrics.video import motion_mask
from pipeline.errors import StageError
from pipeline.stage import stage_main

STAGE = "evaluate"



def load_eval_data(clips: str | Path, tokens: str | Path, split: str, limit: int,
                   vocab: dict[str, Any]) -> EvalData:
    """The split's token samples and, matched by key, their real frames (first ``limit``)."""
    tok = load_token_split(tokens, split, vocab)
    if len(tok) == 0:
        raise StageError(f"{tokens}: no {split} token samples to evaluate")
    n = len(tok) if limit == 0 else min(limit, len(tok))
    tok = tok.take(np.arange(n))
    wanted = set(tok.keys)
    real: dict[str, np.ndarray] = {}
    layouts: dict[str, np.ndarray] = {}  # only fully labelled ones (NO_LAYOUT: a frame without)
    for sample in iter_clips(clips, split):
        if sample["key"] in wanted:
            real[sample["key"]] = sample["frames"]
            lay = sample.get("layout")
            if lay is not None and lay.shape[0] >= len(sample["frames"]) and not (lay == NO_LAYOUT).any():
                layouts[sample["key"]] = lay[: len(sample["frames"])]
    missing = [k for k in tok.keys if k not in real]
    if missing:
        raise StageError(f"{clips}: {len(missing)} {split} clips of {tokens} are missing "
                            f"(e.g. {missing[0]}); rerun tokenize after prepare")
    frames = np.stack([real[k] for k in tok.keys])  # (n, T, H, W, 3) uint8
    if frames.shape[1] != tok.frames.shape[1]:
        raise StageError(f"{clips}: clips have {frames.shape[1]} frames, their tokens "
                            f"{tok.frames.shape[1]}")
    video = torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
    as_long = (lambda a: None if a is None else torch.from_numpy(a.astype(np.int64)))  # noqa: E731
    has_layouts = all(k in layouts for k in tok.keys)  # object metrics: every clip or none
    return EvalData(list(tok.keys), video, as_long(tok.frames), as_long(tok.end_frame),
                    torch.from_numpy(tok.label), as_long(tok.state), as_long(tok.audio),
                    as_long(tok.layout),
                    np.stack([layouts[k] for k in tok.keys]) if has_layouts else None)


def _write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["t", "ssim", "psnr"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def run(params: EvaluateParams, clips: str | Path, tokens: str | Path, transformer: str | Path,
        autoencoder: str | Path, metrics_out: str | Path, plots_dir: str | Path,
        samples_dir: str | Path, logger: Any, fps: int = 10) -> dict[str, Any]:
    """Run every task; write metrics, curves, GIFs and sheets; return the metrics document."""
    from pipeline.metrics import fvd as fvd_lib

    start_time = time.perf_counter()
    device = device_for(0, params.device)
    vocab = read_vocab(tokens)
    models = load_models(transformer, autoencoder, tokens, device=device)
    ae, tr = models.autoencoder.eval(), models.transformer.eval()
    data = load_eval_data(clips, tokens, params.split, params.num_videos, vocab)
    n_frames = params.num_frames or data.frames.shape[1]
    if n_frames > data.frames.shape[1]:
        raise StageError(f"evaluate.num_frames = {n_frames} but the {params.split} clips have "
                            f"{data.frames.shape[1]} frames")
    c = ae.config.context_frames if params.context_frames is None else params.context_frames
    if (problem := ae.config.context_problem(c)) is not None:  # e.g. c ≥ 1 for a model without F
        raise StageError(f"{autoencoder}: {problem} (evaluate.context_frames)")
    sampler = SamplerConfig(top_k=params.top_k, temperature=params.temperature, kv_cache=True)
    s = params.samples
    samples_dir, plots_dir = Path(samples_dir), Path(plots_dir)
    samples_dir.mkdir(parents=True, exist_ok=True)

    i3d, i3d_info = fvd_lib.load_i3d(params.fvd.weights or None,
                                     params.fvd.url or fvd_lib.I3D_URL, device=device)
    fvd_name = fvd_lib.fvd_metric_name(i3d_info)
    logger.set_tags({"evaluate.fvd_metric": fvd_name,
                     "evaluate.i3d_weights": i3d_info.location,
                     "evaluate.i3d_pretrained": str(i3d_info.pretrained)})
    real_clips = data.frames[:, :n_frames]
    if params.fvd.frames > n_frames:
        raise StageError(f"evaluate.fvd.frames = {params.fvd.frames} but the videos have "
                            f"{n_frames} frames (evaluate.num_frames)")
    real_features: dict[int, np.ndarray] = {}  # I3D features of the real clips, per skip
    moving = motion_mask(real_clips) if s > 1 else None  # DIV's moving parts, once for all tasks
    n_fvd = len(data) if params.fvd.videos == 0 else min(params.fvd.videos, len(data))
    if n_fvd < 2:
        raise StageError(f"FVD needs at least 2 videos, the {params.split} split has {len(data)}")

    baseline: dict[str, float] = {}
    if data.layouts is not None:  # the no-model reference: the real frame 0 copied (issue 17)
        copied = real_clips[:, None, :1].expand(-1, 1, n_frames, -1, -1, -1)
        baseline = video_object_scores(real_clips, copied, data.layouts, start=1)
        baseline["psnr"] = float(frame_scores(copied, real_clips)[1][:, :, 1:].mean())
        logger.log_metrics({f"baseline/copy_first/{k}": v for k, v in baseline.items()
                            if np.isfinite(v)})

    results: dict[str, dict[str, float | None]] = {}
    skipped: dict[str, str] = {}
    starts: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in params.tasks:
        spec, how = resolve_task(TASKS[name], tr, data)
        if spec is None:
            skipped[name] = how
            print(f"evaluate: skipping {name}: {how}", flush=True)
            continue
        starts[name] = how
        t0 = time.perf_counter()
        fakes = []
        bar = tqdm(total=len(data) * n_frames, desc=f"evaluate {name}", unit="frame",
                   disable=None)
        for lo in range(0, len(data), params.batch_size):
            batch = data.rows(slice(lo, lo + params.batch_size))
            batch = dataclasses.replace(batch, **{
                f.name: getattr(batch, f.name).to(device)
                for f in dataclasses.fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)})
            seeds = [params.seed + (lo + i) * s + j for i in range(len(batch)) for j in range(s)]
            out = run_task(spec, ae, tr, batch, n_frames, s, sampler, c, seeds,
                           on_frame=lambda t, b=len(batch): bar.update(b))
            fakes.append(out.frames.cpu())
            bar.n = min(lo + len(batch), len(data)) * n_frames
            bar.refresh()
        bar.close()
        fake = torch.cat(fakes)  # (n, S, n_frames, 3, H, W)
        m = out.start_frames
        ssim_v, psnr_v = frame_scores(fake, real_clips)
        has_ref = how != "sampled"  # an unconditional frame 0 has no real counterpart
        div, div_moving = sample_diversity(fake, moving)
        row = summarize(name, ssim_v, psnr_v, m, params.timesteps, div, div_moving, has_ref)
        row["motion"] = frame_motion(fake, max(m - 1, 0))  # from the last given frame on
        if has_ref and data.layouts is not None and m < n_frames:  # inside the moving objects
            row.update(video_object_scores(real_clips, fake, data.layouts, start=max(m, 1)))
        skip = 0 if params.fvd.count_conditioning else m
        fvd_frames = min(params.fvd.frames, n_frames - skip)
        if skip not in real_features:
            real_features[skip] = fvd_lib.i3d_features(
                i3d, real_clips[:n_fvd, skip:skip + fvd_frames], params.fvd.batch_size,
                desc="I3D real")
        fvd = fvd_lib.compute_fvd(real_clips[:n_fvd], fake[:n_fvd, 0], i3d, i3d_info,
                                  batch_size=params.fvd.batch_size, frames=fvd_frames,
                                  skip_frames=skip, repeats=params.fvd.repeats, seed=params.seed,
                                  real_features=real_features[skip])
        row[fvd_name] = fvd["mean"]
        if params.fvd.repeats > 1:
            row[f"{fvd_name}_std"] = fvd["std"]
        seconds[name] = time.perf_counter() - t0
        results[name] = {k: finite(v) for k, v in row.items()}
        logger.log_metrics({f"{name}/{k}": v for k, v in row.items() if np.isfinite(v)})
        if has_ref:
            _write_curve(plots_dir / f"{name}.csv", per_timestep(ssim_v, psnr_v, m))
        g = min(params.gif_videos, len(data))
        if g:
            grid = comparison_grid(real_clips[:g], fake[:g])
            gif = write_gif(samples_dir / f"{name}.gif", grid, fps=fps, scale=2)
            sheet = contact_sheet(to_uint8(torch.cat([real_clips[:1], fake[0]])))
            png = write_png(samples_dir / f"{name}.png", sheet)
            logger.log_artifact(str(gif), f"samples/{name}")
            logger.log_artifact(str(png), f"samples/{name}")
        print(f"evaluate: {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)

    doc = {
        "tasks": results,
        "skipped": skipped,
        "start": starts,
        "fvd": {"metric": fvd_name, "pretrained": i3d_info.pretrained, "weights": i3d_info.location,
                "videos": n_fvd, "frames": params.fvd.frames,
                "count_conditioning": params.fvd.count_conditioning},
        "baseline": {"copy_first": {k: finite(v) for k, v in baseline.items()}} if baseline else {},
        "real_motion": frame_motion(real_clips),  # the same measure on the real clips
        "inputs": len(data),
        "samples": s,
        "num_frames": n_frames,
        "context_frames": c,
        "task_seconds": seconds,
        "seconds": time.perf_counter() - start_time,
    }
    write_json(metrics_out, doc)
    logger.log_metric("seconds", doc["seconds"])
    return doc


PATHS = {
    "clips": "data/clips",
    "tokens": "data/tokens",
    "transformer": "models/transformer.pt",
    "autoencoder": "models/autoencoder.pt",
    "metrics": "metrics/evaluate.json",
    "plots": "plots/evaluate",
    "samples": "samples/evaluate",
}


def main(argv: list[str] | None = None) -> None:
    stage_main(STAGE, __doc__, PATHS,
               lambda p, a, log: run(p, a.clips, a.tokens, a.transformer, a.autoencoder,
                                     a.metrics, a.plots, a.samples, log), argv=argv)


if __name__ == "__main__":
    main()
