"""Stage ``sound_vq``: the sound autoencoder of App. A — audio tokens for sound-conditioned synthesis.

App. A "Sound autoencoder": the STFT of the raw audio is encoded, quantized and decoded like the
frames (E, Q, D without F), giving tokens used as frame-level annotations by the transformer
(AudioSet-Drums, §4 / Table 6, Table D3). Here:

1. every train/val clip's audio → per-frame log-mel STFT patches (T, 1, 64, 16) in [−1, 1]
   (``pipeline.data.audio_features``: hop aligned to the frame rate, fixed dB range);
2. ``ccvs_models.vq_autoencoder.VQAutoencoder`` (3 stride-2 blocks → 8 × 2 = 16 tokens per frame,
   paper; codebook 256 by default instead of the paper's 1024, as the demo has ~1.7k train
   frames) trained with the shared loop (``pipeline.training.loop.fit``: checkpoints in
   ``<ckpt_dir>/<config hash>/``, resume) on an L1 (or MSE) patch loss + λ_q · L_q (Eq. (3));
   codes unused for ``dead_code_every`` steps are re-seeded with encoder outputs
   (``VectorQuantizer.reinit_dead_codes``) so the codebook stays alive (the task and helpers
   shared with ``layout_vq`` live in ``pipeline.training.vq``);
3. on val: log-spectral distance (dB) and spectral convergence of the decoded patches, next to a
   mean-spectrum baseline (every patch predicted as the train-set mean patch); codebook
   perplexity and dead codes over the train patches;
4. writes ``models/sound_vq.pt`` (weights + model config + feature config, so ``tokenize`` can
   recompute patches), ``metrics/sound_vq.json``, and logs artifacts: a PNG of original vs decoded
   spectrograms and WAVs (original, Griffin-Lim of the original patches, Griffin-Lim of the
   decoded patches) so a person can listen.

Bad audio: a clip without an audio track (or whose audio ``prepare`` filled with silence because
the video had none) is skipped; a clip whose audio is unusable (NaN/Inf, wrong length) is
rejected; both are counted in the metrics, listed one line each on stderr and in the model
file's meta (``skipped``). When no clip carries audio at all (e.g. ``prepare.audio: false``), the
stage still writes a model file (``meta.available = False``, ``meta.reason``) and metrics saying
so, so the DAG runs; when clips have audio but none is usable, it stops with an error.

    python -m stages.sound_vq --params params.yaml --clips data/clips
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

from ccvs_models.vq_autoencoder import VQAutoencoder, VQAutoencoderConfig
from pipeline.data.audio_features import (
    AudioConfigError,
    AudioError,
    AudioFeatureConfig,
    frame_patches,
    patches_to_audio,
    patches_to_spectrogram,
    prepare_audio,
    spectral_metrics,
)
from pipeline.atomic import write_json
from pipeline.training.checkpoint import save_model
from pipeline.params import ParamsError, SoundVQParams
from pipeline.training.loop import fit
from pipeline.training.vq import VQTask, array_batches, codebook_usage, encode_tokens, labelled_rows, predict, report_skipped, split_samples, write_placeholder
from pipeline.data.splits import holdout_keys
from pipeline.errors import StageError
from pipeline.stage import stage_main


# --------------------------------------------------------------------------- sound data


@dataclasses.dataclass
class SoundSplit:
    """The usable clips of one split as patches (N = sum of the clips' frames)."""

    patches: np.ndarray  # float32 (N, 1, F, W)
    keys: list[str]  # clip keys, in order
    frames: list[int]  # frames per clip (patches of clip i: sum(frames[:i]) … + frames[i])
    fps: list[float]
    audio: dict[str, np.ndarray]  # prepared audio of the first few clips (for the WAV artifacts)
    skipped: list[tuple[str, str]]  # (key, reason)
    with_audio: int  # clips that carried an audio track (usable or not)


def load_sound(clips: str | Path, split: str, cfg: AudioFeatureConfig, keep_audio: int = 0) -> SoundSplit:
    """Per-frame patches of every clip of ``split``; bad/missing audio skipped with a reason."""
    patches, keys, frames, fps_list, skipped, with_audio = [], [], [], [], [], 0
    audio_kept: dict[str, np.ndarray] = {}
    for sample in split_samples(clips, split):
        key, meta = sample["key"], sample.get("meta", {})
        if "audio" not in sample:
            skipped.append((key, "no audio track"))
            continue
        if meta.get("audio_silent"):
            skipped.append((key, "no audio track (prepare filled it with silence)"))
            continue
        with_audio += 1
        num_frames = int(sample["frames"].shape[0])
        fps, rate = meta.get("fps"), meta.get("audio_rate")
        if not fps or not rate:
            skipped.append((key, "meta lacks fps or audio_rate"))
            continue
        try:
            p = frame_patches(sample["audio"], float(rate), float(fps), num_frames, cfg)
            if len(audio_kept) < keep_audio:
                audio_kept[key] = prepare_audio(sample["audio"], float(rate), float(fps),
                                                num_frames, cfg).astype(np.float32)
        except AudioConfigError as err:
            raise StageError(f"clip {key}: {err}") from None
        except AudioError as err:
            skipped.append((key, str(err)))
            continue
        patches.append(p)
        keys.append(key)
        frames.append(num_frames)
        fps_list.append(float(fps))
    f, w = cfg.freq_bins, cfg.time_bins
    stacked = np.concatenate(patches) if patches else np.zeros((0, 1, f, w), np.float32)
    return SoundSplit(stacked, keys, frames, fps_list, audio_kept, skipped, with_audio)


def _take_sound(split: SoundSplit, keep: list[bool]) -> SoundSplit:
    starts = np.cumsum([0, *split.frames])
    idx = [i for i, k in enumerate(keep) if k]
    arr = (np.concatenate([split.patches[starts[i]:starts[i + 1]] for i in idx])
           if idx else split.patches[:0])
    keys = [split.keys[i] for i in idx]
    return SoundSplit(arr, keys, [split.frames[i] for i in idx], [split.fps[i] for i in idx],
                      {k: v for k, v in split.audio.items() if k in set(keys)}, [], len(idx))


# --------------------------------------------------------------------------- artifacts


_CMAP = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float64)


