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

The paper's protocol, as params a preset sets: ``start_frames`` real frames given (BAIR 1,
Kinetics 5, AudioSet-Drums 15), ``num_frames`` per video (16), SSIM / PSNR at ``timesteps`` counted
1-based as the paper does (``ssim@15`` is the 15th frame; a given frame is never scored), FVD on
``fvd.videos`` videos in ``fvd.repeats`` evaluation runs → mean ± std (``pipeline.metrics.fvd_runs``;
the paper: 5 runs of 256 on BAIR), the real clips' I3D features computed from their arrays and
cached by a hash of what determines them (``--fvd-cache``), and a warning when the videos per run
are too few for a full-rank covariance.

Control metrics (``pipeline.evaluation.control_metrics``): the position estimator
(``models/position.pt``, App. A) runs on the synthesized frames of every task with a real
counterpart; its trajectory is compared with the real clip's (``trajectory_error_px``), its speed
with the sound track's loudness (``sound_sync``), and its shape classified against the clip's class
by a classifier fitted on the train clips' trajectories (``class_accuracy``). ``end/ssim`` and
``end/psnr`` score the frame at the end frame's index in every task, so point-to-point compares
with prediction at the same frame. Without the estimator these are skipped, with the reason.

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

from ccvs_models.position import PositionEstimator, PositionEstimatorConfig
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
from pipeline.evaluation.control_metrics import ControlReference, fit_trajectory_classifier, loudness_envelope
from pipeline.tokens.shards import StateBins, load_token_split, read_vocab
from pipeline.training.checkpoint import load_model
from pipeline.metrics.objects import video_object_scores
from pipeline.metrics.video import motion_mask
from pipeline.engine.cluster import engine_params, open_engine
from pipeline.engine.config import LOCAL, EngineParams
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


def load_estimator(path: str | Path, device: torch.device) -> PositionEstimator | None:
    """``models/position.pt`` (the ``positions`` stage, App. A) → the estimator, eval mode; None
    for the placeholder the stage writes without annotations (``meta["available"] = False``)."""
    config, state, meta = load_model(path)
    if not meta.get("available", True):
        return None
    cfg = PositionEstimatorConfig(**{**config, "channels": tuple(config["channels"])})
    model = PositionEstimator(cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


@torch.no_grad()
def estimate_trajectories(estimator: PositionEstimator, video: torch.Tensor,
                          batch: int = 256) -> np.ndarray:
    """video (..., n, 3, H, W) in [−1, 1] → (..., n, 2) gripper positions in pixels, estimated on
    the frames as they would be saved (uint8), like the estimator's training frames."""
    flat = torch.from_numpy(to_uint8(video.flatten(0, -4))).permute(0, 3, 1, 2)
    dev = next(estimator.parameters()).device
    out = [estimator(flat[i:i + batch].to(dev).float().div(127.5).sub(1.0)).xy.float().cpu()
           for i in range(0, len(flat), batch)]
    return torch.cat(out).reshape(*video.shape[:-3], 2).numpy()


def clip_audio(clips: str | Path, split: str, keys: list[str]) -> np.ndarray | None:
    """(n, samples) the clips' sound tracks in ``keys`` order, or None when any clip has none."""
    wanted, found = set(keys), {}
    for sample in iter_clips(clips, split):
        if sample["key"] in wanted and sample.get("audio") is not None:
            found[sample["key"]] = sample["audio"]
    if len(found) < len(keys) or len({len(a) for a in found.values()}) != 1:
        return None
    return np.stack([found[k] for k in keys])


def control_reference(data: EvalData, estimator: PositionEstimator | None, clips: str | Path,
                      tokens: str | Path, split: str, vocab: dict[str, Any], n_frames: int
                      ) -> tuple[ControlReference, dict[str, str]]:
    """What the controls ask for on ``data`` (pipeline.evaluation.control_metrics) and, per
    control metric it cannot compute, why."""
    why: dict[str, str] = {}
    if estimator is None:
        why = {k: "no position estimator (models/position.pt; no annotations?)" for k in
               ("trajectory_error_px", "sound_sync", "class_accuracy")}
        return ControlReference(None, None, None, None), why
    trajectory = estimate_trajectories(estimator, data.frames[:, :n_frames])
    audio = clip_audio(clips, split, data.keys)
    envelope = None
    if audio is None:
        why["sound_sync"] = "the clips have no sound track"
    else:
        envelope = loudness_envelope(audio, data.frames.shape[1])[:, :n_frames]
    classifier = None
    train = load_token_split(tokens, "train", vocab)
    classes = int(vocab.get("label", {}).get("num_classes", 0))
    if len(train) == 0:
        why["class_accuracy"] = "no train clips to learn the classes' trajectories from"
    elif train.state is None or not vocab.get("state"):
        why["class_accuracy"] = "the train tokens have no trajectories (state)"
    elif len(np.unique(train.label)) < 2:
        why["class_accuracy"] = "the train clips carry fewer than 2 classes"
    else:
        xy = StateBins.from_dict(vocab["state"]).dequantize(train.state)[:, :n_frames]
        ok = np.isfinite(xy).all(axis=(1, 2))
        classifier = fit_trajectory_classifier(xy[ok], train.label[ok], max(classes, 2))
    return ControlReference(trajectory, envelope, data.label.numpy(), classifier), why


@dataclasses.dataclass
class SynthesisJob:
    """What every batch of one task shares (sent once to each engine worker)."""

    spec: Any  # the task (pipeline.evaluation.tasks.TaskSpec)
    num_frames: int
    samples: int  # S per input
    sampler: SamplerConfig
    context_frames: int
    seed: int  # sample j of input i draws from seed + i·S + j, whoever computes it
    device: str  # evaluate.device, resolved where the batch runs
    threads: int  # torch threads of the run: float sums (so samples) can depend on it
    progress: Any = None  # a tqdm bar in this process (per frame); None on engine workers

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "progress": None}  # a bar stays in the process that draws it


