"""pipeline.training.distributed, and fit under torchrun with 2 CPU processes (gloo).

The DDP test runs this very file as the torchrun worker script (``__main__`` below), so the
worker and its checks live together.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pipeline.training import distributed
from pipeline.training.checkpoint import list_checkpoints, load_checkpoint
from pipeline.training.config import LoopConfig
from pipeline.training.loop import fit
from pipeline.training.task import TrainTask

torch.set_num_threads(1)

STEPS_FIRST, STEPS = 3, 6  # the worker trains to 3, then a second fit resumes to 6
GLOBAL_BATCH, LR = 8, 0.1


# --------------------------------------------------------------------------- single process


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init_from_env("cpu")
    assert (info.rank, info.world_size, info.is_main, info.device) == (0, 1, True, torch.device("cpu"))
    assert not distributed.is_initialized()
    assert distributed.all_reduce_mean({"a": 2, "b": 0.5}) == {"a": 2.0, "b": 0.5}
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    m = nn.Linear(2, 2)
    assert distributed.wrap_ddp(m, info.device) is m and distributed.unwrap(m) is m
    distributed.barrier()
    distributed.check_replicas_equal({"m": m})


def test_world_size_without_torchrun_env_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match="RANK, MASTER_ADDR, MASTER_PORT unset: launch with torchrun"):
        distributed.init_from_env("cpu")


def test_devices_seeds_and_shards():
    assert distributed.device_for(0, "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.device_for(0, "auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no CUDA device"):
            distributed.device_for(0, "cuda")
    with pytest.raises(ValueError, match="got 'gpu'"):
        distributed.device_for(0, "gpu")
    assert len({distributed.rank_seed(0, r) for r in range(8)}) == 8
    assert distributed.rank_seed(1, 0) != distributed.rank_seed(0, 1)
    items = list(range(10))
    parts = [distributed.shard(items, r, 3) for r in range(3)]
    assert sorted(itertools.chain(*parts)) == items and parts[1] == [1, 4, 7]


# --------------------------------------------------------------------------- the toy DDP task


class LinearTask(TrainTask):
    """Linear regression with plain SGD: DDP's averaged gradient = the full-batch gradient."""

    def __init__(self, init_seed: int):
        torch.manual_seed(init_seed)
        self.lin = nn.Linear(4, 1)
        self.opt = torch.optim.SGD(self.lin.parameters(), lr=LR)

    def modules(self):
        return {"lin": self.lin}

    def optimizers(self):
        return {"sgd": self.opt}

    def ema_modules(self):
        return ["lin"]

    def config(self):
        return {"in": 4}

    def train_step(self, batch, step, ctx):
        x, y = ctx.to_device(batch)
        with ctx.autocast():
            loss = F.mse_loss(ctx.modules["lin"](x), y)
        ctx.optimize(loss, "sgd")
        return {"loss": loss.item(), "rank": float(ctx.rank)}


class BypassTask(LinearTask):
    def train_step(self, batch, step, ctx):
        x, y = batch
        x = x[ctx.rank :: 2] * (1 + ctx.rank)  # ranks' data differ
        loss = F.mse_loss(ctx.raw["lin"](x), y[ctx.rank :: 2])  # the bare module: no all-reduce
        ctx.optimize(loss, "sgd")
        return {"loss": loss.item()}


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(500 + step)
    x = torch.randn(GLOBAL_BATCH, 4, generator=g)
    return x, x @ torch.tensor([[1.0], [2.0], [-1.0], [0.5]]) + 0.3


class Recorder:
    def __init__(self):
        self.metrics = defaultdict(list)

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.metrics[k].append((step, v))

    def set_tag(self, key, value):
        self.metrics[f"tag:{key}"].append((None, value))


