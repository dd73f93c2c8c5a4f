"""Multi-process training under ``torchrun``: process group, devices, DDP, small collectives.

One code path serves one process and many: every helper is a no-op (or the identity) when the
process group is not initialised, so a stage never branches on "am I distributed".

``torchrun --nproc_per_node 2 -m stages.autoencoder`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``init_from_env`` reads them and joins the group with the
``gloo`` backend on CPU and ``nccl`` on CUDA. Each rank then reads its own shard of the data
(``shard`` or the webdataset node splitter), and ``pipeline.training.loop.fit`` wraps the trainable
modules in ``DistributedDataParallel`` so gradients are averaged across ranks. A stage::

    info = distributed.init_from_env(params.device)   # idempotent; fit calls it too
    batches = make_batches(rank=info.rank, world_size=info.world_size, ...)
    ...
    distributed.cleanup()                              # at the very end of main()

Devices are chosen here (``device_for``) and passed down; nothing calls ``.cuda()``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int  # global rank, 0 .. world_size-1
    world_size: int  # number of processes (1 = not distributed)
    local_rank: int  # rank on this node; picks the GPU
    device: torch.device  # the device this rank computes on

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0


def device_for(local_rank: int, device: str = "auto") -> torch.device:
    """``"cpu"``, ``"cuda"`` (GPU ``local_rank``) or ``"auto"`` (CUDA when available)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process).

    Idempotent: a second call returns the same ``DistInfo``. Backend: ``nccl`` on CUDA, ``gloo``
    on CPU. Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing is initialised.
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    dev = device_for(local_rank, device)
    if env_world <= 1 and not is_initialized():
        return DistInfo(0, 1, 0, dev)
    if not is_initialized():
        missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={env_world} but {', '.join(missing)} unset: launch with torchrun")
        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this torch build")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # NCCL uses the current device
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def cleanup() -> None:
    """Leave the process group (call once, at the end of the process)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """A per-rank seed: ranks draw different augmentations/noise, runs stay reproducible."""
    r = rank() if rank_ is None else rank_
    return (seed * 1_000_003 + r) % 2**63


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """Rank ``r`` of ``n`` takes ``items[r::n]`` (disjoint, together complete)."""
    r = rank() if rank_ is None else rank_
    n = world_size() if world is None else world
    return list(items[r::n])


def _comm_device() -> torch.device:
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of numbers over ranks (same keys on every rank); identity for one process."""
    if not is_initialized() or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (e.g. a stop request)."""
    if not is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` for one process."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def wrap_ddp(module: nn.Module, device: torch.device, **ddp_options: Any) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed and trainable, else ``module`` itself.

    The module must already be on ``device``; ``device_ids`` is passed for CUDA only. DDP
    broadcasts rank 0's parameters and buffers at construction, so replicas start equal.
    """
    if not is_initialized() or not has_trainable(module):
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, **ddp_options)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


@torch.no_grad()
def check_replicas_equal(modules: dict[str, nn.Module], rtol: float = 1e-6) -> None:
    """Raise if the ranks' copies of ``modules`` disagree (gradients were not synchronised).

    Compares per-parameter float64 sums across ranks, so it costs one small all-gather. The usual
    cause is a task calling a module directly instead of through ``ctx.modules[name]`` (the DDP
    wrapper), which skips the gradient all-reduce.
    """
    if not is_initialized():
        return
    sums = {name: torch.stack([p.detach().double().sum() for p in m.parameters()]).cpu()
            for name, m in modules.items() if any(True for _ in m.parameters())}
    gathered = all_gather_object(sums)
    for name, mine in sums.items():
        for r, other in enumerate(gathered):
            if not torch.allclose(mine, other[name], rtol=rtol, atol=0.0):
                raise RuntimeError(
                    f"DDP replicas of module {name!r} diverged between rank {rank()} and rank {r}: "
                    "call modules through ctx.modules[name] so DDP averages the gradients")
