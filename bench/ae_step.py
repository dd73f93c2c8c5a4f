"""Autoencoder training step time, fp32 vs bf16 autocast, measured interleaved in one process.

Builds the ``autoencoder`` task of params.yaml (``--set`` overrides as in ``bench/ae_recipe.py``)
twice — one per precision, same seed — and times the real ``AutoencoderTask.train_step`` (image and
video steps, Δi/Δt steps, optimizer steps) plus the EMA update, alternating precisions every
``--block`` steps so both see the same machine load (this VM is shared: compare the ratio, not the
absolute times). With ``--profile`` it also prints the ops that take the time in each precision
(torch.profiler, self CPU time).

    python bench/ae_step.py --clips data/clips --steps 60 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build(params, bf16: bool):
    import torch

    from pipeline.training.autoencoder.task import AutoencoderTask
    from pipeline.training.ema import EMA
    from pipeline.training.task import NullLogger, StepContext

    torch.manual_seed(params.loop.seed)
    task = AutoencoderTask(params, None, None)
    loop = dataclasses.replace(params.loop, bf16=bf16)
    mods = task.modules()
    emas = {n: EMA(mods[n], loop.ema_decay) for n in task.ema_modules()} if loop.ema_decay else {}
    ctx = StepContext(loop=loop, device=torch.device("cpu"), rank=0, world_size=1,
                      logger=NullLogger(), modules=mods, raw=mods,
                      ema={n: e.module for n, e in emas.items()}, optimizers=task.optimizers())
    return task, ctx, emas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--clips", required=True)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per precision")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--block", type=int, default=4, help="steps per precision before switching")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from bench.autoencoder_ablation import with_overrides
    from pipeline.training.autoencoder.batches import VideoBatch, make_batch_stream
    from pipeline.params import load_section
    from pipeline.training.loop import cpu_has_bf16_units
    from stages.autoencoder import load_clips

    with tempfile.TemporaryDirectory() as tmp:
        path = with_overrides(args.params, args.set, Path(tmp) / "p.yaml") if args.set else args.params
        params = load_section("autoencoder", path)
    params = dataclasses.replace(params, use_vgg=False)
    frames = load_clips(args.clips, "train").frames
    runs = {name: build(params, bf16) for name, bf16 in (("fp32", False), ("bf16", True))}
    streams = {name: make_batch_stream(frames, params, params.loop.seed)(0) for name in runs}
    steps = {name: 0 for name in runs}
    times: dict[str, dict[str, list[float]]] = {n: {"image": [], "video": []} for n in runs}

    def one(name: str) -> None:
        task, ctx, emas = runs[name]
        batch = next(streams[name])
        t0 = time.perf_counter()
        task.train_step(batch, steps[name], ctx)
        for n, ema in emas.items():
            ema.update(ctx.raw[n])
        dt = time.perf_counter() - t0
        if steps[name] >= args.warmup:
            times[name]["video" if isinstance(batch, VideoBatch) else "image"].append(dt)
        steps[name] += 1

    total = args.warmup + args.steps
    while min(steps.values()) < total:
        for name in runs:
            for _ in range(min(args.block, total - steps[name])):
                one(name)

    print(f"threads {args.threads}, cpu bf16 units: {cpu_has_bf16_units()}, overrides {args.set}")
    mean = {n: {k: float(np.mean(v)) for k, v in t.items() if v} for n, t in times.items()}
    for n in runs:
        per = sum(mean[n].values()) / len(mean[n])
        print(f"{n}: image step {mean[n].get('image', float('nan')) * 1e3:.0f} ms, video step "
              f"{mean[n].get('video', float('nan')) * 1e3:.0f} ms, mean {per * 1e3:.0f} ms")
    ratio = {k: mean["fp32"][k] / mean["bf16"][k] for k in mean["bf16"]}
    print("speed-up bf16 over fp32: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratio.items()))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in runs:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(4):
                    one(name)
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