def colorize(image: np.ndarray, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """(H, W) values in [lo, hi] → (H, W, 3) uint8 with a dark-to-bright palette."""
    t = np.clip((np.asarray(image, np.float64) - lo) / (hi - lo), 0, 1) * (len(_CMAP) - 1)
    i = np.minimum(np.floor(t).astype(int), len(_CMAP) - 2)
    frac = (t - i)[..., None]
    return ((1 - frac) * _CMAP[i] + frac * _CMAP[i + 1]).astype(np.uint8)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    """16-bit PCM mono WAV (scipy)."""
    from scipy.io import wavfile

    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype(np.int16)
    wavfile.write(str(path), int(rate), pcm)
    return path


def sound_artifacts(val: SoundSplit, recon: np.ndarray, params: SoundVQParams, folder: Path,
                    max_clips: int = 2) -> list[Path]:
    """PNG of original vs decoded spectrograms of the first val clips, and WAVs of the first."""
    folder.mkdir(parents=True, exist_ok=True)
    starts = np.cumsum([0, *val.frames])
    rows, written = [], []
    for i, key in enumerate(val.keys[:max_clips]):
        orig = patches_to_spectrogram(val.patches[starts[i]:starts[i + 1]])[::-1]  # low freq at bottom
        dec = patches_to_spectrogram(recon[starts[i]:starts[i + 1]])[::-1]
        rows += [(f"{key} original", colorize(orig)), (f"{key} decoded (VQ)", colorize(dec))]
    if rows:
        png = folder / "sound_vq_spectrograms.png"
        labelled_rows(rows).save(png)
        written.append(png)
    for i, key in enumerate(val.keys[:1]):
        cfg, rate = params.features, params.features.sample_rate
        orig_patches = val.patches[starts[i]:starts[i + 1]]
        dec_patches = np.clip(recon[starts[i]:starts[i + 1]], -1, 1)
        it = params.griffin_lim_iters
        if key in val.audio:
            written.append(write_wav(folder / f"{key}_original.wav", val.audio[key], rate))
        written.append(write_wav(folder / f"{key}_griffinlim_original_patches.wav",
                                 patches_to_audio(orig_patches, val.fps[i], cfg, it), rate))
        written.append(write_wav(folder / f"{key}_griffinlim_decoded.wav",
                                 patches_to_audio(dec_patches, val.fps[i], cfg, it), rate))
    return written


# --------------------------------------------------------------------------- stage


def _model_config(params: SoundVQParams) -> VQAutoencoderConfig:
    m = params.model
    for name in ("in_channels", "out_channels"):
        if getattr(m, name) not in (0, 1):
            raise ParamsError(f"sound_vq.model.{name}: a patch has 1 channel, got {getattr(m, name)}")
    f = m.downsampling
    cfg = params.features
    if cfg.freq_bins % f or cfg.time_bins % f:
        raise ParamsError(
            f"sound_vq: patches of {cfg.freq_bins}×{cfg.time_bins} cannot be downsampled "
            f"{len(m.channels)} times (need both divisible by {f})")
    return dataclasses.replace(m, in_channels=1, out_channels=1)


def run(
    params: SoundVQParams,
    clips: str | Path,
    model_out: str | Path,
    metrics_out: str | Path,
    ckpt_dir: str | Path,
    logger: Any,
    artifacts_dir: str | Path | None = None,
) -> dict[str, float]:
    """Train the sound VQ on ``clips`` (prepare's output); write the model and metrics; return them."""
    start = time.perf_counter()
    model_out, metrics_out = Path(model_out), Path(metrics_out)
    model_cfg = _model_config(params)
    feats = params.features
    train = load_sound(clips, "train", feats)
    val = load_sound(clips, "val", feats, keep_audio=1)
    skipped = train.skipped + val.skipped
    report_skipped("sound_vq", skipped, logger)
    counts = {"skipped_clips": float(len(skipped)), "train_clips": float(len(train.keys)),
              "val_clips": float(len(val.keys))}
    if train.with_audio == 0:
        return write_placeholder("sound_vq", "no audio in the data", model_out, metrics_out, logger,
                                 counts)
    if len(train.keys) == 0:
        raise StageError(
            f"{clips}: all {train.with_audio} train clips with audio were rejected "
            f"(first: {train.skipped[0][0]}: {train.skipped[0][1]})" if train.skipped else
            f"{clips}: no usable train clip")
    val_source = "val"
    if len(val.keys) == 0:
        # no val split: hold out the clips of ~10% of the train videos
        held = holdout_keys(train.keys, seed=params.loop.seed)
        train_all = load_sound(clips, "train", feats, keep_audio=len(train.keys))
        val = _take_sound(train_all, [k in held for k in train_all.keys])
        train = _take_sound(train_all, [k not in held for k in train_all.keys])
        val_source = "train_holdout"
        if len(val.keys) == 0:
            raise StageError(f"{clips}: no val clips and too few train videos to hold some out")
    logger.set_tag("sound_vq.val_source", val_source)

    x_train, x_val = train.patches, val.patches
    data_hash = hashlib.sha1(x_train.tobytes()).hexdigest()[:16]
    loss_fn = F.l1_loss if params.loss == "l1" else F.mse_loss
    config = {"model": dataclasses.asdict(model_cfg), "features": dataclasses.asdict(feats),
              "batch_size": params.batch_size, "lr": params.lr, "loss": params.loss,
              "q_weight": params.q_weight, "dead_code_every": params.dead_code_every,
              "seed": params.loop.seed, "ema_decay": params.loop.ema_decay,
              "grad_clip": params.loop.grad_clip, "bf16": params.loop.bf16, "data": data_hash}
    task = VQTask(model_cfg, params.lr, params.q_weight, params.dead_code_every,
                  recon_loss=loss_fn, make_input=lambda b: (b, b), config=config,
                  seed=params.loop.seed)

    last: dict[str, np.ndarray] = {}  # the latest evaluation's outputs (the final one = the saved weights)

    def evaluator(model: VQAutoencoder, device: torch.device) -> dict[str, float]:
        recon, tok_val = predict(model, x_val, device)
        last["recon"], last["tok_val"] = np.clip(recon, -1, 1), tok_val
        last["tok_train"] = encode_tokens(model, x_train, device)
        m = spectral_metrics(x_val, last["recon"], feats)
        usage = codebook_usage(last["tok_train"], model_cfg.codebook_size)
        return {"val/lsd_db": m["lsd_db"], "val/spectral_convergence": m["spectral_convergence"],
                "val/l1": float(np.abs(recon - x_val).mean()),
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
    recon, tok_train, tok_val = last["recon"], last["tok_train"], last["tok_val"]
    ours = spectral_metrics(x_val, recon, feats)
    mean_patch = x_train.mean(axis=0, keepdims=True)
    base = spectral_metrics(x_val, np.broadcast_to(mean_patch, x_val.shape), feats)
    usage = codebook_usage(tok_train, model_cfg.codebook_size)
    usage_val = codebook_usage(tok_val, model_cfg.codebook_size)
    h, w = feats.freq_bins // model_cfg.downsampling, feats.time_bins // model_cfg.downsampling
    metrics = {
        "available": 1.0,
        "val/lsd_db": ours["lsd_db"],
        "val/spectral_convergence": ours["spectral_convergence"],
        "baseline/lsd_db": base["lsd_db"],
        "baseline/spectral_convergence": base["spectral_convergence"],
        "lsd_vs_baseline": ours["lsd_db"] / max(base["lsd_db"], 1e-12),
        "sc_vs_baseline": ours["spectral_convergence"] / max(base["spectral_convergence"], 1e-12),
        "codebook/perplexity": usage["perplexity"],
        "codebook/dead_codes": usage["dead_codes"],
        "codebook/used_codes": usage["used_codes"],
        "codebook/val_perplexity": usage_val["perplexity"],
        "codebook/reseeded_total": float(task.reseeded_total),
        "codebook_size": float(model_cfg.codebook_size),
        "tokens_per_frame": float(h * w),
        "train_frames": float(len(x_train)),
        "val_frames": float(len(x_val)),
        **counts,
        "train_clips": float(len(train.keys)),
        "val_clips": float(len(val.keys)),
        "steps": float(result.step),
        "resumed_from": float(result.resumed_from if result.resumed_from is not None else -1),
        "fit_seconds": fit_s,
    }
    save_model(model_out, {"model": dataclasses.asdict(model_cfg), "features": dataclasses.asdict(feats)},
               result.state["vq"], available=True, step=result.step,
               weights="ema" if params.loop.ema_decay > 0 else "raw", token_grid=[h, w],
               skipped=[list(s) for s in skipped], val_source=val_source)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(artifacts_dir) if artifacts_dir else Path(tmp)
        for path in sound_artifacts(val, recon, params, folder):
            logger.log_artifact(path, "sound_vq")
    metrics["seconds"] = time.perf_counter() - start
    logger.log_metrics({k: v for k, v in metrics.items()}, step=result.step)
    write_json(metrics_out, metrics)
    return metrics


PATHS = {
    "clips": ("data/clips", "prepare's output folder"),
    "model": ("models/sound_vq.pt", "output model file"),
    "metrics": ("metrics/sound_vq.json", "output metrics file"),
    "ckpt": ("checkpoints/sound_vq", "checkpoint folder"),
    "artifacts": (None, "also keep the artifacts in this folder"),
}


def summary(metrics: dict[str, float], args: argparse.Namespace) -> str | None:
    if not (metrics.get("available", 0.0) and "val/lsd_db" in metrics):
        return None
    return (f"val LSD {metrics['val/lsd_db']:.2f} dB (mean-spectrum baseline "
            f"{metrics['baseline/lsd_db']:.2f}), SC {metrics['val/spectral_convergence']:.3f} "
            f"(baseline {metrics['baseline/spectral_convergence']:.3f}), perplexity "
            f"{metrics['codebook/perplexity']:.1f}, {int(metrics['codebook/dead_codes'])} dead "
            f"codes, {metrics['seconds']:.1f}s → {args.model}")


def main(argv: list[str] | None = None) -> None:
    stage_main("sound_vq", __doc__, PATHS,
               lambda p, a, log: run(p, a.clips, a.model, a.metrics, a.ckpt, log, a.artifacts),
               check=_model_config, summary=summary, argv=argv)


if __name__ == "__main__":
    main()
