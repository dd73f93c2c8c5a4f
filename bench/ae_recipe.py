"""Autoencoder recipes side by side: train each for the same budget, score the 16-frame recursion.

For each ``--variant NAME:KEY=VALUE,KEY=VALUE`` (keys of the ``autoencoder`` section, dotted,
YAML values; ``NAME:`` alone = params.yaml as it is) this trains the autoencoder stage
(``stages.autoencoder.run``, its own process, ``--steps`` steps) and scores its saved EMA model on
the ``--split`` clips (default: the demo's test split) with Table 1's "Reconstruction" protocol:
the real frame 0 given, every later frame decoded from its true tokens with the previously
*decoded* frames as F's context (the model's context rule). Reported per variant: whole-frame
PSNR / SSIM (mean over frames 1–15 and at t = 1, 8, 15), the same inside the moving-object masks
(``pipeline.metrics.objects``: ``psnr_objects``, ``ssim_objects``, ``edge_ratio_objects`` — the
sharpness measure, 1 = as much edge energy as the real frames), the tokens-only PSNR (no
context), the training wall time, mean image / video step times and peak RSS. The no-model
reference "copy the real frame 0" is printed first.

    python bench/ae_recipe.py --clips data/clips --steps 600 \\
        --variant off:model.context_frames=0 --variant on: --png-dir /tmp/ae_png

Variants run one after another (one training at a time: compare ratios measured in one run).
``--png-dir`` writes ``<name>.png`` per variant: for the first ``--png-clips`` clips a real row
over its recursive reconstruction row (16 frames).
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

FRAMES = (1, 8, 15)


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    items, depth, cur = [], 0, ""
    for ch in rest:  # split on commas outside [...] (list values)
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        items.append(cur)
    return name, items


def grid(real, recon, clips: int, scale: int):
    """uint8 (N, T, H, W, 3) real and reconstructed → one image: per clip a real row over a
    reconstructed row, 2 px white gaps."""
    import numpy as np

    n, t, h, w, _ = real.shape
    rows = []
    for i in range(min(clips, n)):
        for src in (real[i], recon[i]):
            row = np.full((h, t * (w + 2) - 2, 3), 255, np.uint8)
            for j in range(t):
                row[:, j * (w + 2): j * (w + 2) + w] = src[j]
            rows += [row, np.full((2, row.shape[1], 3), 255, np.uint8)]
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    image = np.concatenate(rows[:-2])
    return image.repeat(scale, 0).repeat(scale, 1)


def score(model, clips, layouts) -> dict:
    """Whole-frame and object-region scores of the recursion, and tokens-only PSNR."""
    import numpy as np

    from pipeline.training.autoencoder.forward import reconstruct_clips, summarize

    result = reconstruct_clips(model, clips, "cpu", layouts=layouts)
    out = {k.split("/", 1)[1]: v for k, v in summarize(result, model.config.codebook_size).items()}
    alone = reconstruct_clips(model, clips, "cpu", num_context=0)
    out["psnr_tokens_only"] = float(alone.psnr.mean())
    out["psnr_per_frame"] = [round(float(v), 2) for v in result.psnr.mean(0)]
    if result.objects is not None:
        po = result.objects["psnr_objects"]
        out["psnr_objects_per_frame"] = [round(float(np.nanmean(po[:, t])), 2)
                                         for t in range(po.shape[1])]
    return out, result.recon


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(args, overrides: list[str], name: str) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from bench.autoencoder_ablation import with_overrides
    from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
    from pipeline.training.checkpoint import load_model
    from pipeline.params import load_section
    from pipeline.tracking import RecordingLogger
    from stages.autoencoder import load_clips, run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        params_path = with_overrides(args.params, overrides, tmp / "params.yaml")
        params = load_section("autoencoder", params_path)
        loop = dataclasses.replace(params.loop, steps=args.steps, eval_every=args.steps,
                                   ckpt_every=0)
        params = dataclasses.replace(params, loop=loop)
        log = RecordingLogger()
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        metrics = run(params, args.clips, tmp / "ae.pt", tmp / "m.json", tmp / "plots",
                      tmp / "ckpt", log, resume=False)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        loaded = load_model(tmp / "ae.pt")
    model = CCVSAutoencoder(AutoencoderConfig(**loaded.config)).eval()
    model.load_state_dict(loaded.state)
    data = load_clips(args.eval_dir or args.clips, args.split, limit=args.eval_clips or None)
    scores, recon = score(model, data.frames, data.layouts)
    if args.png_dir:
        from pipeline.data.media_write import write_png

        Path(args.png_dir).mkdir(parents=True, exist_ok=True)
        write_png(Path(args.png_dir) / f"{name}.png",
                  grid(data.frames, recon, args.png_clips, args.png_scale))

    def mean(key: str) -> float:
        vals = [v for _, v in log.metrics.get(key, [])]
        return sum(vals[1:]) / max(len(vals) - 1, 1) if len(vals) > 1 else (vals[0] if vals else float("nan"))

    return {
        "name": name, "overrides": overrides, "steps": args.steps, "split": args.split,
        "clips": len(data.keys), "train_seconds": seconds, "fit_seconds": metrics["fit_seconds"],
        "train_cpu_seconds": cpu,  # user + system: with --threads 1, the wall time of an idle core
        "image_step_s": mean("time/image_step_s"), "video_step_s": mean("time/video_step_s"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bf16": bool(getattr(params.loop, "bf16", False)), "val": {k: v for k, v in metrics.items()
                                                                     if k.startswith("val/")},
        **scores,
    }


def copy_first(args) -> dict:
    from pipeline.training.autoencoder.forward import copy_first_scores
    from stages.autoencoder import load_clips

    data = load_clips(args.eval_dir or args.clips, args.split, limit=args.eval_clips or None)
    return {k.split("/", 2)[2]: v for k, v in copy_first_scores(data.frames, data.layouts).items()}


def table(rows: list[dict], base: dict) -> str:
    head = ("| variant | steps | train (s) | img / vid step (s) | PSNR | PSNR t=1/8/15 | SSIM t=1/8/15 "
            "| obj PSNR | obj PSNR t=1/8/15 | obj SSIM t=1/8/15 | edge ratio t=1/8/15 | tokens only |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def f(r, key, fmt="{:.2f}"):
        return "/".join(fmt.format(r.get(f"{key}_t{t}", float("nan"))) for t in FRAMES)

    lines.append(f"| copy frame 0 | – | – | – | {base.get('psnr', float('nan')):.2f} | – | – | "
                 f"{base.get('psnr_objects', float('nan')):.2f} | {f(base, 'psnr_objects')} | "
                 f"{f(base, 'ssim_objects', '{:.3f}')} | {f(base, 'edge_ratio_objects')} | – |")
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['train_seconds']:.0f} | {r['image_step_s']:.3f} / "
            f"{r['video_step_s']:.3f} | {r['psnr']:.2f} | {f(r, 'psnr')} | {f(r, 'ssim', '{:.3f}')} | "
            f"{r.get('psnr_objects', float('nan')):.2f} | {f(r, 'psnr_objects')} | "
            f"{f(r, 'ssim_objects', '{:.3f}')} | {f(r, 'edge_ratio_objects')} | "
            f"{r['psnr_tokens_only']:.2f} |")
    return "\n".join(lines)


def seed_means(rows: list[dict], base: dict) -> str:
    """Per variant (name without _s<seed>) the mean over seeds, then each variant minus the first."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["name"].rsplit("_s", 1)[0], []).append(r)
    keys = [k for k, v in rows[0].items() if isinstance(v, float)]
    means = [{"name": f"{name} (mean of {len(rs)})", "steps": rs[0]["steps"],
              **{k: float(np.mean([r[k] for r in rs if k in r])) for k in keys}}
             for name, rs in groups.items()]
    first = means[0]
    diffs = [{"name": f"{m['name'].split(' ')[0]} − {first['name'].split(' ')[0]}",
              "steps": m["steps"], **{k: m[k] - first[k] for k in keys}} for m in means[1:]]
    return table(means + diffs, base)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--clips", required=True, help="a prepare output folder (demo data: layouts)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--split", default="test")
    ap.add_argument("--eval-dir", default="", help="score on this prepare output's --split "
                    "instead of --clips' (e.g. clips of videos no variant trained on)")
    ap.add_argument("--eval-clips", type=int, default=0, help="0 = every clip of the split")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for every variant (before the variant's own)")
    ap.add_argument("--png-dir", default="")
    ap.add_argument("--png-clips", type=int, default=2)
    ap.add_argument("--png-scale", type=int, default=1)
    ap.add_argument("--seeds", default="", help="e.g. 0,1: every variant once per loop.seed "
                    "(names get _s<seed>), then the mean per variant and on − off differences")
    ap.add_argument("--out", default="", help="append one JSON line per variant here")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one is not None:
        name, overrides = parse_variant(args.one)
        print(json.dumps(one(args, [*args.set, *overrides], name)))
        return
    variants = args.variant or ["default:"]
    if args.seeds:
        variants = [f"{name}_s{seed}:" + ",".join([*items, f"loop.seed={seed}"])
                    for seed in args.seeds.split(",")
                    for name, items in map(parse_variant, variants)]
    env = {**os.environ, "CCVS_TRACKING": "off", "CCVS_OFFLINE": "1"}
    base = copy_first(args)
    rows = []
    for v in variants:
        cmd = [sys.executable, __file__, "--params", args.params, "--clips", args.clips,
               "--steps", str(args.steps), "--split", args.split, "--eval-dir", args.eval_dir,
               "--eval-clips",
               str(args.eval_clips), "--threads", str(args.threads), "--png-dir", args.png_dir,
               "--png-clips", str(args.png_clips), "--png-scale", str(args.png_scale),
               *[x for s in args.set for x in ("--set", s)], "--one", v]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"variant {v!r} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
    print()
    print(table(rows, base))
    if args.seeds:
        print()
        print(seed_means(rows, base))


if __name__ == "__main__":
    main()