def synthesize_batch(item: tuple[int, EvalData], ae: Any, tr: Any,
                     job: SynthesisJob) -> tuple[torch.Tensor, int]:
    """S samples of every input of one batch (inputs ``lo`` …), here or on an engine worker:
    (frames (B, S, n, 3, H, W) on the CPU, start frames m)."""
    lo, batch = item
    if torch.get_num_threads() != job.threads:  # an engine worker: compute as this process would
        torch.set_num_threads(job.threads)
    # channels-last conv weights as ``load_models`` makes them (a module sent to a worker arrives
    # contiguous, and oneDNN then rounds D·S·E·F's convolutions differently); a no-op here
    ae = ae.to(memory_format=torch.channels_last)
    device = device_for(0, job.device)
    batch = dataclasses.replace(batch, **{
        f.name: getattr(batch, f.name).to(device)
        for f in dataclasses.fields(batch) if isinstance(getattr(batch, f.name), torch.Tensor)})
    s = job.samples
    seeds = [job.seed + (lo + i) * s + j for i in range(len(batch)) for j in range(s)]
    bar = job.progress
    out = run_task(job.spec, ae, tr, batch, job.num_frames, s, job.sampler, job.context_frames,
                   seeds, on_frame=None if bar is None else (lambda t, b=len(batch): bar.update(b)))
    return out.frames.cpu(), out.start_frames