def _worker(out_dir: Path) -> None:
    """Runs in each torchrun process: two fits (fresh, then resumed) on this rank's data shard."""
    info = distributed.init_from_env("cpu")
    seen: list[list[float]] = []

    def make_batches(start):
        for step in itertools.count(start):
            x, y = global_batch(step)
            xs, ys = x[info.rank :: info.world_size], y[info.rank :: info.world_size]
            seen.append(xs[:, 0].tolist())
            yield xs, ys

    logger = Recorder()
    loop = LoopConfig(steps=STEPS_FIRST, log_every=1, ckpt_every=STEPS_FIRST, ema_decay=0.5,
                      device="cpu", seed=3)
    # Rank-dependent init: DDP must broadcast rank 0's weights for the replicas to agree.
    fit(LinearTask(init_seed=100 + info.rank), make_batches, loop, out_dir / "ckpt", logger)
    loop = dataclasses.replace(loop, steps=STEPS)
    task = LinearTask(init_seed=999 + info.rank)
    result = fit(task, make_batches, loop, out_dir / "ckpt", logger)
    guard = ""
    try:  # a task that bypasses the DDP wrapper must be caught, not silently drift
        fit(BypassTask(init_seed=7), lambda start: (global_batch(s) for s in itertools.count(start)),
            LoopConfig(steps=2, ckpt_every=2, device="cpu"), out_dir / "bypass")
    except RuntimeError as err:
        guard = str(err)
    torch.save({"lin": {k: v.clone() for k, v in task.lin.state_dict().items()}, "guard": guard,
                "ema": result.state["lin"], "seen": seen, "metrics": dict(logger.metrics),
                "resumed_from": result.resumed_from, "world_size": info.world_size,
                "rng": torch.get_rng_state()},
               out_dir / f"rank{info.rank}.pt")
    distributed.cleanup()


def _reference_weights() -> dict[str, torch.Tensor]:
    """One process, full batches, SGD: what 2-rank DDP must reproduce."""
    torch.manual_seed(100)  # rank 0's init
    lin = nn.Linear(4, 1)
    opt = torch.optim.SGD(lin.parameters(), lr=LR)
    for step in range(STEPS):
        x, y = global_batch(step)
        opt.zero_grad()
        F.mse_loss(lin(x), y).backward()
        opt.step()
    return lin.state_dict()


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
@pytest.mark.timeout(120)
def test_fit_under_torchrun_keeps_replicas_equal_on_sharded_data(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    for key in r0["lin"]:  # replicas bitwise equal, raw and EMA
        assert torch.equal(r0["lin"][key], r1["lin"][key]), key
        assert torch.equal(r0["ema"][key], r1["ema"][key]), key
    ref = _reference_weights()  # and equal to full-batch training: the gradients were averaged
    for key in ref:
        assert torch.allclose(r0["lin"][key], ref[key], atol=1e-6), key
    assert not torch.equal(r0["ema"]["weight"], r0["lin"]["weight"])

    # Each rank saw its own half of every global batch, once per step, also after the resume.
    assert len(r0["seen"]) == len(r1["seen"]) == STEPS
    for step in range(STEPS):
        x, _ = global_batch(step)
        assert r0["seen"][step] == x[0::2, 0].tolist() and r1["seen"][step] == x[1::2, 0].tolist()
    assert r0["resumed_from"] == r1["resumed_from"] == STEPS_FIRST
    assert not torch.equal(r0["rng"], r1["rng"])  # per-rank RNG streams, restored per rank

    # Only rank 0 logged (rank-averaged values) and wrote checkpoints.
    assert r1["metrics"] == {}
    assert [s for s, _ in r0["metrics"]["loss"]] == list(range(1, STEPS + 1))
    assert all(v == 0.5 for _, v in r0["metrics"]["rank"])  # mean of ranks 0 and 1
    ckpts = list_checkpoints(tmp_path / "ckpt")
    assert [s for s, _ in ckpts] == [STEPS_FIRST, STEPS]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [p.name for _, p in ckpts]
    assert "replicas of module 'lin' diverged" in r0["guard"] and "ctx.modules" in r1["guard"]
    assert not (tmp_path / "bypass").exists() or not list_checkpoints(tmp_path / "bypass")
    per_rank = load_checkpoint(ckpts[-1][1])["rng"]["per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["torch"], per_rank[1]["torch"])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
