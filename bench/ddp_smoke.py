"""Smoke-test the shared training loop on this machine: one process or many, CPU or GPU.

    python bench/ddp_smoke.py --steps 50                                   # one process
    torchrun --nproc_per_node 2 bench/ddp_smoke.py --steps 50 --device cpu  # DDP over gloo
    torchrun --nproc_per_node 4 bench/ddp_smoke.py --device cuda --bf16     # DDP over NCCL

Trains a small conv autoencoder on random images through ``pipeline.training.loop.fit`` (DDP,
checkpoints, EMA, optional bf16) and prints the step time on rank 0. ``fit`` checks at every
checkpoint that the replicas agree, so a clean exit means gradients were synchronised.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training import distributed
from pipeline.training.config import LoopConfig
from pipeline.training.loop import fit
from pipeline.training.task import TrainTask


class ConvAE(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, width, 4, 2, 1))
        self.dec = nn.Sequential(nn.ConvTranspose2d(width, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.ConvTranspose2d(width, 3, 4, 2, 1))

    def forward(self, x):
        return self.dec(self.enc(x))


class SmokeTask(TrainTask):
    def __init__(self, width: int, lr: float):
        self.ae = ConvAE(width)
        self.opt = torch.optim.Adam(self.ae.parameters(), lr)
        self.width = width

    def modules(self):
        return {"ae": self.ae}

    def optimizers(self):
        return {"adam": self.opt}

    def ema_modules(self):
        return ["ae"]

    def config(self):
        return {"width": self.width}

    def train_step(self, batch, step, ctx):
        x = ctx.to_device(batch)
        with ctx.autocast():
            recon = ctx.modules["ae"](x)
        loss = F.mse_loss(recon.float(), x)
        ctx.optimize(loss, "adam")
        return {"loss": loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16, help="per rank")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()

    info = distributed.init_from_env(args.device)
    torch.manual_seed(0)

    def make_batches(start):
        for step in itertools.count(start):
            g = torch.Generator().manual_seed(distributed.rank_seed(step, info.rank))
            yield torch.rand(args.batch, 3, args.size, args.size, generator=g)

    loop = LoopConfig(steps=args.steps, log_every=10, ckpt_every=max(1, args.steps // 2),
                      ema_decay=0.99, bf16=args.bf16, device=args.device)
    with tempfile.TemporaryDirectory() as ckpt_dir:
        ckpt_dir = distributed.all_gather_object(ckpt_dir)[0]  # rank 0's dir (one machine)
        t0 = time.perf_counter()
        result = fit(SmokeTask(args.width, 1e-3), make_batches, loop, ckpt_dir)
        elapsed = time.perf_counter() - t0
        distributed.barrier()
    if info.is_main:
        print(f"world_size={info.world_size} device={info.device} bf16={args.bf16} steps={result.step} "
              f"loss={result.metrics.get('loss', float('nan')):.4f} "
              f"step_time={result.metrics.get('time/step_s', float('nan')) * 1e3:.1f} ms "
              f"total={elapsed:.1f} s")
    distributed.cleanup()


if __name__ == "__main__":
    main()