def _write_curve(path: Path, rows: list[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["t", "ssim", "psnr"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _why_skipped(how: str, vocab: dict[str, Any]) -> str:
    """``resolve_task``'s reason, with why the data had no such tokens when tokenize said so."""
    for kind, reason in vocab.get("absent", {}).items():
        if f"without {kind} tokens" in how or f"no {kind} tokens" in how:
            return f"{how}: {reason}"
    if "without label tokens" in how:
        classes = vocab.get("label", {}).get("classes", [])
        return f"{how}: the data have {len(classes)} class(es) (a class token needs 2 or more)"
    return how


def _clip_rate(clips: str | Path, split: str) -> float | None:
    """The frame rate of ``split``'s clips (prepare's manifest: prepare.fps / frame_step), so the
    GIFs play at the clips' speed; None without a manifest."""
    import pandas as pd

    from pipeline.data import storage

    manifest = storage.join(clips, "manifest.parquet")
    if not storage.exists(manifest):
        return None
    with storage.open_read(manifest) as f:
        rows = pd.read_parquet(f, columns=["split", "fps"])
    rates = rows.loc[rows["split"] == split, "fps"]
    return float(rates.median()) if len(rates) else None


def run(params: EvaluateParams, clips: str | Path, tokens: str | Path, transformer: str | Path,
        autoencoder: str | Path, metrics_out: str | Path, plots_dir: str | Path,
        samples_dir: str | Path, logger: Any, fps: float = 10,
        positions: str | Path | None = None, fvd_cache: str | Path | None = None,
        engine: EngineParams = LOCAL) -> dict[str, Any]:
    """Run every task; write metrics, curves, GIFs and sheets; return the metrics document.

    ``positions``: the position estimator (``models/position.pt``) the control metrics run on the
    synthesized frames; None or a missing file: those metrics are skipped, with why.
    ``fvd_cache``: folder of the real clips' I3D features, keyed by what determines them (None:
    computed every run).

    ``engine``: who synthesizes the input batches (``pipeline.engine``: this process, or the
    workers of a Dask cluster); sample j of input i is seeded by seed + i·S + j either way, and
    the metrics and files are computed here from the batches in order, so they are identical."""
    with open_engine(engine, STAGE) as runner:
        logger.set_tag("engine", engine.kind)
        return _run(params, clips, tokens, transformer, autoencoder, metrics_out, plots_dir,
                    samples_dir, logger, fps, positions, fvd_cache, runner)


def _run(params: EvaluateParams, clips: str | Path, tokens: str | Path, transformer: str | Path,
         autoencoder: str | Path, metrics_out: str | Path, plots_dir: str | Path,
         samples_dir: str | Path, logger: Any, fps: float, positions: str | Path | None,
         fvd_cache: str | Path | None, runner: Any) -> dict[str, Any]:
    from pipeline.metrics import fvd as fvd_lib
    from pipeline.metrics import fvd_runs

    start_time = time.perf_counter()
    fps = _clip_rate(clips, params.split) or fps
    device = device_for(0, params.device)
    vocab = read_vocab(tokens)
    models = load_models(transformer, autoencoder, tokens, device=device)
    ae, tr = models.autoencoder.eval(), models.transformer.eval()
    data = load_eval_data(clips, tokens, params.split, params.num_videos, vocab)
    n_frames = params.num_frames or data.frames.shape[1]
    if n_frames > data.frames.shape[1]:
        raise StageError(f"evaluate.num_frames = {n_frames} but the {params.split} clips have "
                            f"{data.frames.shape[1]} frames")
    m_given = params.start_frames
    if m_given >= n_frames:
        raise StageError(f"evaluate.start_frames = {m_given} but the videos have {n_frames} "
                         f"frames (evaluate.num_frames): nothing would be synthesized")
    c = ae.config.context_frames if params.context_frames is None else params.context_frames
    if (problem := ae.config.context_problem(c)) is not None:  # e.g. c ≥ 1 for a model without F
        raise StageError(f"{autoencoder}: {problem} (evaluate.context_frames)")
    # step_threads 0 = torch's own thread setting, not the timed choice of "auto": metrics must not
    # depend on a timing (auto's thread switches change float rounding, so the engine's workers and
    # this process would score the same tokens a few ulps apart)
    sampler = SamplerConfig(top_k=params.top_k, temperature=params.temperature, kv_cache=True,
                            step_threads=0)
    runs = params.fvd.repeats
    s = max(params.samples, runs)  # run r scores sample r of every input
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
    real_cached: dict[int, bool] = {}
    moving = motion_mask(real_clips) if s > 1 else None  # DIV's moving parts, once for all tasks
    n_fvd = len(data) if params.fvd.videos == 0 else min(params.fvd.videos, len(data))
    fvd_skipped = (None if n_fvd >= 2 else
                   f"{len(data)} {params.split} clip(s): FVD needs at least 2 videos")
    fvd_warning = None
    if fvd_skipped:
        print(f"evaluate: no FVD: {fvd_skipped}", flush=True)

    baseline: dict[str, float] = {}
    if data.layouts is not None:  # the no-model reference: the real frame 0 copied (issue 17)
        copied = real_clips[:, None, :1].expand(-1, 1, n_frames, -1, -1, -1)
        baseline = video_object_scores(real_clips, copied, data.layouts, start=1)
        baseline["psnr"] = float(frame_scores(copied, real_clips)[1][:, :, 1:].mean())
        logger.log_metrics({f"baseline/copy_first/{k}": v for k, v in baseline.items()
                            if np.isfinite(v)})

    estimator = (load_estimator(positions, device) if positions and Path(positions).is_file()
                 else None)
    reference, control_skipped = control_reference(data, estimator, clips, tokens, params.split,
                                                   vocab, n_frames)
    end_index = data.frames.shape[1] - 1  # the end frame point-to-point gives (the clip's last)

    null_ids = {kind: int(vocab[kind]["null_id"]) for kind in ("state", "audio", "layout")
                if isinstance(vocab.get(kind), dict) and "null_id" in vocab[kind]}
    results: dict[str, dict[str, float | None]] = {}
    skipped: dict[str, str] = {}
    starts: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for name in params.tasks:
        task = TASKS[name]
        if task.start_frames:  # the protocol's number of given frames (BAIR 1, Kinetics 5, …)
            task = dataclasses.replace(task, start_frames=m_given)
        spec, how = resolve_task(task, tr, data, null_ids)
        if spec is None:
            skipped[name] = _why_skipped(how, vocab)
            print(f"evaluate: skipping {name}: {skipped[name]}", flush=True)
            continue
        starts[name] = how
        t0 = time.perf_counter()
        fakes = []
        bar = tqdm(total=len(data) * n_frames, desc=f"evaluate {name}", unit="frame",
                   disable=None)
        job = SynthesisJob(spec, n_frames, s, sampler, c, params.seed, params.device,
                           torch.get_num_threads(), bar if runner.kind == "local" else None)
        batches = ((lo, data.rows(slice(lo, lo + params.batch_size)))
                   for lo in range(0, len(data), params.batch_size))
        for (lo, batch), (frames, m) in runner.ordered(
                synthesize_batch, batches, shared=(ae, tr, job),
                describe=lambda item, n=name: f"{n} inputs {item[0]}–{item[0] + len(item[1]) - 1}"):
            fakes.append(frames)
            bar.n = min(lo + len(batch), len(data)) * n_frames
            bar.refresh()
        bar.close()
        fake = torch.cat(fakes)  # (n, S, n_frames, 3, H, W)
        ssim_v, psnr_v = frame_scores(fake, real_clips)
        has_ref = how != "sampled"  # an unconditional frame 0 has no real counterpart
        div, div_moving = sample_diversity(fake, moving)
        row = summarize(name, ssim_v, psnr_v, m, params.timesteps, div, div_moving, has_ref,
                        end_index, runs=runs)
        row["motion"] = frame_motion(fake, max(m - 1, 0))  # from the last given frame on
        if has_ref and data.layouts is not None and m < n_frames:  # inside the moving objects
            row.update(video_object_scores(real_clips, fake, data.layouts, start=max(m, 1)))
        if estimator is not None and has_ref:  # does the video do what the controls asked?
            row.update(reference.score(estimate_trajectories(estimator, fake), max(m, 1)))
        if not fvd_skipped:
            skip = 0 if params.fvd.count_conditioning else m
            fvd_frames = min(params.fvd.frames, n_frames - skip)
            window = slice(skip, skip + fvd_frames)
            if skip not in real_features:  # the clips' arrays in memory, never a re-encoded mp4
                real_features[skip], _, real_cached[skip] = fvd_runs.real_features(
                    i3d, i3d_info, real_clips[:n_fvd, window], batch_size=params.fvd.batch_size,
                    cache_dir=fvd_cache)
                fvd_warning = fvd_runs.covariance_warning(n_fvd, real_features[skip].shape[1])
            fakes = [fvd_lib.i3d_features(i3d, fake[:n_fvd, r, window], params.fvd.batch_size,
                                          desc=f"I3D run {r + 1}") for r in range(runs)]
            fvd = fvd_runs.fvd_over_runs(real_features[skip], fakes)
            row[fvd_name] = fvd["mean"]
            if runs > 1:
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

    if fvd_warning:
        print(f"evaluate: warning: {fvd_warning}", flush=True)
        logger.set_tag("evaluate.fvd_warning", fvd_warning)
    doc = {
        "tasks": results,
        "skipped": skipped,
        "start": starts,
        "fvd": {"metric": fvd_name, "pretrained": i3d_info.pretrained, "weights": i3d_info.location,
                "videos": n_fvd, "frames": params.fvd.frames, "runs": runs,
                "count_conditioning": params.fvd.count_conditioning,
                "real_features": ("cached" if real_cached and all(real_cached.values()) else
                                  "computed from the clips' arrays"),
                **({"skipped": fvd_skipped} if fvd_skipped else {}),
                **({"warning": fvd_warning} if fvd_warning else {})},
        "protocol": {"start_frames": m_given, "timesteps": list(params.timesteps),
                     "timestep_indexing": "1-based: t = 1 is the first frame (the paper's)",
                     "runs": runs, "videos_per_run": n_fvd},
        "baseline": {"copy_first": {k: finite(v) for k, v in baseline.items()}} if baseline else {},
        "real_motion": frame_motion(real_clips),  # the same measure on the real clips
        "control": {"real": {k: finite(v) for k, v in reference.real().items()},
                    "chance_class_accuracy": (1.0 / reference.classifier.num_classes
                                              if reference.classifier else None),
                    "skipped": control_skipped},
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
    "fvd_cache": ("cache/fvd", "folder of cached real-clip I3D features ('' = none)"),
    "clips": "data/clips",
    "tokens": "data/tokens",
    "transformer": "models/transformer.pt",
    "autoencoder": "models/autoencoder.pt",
    "metrics": "metrics/evaluate.json",
    "plots": "plots/evaluate",
    "samples": "samples/evaluate",
    "positions": ("models/position.pt", "position estimator for the control metrics ('' = none)"),
}


def main(argv: list[str] | None = None) -> None:
    stage_main(STAGE, __doc__, PATHS,
               lambda p, a, log: run(p, a.clips, a.tokens, a.transformer, a.autoencoder,
                                     a.metrics, a.plots, a.samples, log,
                                     positions=a.positions or None,
                                     fvd_cache=a.fvd_cache or None,
                                     engine=engine_params(a.params)), argv=argv)


if __name__ == "__main__":
    main()
