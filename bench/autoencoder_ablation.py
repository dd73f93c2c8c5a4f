"""Table 1 on the demo data: F off (c = 0) vs F on (c = 1, c = 4), the same short training budget.

Trains the ``autoencoder`` section of params.yaml (all switches as there) for ``--steps`` steps per
setting, changing only ``model.context_frames``, and reports the validation "Reconstruction"
metrics of Table 1 (true tokens, reconstructed frames as context, PSNR / SSIM over the decoded
frames and at the last one), the mean image / video step time and the peak resident memory of
each run (each setting runs in its own process, so ``ru_maxrss`` is per setting).

    python bench/autoencoder_ablation.py --clips /tmp/clips --steps 150 --out bench_ae.json

(``--clips``: a ``prepare`` output folder, e.g. of the demo data; VGG weights are used when
``load_vgg`` finds them, so say which in the results.)

``--set key=value`` (repeatable) overrides a key of the ``autoencoder`` section for every setting,
dotted for nested keys, the value parsed as YAML, e.g. ``--set lambda_free=1 --set
model.num_levels=4``. Each row also carries the per-frame validation PSNR (frames 1 … T−1) and
the PSNR of the same frames decoded from their tokens alone (``val_psnr_context_free``) and
with the real previous frame as context instead of the recursion (``val_psnr_real_context``), the
Table 1 protocol again with up to 15 context frames at test whatever c the model trained with (Table
1's "Ctxt." 15: the real x_0 stays in the context, ``val_psnr_context15``), and the training
batches' codebook perplexity at each log point (``train_perplexity``).

Compression sets how much F can add: the paper's 64 tokens per 256×256 frame are 1024 pixels per
token; the demo's 8×8 tokens per 64×64 frame are 64, and there F ties F off (BENCHMARKS.md).
``--paper-compression`` runs the setting where F clearly wins at the demo budget (BENCHMARKS.md
"Session 5"): 4×4 tokens (256 pixels per token), F after every decoding block as in the paper,
and the real previous frames as the image steps' context (Table 1's "F" row without "Sup."):

    python bench/autoencoder_ablation.py --clips /tmp/clips --steps 600 --paper-compression
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# 64×64 frames → 4×4 tokens (256 pixels per token; the paper: 1024), F after every decoding block
# (the paper's default), image steps with the real previous frames as context (Table 1 "F"
# without "Sup."): where F beats F off at the demo budget (BENCHMARKS.md, autoencoder "Session 5")
PAPER_COMPRESSION = ["model.num_levels=4", "model.channel_mult=[1,2,4,4,4]", "model.flow_levels=null",
                     "self_supervision=false"]


def with_overrides(params_path: str, overrides: list[str], out_path: Path) -> str:
    """A copy of ``params_path`` with ``autoencoder.<key> = value`` for each "key=value"."""
    import yaml

    raw = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        node = raw["autoencoder"]
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        if leaf not in node:
            raise SystemExit(f"--set {item!r}: autoencoder.{key} is not a key of {params_path}")
        node[leaf] = yaml.safe_load(value)
    out_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return str(out_path)


def one(params_path: str, clips: str, context: int, steps: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from pipeline.params import load_section
    from pipeline.tracking import RecordingLogger
    from stages.autoencoder import run

    params = load_section("autoencoder", params_path)
    loop = dataclasses.replace(params.loop, steps=steps, eval_every=steps, ckpt_every=0)
    params = dataclasses.replace(
        params, loop=loop, model=dataclasses.replace(params.model, context_frames=context))
    log = RecordingLogger()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        metrics = run(params, clips, Path(tmp) / "ae.pt", Path(tmp) / "m.json", Path(tmp) / "plots",
                      Path(tmp) / "ckpt", log, resume=False)
        seconds = time.perf_counter() - t0
        model, val_frames = saved_model_and_val(Path(tmp) / "ae.pt", clips, params)
        per_frame, context_free = frame_psnr(model, val_frames)
        real_context = real_context_psnr(model, val_frames)
        wide_context = wide_context_psnr(model, val_frames)

    def mean(name: str) -> float:
        vals = [v for _, v in log.metrics.get(name, [])]
        return sum(vals[1:]) / max(len(vals) - 1, 1) if len(vals) > 1 else (vals[0] if vals else float("nan"))

    return {
        "context_frames": context,
        "steps": steps,
        "val_psnr": metrics["val/psnr"],
        "val_ssim": metrics["val/ssim"],
        "val_psnr_first": metrics["val/psnr_first"],
        "val_psnr_last": metrics["val/psnr_last"],
        "val_ssim_last": metrics["val/ssim_last"],
        "codebook_perplexity": metrics["codebook/perplexity"],
        "image_step_s": mean("time/image_step_s"),  # first log window (warm-up) left out
        "video_step_s": mean("time/video_step_s"),
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "val_psnr_per_frame": [round(v, 2) for v in per_frame],
        "val_psnr_context_free": sum(context_free) / len(context_free),  # tokens alone, no F
        "val_psnr_real_context": real_context,  # the real previous frame as context (no recursion)
        f"val_psnr_context{WIDE}": wide_context,  # recursion with up to WIDE context frames at test
        # codebook perplexity of the training batches at each log point (collapse diagnosis)
        "train_perplexity": [[int(s), round(v, 1)] for s, v in log.metrics.get("img/perplexity", [])],
        "vgg_weights": log.tags.get("vgg_weights", ""),
        "threads": threads,
    }


def saved_model_and_val(model_path: Path, clips: str, params):
    """The saved (EMA) model, in eval mode, and the validation clips uint8 (N, T, H, W, 3)."""
    from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
    from pipeline.training.checkpoint import load_model
    from stages.autoencoder import load_clips

    loaded = load_model(model_path)
    model = CCVSAutoencoder(AutoencoderConfig(**loaded.config)).eval()
    model.load_state_dict(loaded.state)
    val = load_clips(clips, "val", limit=params.val_clips, num_frames=params.val_frames)
    return model, val.frames


def frame_psnr(model, frames) -> tuple[list[float], list[float]]:
    """Mean validation PSNR per decoded frame: Table 1 protocol, and the same frames decoded
    from their tokens alone (no context: how much the tokens carry)."""
    from pipeline.training.autoencoder.forward import reconstruct_clips

    with_context = reconstruct_clips(model, frames, "cpu").psnr.mean(0)
    alone = reconstruct_clips(model, frames, "cpu", num_context=0).psnr.mean(0)
    return [float(v) for v in with_context], [float(v) for v in alone]


WIDE = 15  # Table 1's widest test context ("Ctxt." 15): every earlier frame of a 16-frame clip


def wide_context_psnr(model, frames, num_context: int = WIDE) -> float:
    """Mean validation PSNR of the Table 1 protocol when D fuses up to ``num_context`` earlier
    frames (App. D, Eq. 9) whatever c the model trained with: the real x_0 then stays in every
    frame's context. NaN for a model without F."""
    from pipeline.training.autoencoder.forward import reconstruct_clips

    if not model.has_flow:
        return float("nan")
    return float(reconstruct_clips(model, frames, "cpu", num_context=num_context).psnr.mean())


def real_context_psnr(model, frames) -> float:
    """Mean validation PSNR over frames 1 … T−1 when each frame is decoded from its true tokens
    with the REAL previous frame as context (no recursion): how well F uses a good context,
    apart from the drift the recursive protocol adds. NaN for a model without F."""
    import numpy as np
    import torch

    from pipeline.training.autoencoder.forward import to_model_range
    from pipeline.metrics.image import psnr

    if not model.has_flow:
        return float("nan")
    x = to_model_range(torch.from_numpy(np.ascontiguousarray(frames)))
    values = []
    with torch.no_grad():
        for t in range(1, x.shape[1]):
            z_q = model.quantize(model.encode(x[:, t]).z).z_q
            x_hat = model.decode(z_q, model.encode_context(x[:, t - 1 : t])).x_hat
            values.append(psnr((x[:, t] + 1) / 2, (x_hat.clamp(-1, 1) + 1) / 2, max_db=100.0)
                          .mean().item())
    return sum(values) / len(values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--clips", required=True)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--contexts", default="0,1,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override autoencoder.KEY (dotted, YAML value) in every setting")
    ap.add_argument("--paper-compression", action="store_true",
                    help="4×4 tokens, F at every level, no self-supervision (--set " +
                    " --set ".join(PAPER_COMPRESSION) + "), before any --set")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.paper_compression:
        args.set = [*PAPER_COMPRESSION, *args.set]
    if args.one is not None:
        print(json.dumps(one(args.params, args.clips, args.one, args.steps, args.threads)))
        return
    env = {**os.environ, "CCVS_TRACKING": "off"}
    rows = []
    tmpdir = tempfile.TemporaryDirectory()
    params_path = (with_overrides(args.params, args.set, Path(tmpdir.name) / "params.yaml")
                   if args.set else args.params)
    for c in [int(v) for v in args.contexts.split(",")]:
        cmd = [sys.executable, __file__, "--params", params_path, "--clips", args.clips,
               "--steps", str(args.steps), "--threads", str(args.threads), "--one", str(c)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"context_frames={c} failed:\n{out.stderr[-2000:]}")
        rows.append({**json.loads(out.stdout.strip().splitlines()[-1]), "overrides": args.set})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| F | c | val PSNR (dB) | val SSIM | PSNR frame 1 | PSNR last | SSIM last | perplexity | "
          f"tokens only | real context | {WIDE} context frames | image step (s) | video step (s) | run (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['context_frames'] else 'off'} | {r['context_frames']} | "
              f"{r['val_psnr']:.2f} | {r['val_ssim']:.3f} | {r['val_psnr_first']:.2f} | "
              f"{r['val_psnr_last']:.2f} | {r['val_ssim_last']:.3f} | "
              f"{r['codebook_perplexity']:.0f} | {r['val_psnr_context_free']:.2f} | "
              f"{r['val_psnr_real_context']:.2f} | {r[f'val_psnr_context{WIDE}']:.2f} | "
              f"{r['image_step_s']:.2f} | {r['video_step_s']:.2f} | "
              f"{r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
