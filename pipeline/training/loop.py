"""The one training loop every training stage shares (autoencoder, positions, sound/layout VQ, T).

A stage describes *what* one step does by subclassing ``TrainTask``; ``fit`` does the rest:
device placement, DDP under ``torchrun``, bf16 autocast (with conv weights stored channels-last),
gradient clipping, the EMA of the weights
(the paper's final autoencoder parameters, §4 "Training details"), metrics to the logger,
periodic evaluation, atomic checkpoints and exact resume, a progress bar, and a clean stop on
Ctrl-C / SIGTERM (a checkpoint at the step boundary, then ``KeyboardInterrupt``).

The task protocol (``TrainTask``, the ``StepContext`` a step gets, ``NullLogger``), with an
example stage and the rules a task follows, lives in ``pipeline/training/task.py``; this module
re-exports it. Calling the loop from a stage::

    result = fit(AETask(cfg, lr), lambda start: make_batches(seed, rank, start), params.loop,
                 Path("checkpoints/autoencoder"), logger)
    if result.is_main:
        save_model("models/autoencoder.pt", cfg.model, result.state["ae"], step=result.step)

Data position: ``batches`` is a callable ``make_batches(start_step) -> iterator`` yielding the
batch of step ``start_step``, then the next...; it must be deterministic (a seed, the rank, the
step) and endless (``epoch_batches`` helps). A resumed run calls it with the checkpoint's step,
so the resumed run sees the same batches as an uninterrupted one. A plain iterable is accepted
too; on resume its first ``start_step`` items are skipped. A stream with a position of its own
(``pipeline.data.stream.ShardStream``: ``takes_state``, its iterator's ``state_dict()``) is
checkpointed per rank and called back as ``make_batches(start_step, state)`` on resume.

Stopping: the first Ctrl-C / SIGTERM (torchrun forwards it to every worker and waits before
killing them) finishes the current step, writes a checkpoint and raises ``KeyboardInterrupt``;
a second one aborts at once. Any other exception propagates without a checkpoint (the state may
be mid-step); the run resumes from the last periodic checkpoint.

Tags on the stage's run: ``CHECKPOINT_TAG`` (the checkpoint just written) and, on resume,
``train_loop.resumed_from`` (the step) and ``RESUMED_CHECKPOINT_TAG`` (the file), so the tracking
links a resumed run to the run that wrote its checkpoint and continues that run's curves
(``pipeline.tracking.interruption``).

Resume restores the step count, modules, optimizers, EMA copies, the torch/numpy/Python RNG of
every rank, the partial metrics window and ``TrainTask.extra_state()``; a checkpoint written by a
different ``config()`` is refused with the differing keys named. Step numbering: ``train_step``
receives the 0-based index of the step it performs; metrics, checkpoints and evaluations are
labelled with the number of steps completed (1 .. ``loop.steps``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from ccvs_models.blocks import channels_last_
from pipeline.training import distributed
from pipeline.training.checkpoint import (
    FORMAT,
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    seed_all,
    set_rng_state,
    to_plain,
)
from pipeline.training.config import LoopConfig
from pipeline.training.ema import EMA
# the task protocol lives in pipeline.training.task; re-exported so callers' imports stay
from pipeline.training.task import NullLogger, StepContext, TrainTask

log = logging.getLogger(__name__)
T = TypeVar("T")

# Tags fit sets on the stage's run, so the tracking can link a resumed run to the run that wrote
# its checkpoint and continue that run's curves (pipeline.tracking.interruption).
CHECKPOINT_TAG = "train_loop.checkpoint"  # the checkpoint just written
RESUMED_CHECKPOINT_TAG = "train_loop.resumed_checkpoint"  # the checkpoint this run resumed from


@dataclasses.dataclass
class FitResult:
    """What ``fit`` hands back to the stage."""

    step: int  # steps completed
    metrics: dict[str, float]  # the last logged training metrics (window means, rank-averaged)
    eval_metrics: dict[str, float]  # the last evaluation's metrics (rank 0's)
    state: dict[str, dict[str, torch.Tensor]]  # per module: EMA weights where kept, else raw; CPU
    resumed_from: int | None  # the checkpoint step this run started from (None: fresh)
    checkpoint: Path | None  # the last checkpoint written or read
    is_main: bool  # rank 0: the process that should write the stage's outputs


def epoch_batches(make_epoch: Callable[[int], Iterable[T]], start_step: int = 0) -> Iterator[T]:
    """An endless stream over epochs 0, 1, 2, ... starting at batch ``start_step``.

    ``make_epoch(epoch)`` must be deterministic (shuffle with a seed derived from the epoch and
    rank). Epochs with a ``len`` are skipped whole; others are iterated to reach ``start_step``.
    """
    seen = 0
    for epoch in itertools.count():
        batches = make_epoch(epoch)
        if hasattr(batches, "__len__") and seen + len(batches) <= start_step:
            if len(batches) == 0:
                raise ValueError(f"make_epoch({epoch}) yielded no batches")
            seen += len(batches)
            continue
        n = 0
        for batch in batches:
            n += 1
            if seen >= start_step:
                yield batch
            seen += 1
        if n == 0:
            raise ValueError(f"make_epoch({epoch}) yielded no batches")


def cpu_has_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether the CPU has bf16 matrix units: the ``amx_bf16`` or ``avx512_bf16`` flag of
    /proc/cpuinfo (False where the file cannot be read, e.g. not Linux)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split()}
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_bf16(setting: bool | str, device: torch.device) -> bool:
    """``loop.bf16`` → on/off for ``device``: true / false as given; "auto" = on for CUDA devices
    that support bf16 and for CPUs with AMX-BF16 / AVX-512-BF16 (where bf16 convs and matmuls
    measured faster than fp32: BENCHMARKS.md), off elsewhere."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu" and cpu_has_bf16_units()


# --------------------------------------------------------------------------- internals


class _Window:
    """Running sums of per-step metrics between two log points (checkpointed for exact resume)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def flush(self) -> dict[str, float]:
        means = {k: self.sums[k] / self.counts[k] for k in sorted(self.sums)}
        self.sums, self.counts = {}, {}
        return distributed.all_reduce_mean(means)

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


class _StopRequest:
    """First SIGINT/SIGTERM: ask the loop to stop at the next step boundary. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step (again to abort now)",
              file=sys.stderr, flush=True)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys → leaves; lists and tuples compare as lists (a checkpoint may turn one into the other)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix[:-1]: [_flatten(v).get("", v) if not isinstance(v, dict) else _flatten(v)
                              for v in obj]}
    return {prefix[:-1]: obj}


def _config_diff(old: Any, new: Any) -> list[str]:
    a, b = _flatten(to_plain(old)), _flatten(to_plain(new))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]


def _to_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"train_step metric {name!r} is not a number: {value!r}") from None


def _batch_iterator(batches: Any, start: int, state: Any = None) -> Iterator[Any]:
    if callable(batches):
        if state is not None and getattr(batches, "takes_state", False):
            return iter(batches(start, state))
        return iter(batches(start))
    it = iter(batches)
    for _ in itertools.islice(it, start):
        pass
    return it


# --------------------------------------------------------------------------- fit


def fit(
    task: TrainTask,
    batches: Callable[[int], Iterable[Any]] | Iterable[Any],
    loop: LoopConfig,
    ckpt_dir: str | Path,
    logger: Any = None,
    resume: bool | str = True,
) -> FitResult:
    """Train ``task`` for ``loop.steps`` steps, resuming from the newest checkpoint in ``ckpt_dir``.

    ``resume=False`` deletes the checkpoints in ``ckpt_dir`` and starts afresh. ``resume="auto"``
    (what DVC stages use) resumes when the newest checkpoint was written by the same
    ``task.config()`` — a killed or interrupted run — and otherwise starts afresh with a warning,
    so a changed param (``dvc exp run -S stage.lr=...``) retrains instead of failing. Only rank 0
    logs and writes files; every rank returns the same ``FitResult.state``.
    """
    info = distributed.init_from_env(loop.device)
    device, main = info.device, info.is_main
    logger = logger if (main and logger is not None) else NullLogger()
    if loop.bf16 == "auto":
        loop = dataclasses.replace(loop, bf16=resolve_bf16(loop.bf16, device))
        if hasattr(logger, "set_tag"):
            logger.set_tag("train_loop.bf16", str(loop.bf16).lower())
    ckpt_dir = Path(ckpt_dir)

    raw = dict(task.modules())
    if not raw:
        raise ValueError("TrainTask.modules() returned no modules")
    for m in raw.values():
        m.to(device).train()  # parameters keep their identity: optimizers stay valid
        if loop.bf16:  # oneDNN's bf16 convs run on channels-last tensors without reordering
            channels_last_(m)
    optimizers = dict(task.optimizers())
    ema_names = list(task.ema_modules()) if loop.ema_decay > 0 else []
    unknown = [n for n in ema_names if n not in raw]
    if unknown:
        raise ValueError(f"ema_modules() names unknown modules {unknown}; modules are {sorted(raw)}")

    if resume == "auto":
        newest = latest_checkpoint(ckpt_dir)
        resume = True
        if newest is not None:
            old = load_checkpoint(newest).get("config", {})
            diff = _config_diff(old, task.config())
            if diff:
                log.warning("%s: written by another config (%s): training from scratch",
                            newest, "; ".join(diff[:5]))
                resume = False
    elif resume not in (True, False):
        raise ValueError(f"resume must be True, False or 'auto', got {resume!r}")
    if not resume and main:
        for _, p in list_checkpoints(ckpt_dir):
            p.unlink()
    distributed.barrier()

    window = _Window()
    stream_state = None  # this rank's data-stream position in the checkpoint, if any
    start, resumed_from = 0, None
    ckpt_path = latest_checkpoint(ckpt_dir) if resume else None
    payload = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if payload is not None:
        diff = _config_diff(payload.get("config", {}), task.config())
        if diff:
            raise CheckpointError(
                f"{ckpt_path}: written by a different config ({'; '.join(diff[:5])}); "
                f"delete {ckpt_dir} or train with resume=False")
        for name, module in raw.items():
            if name not in payload["state"]:
                raise CheckpointError(f"{ckpt_path}: no state for module {name!r}")
            module.load_state_dict(payload["state"][name])
        for name, opt in optimizers.items():
            if name not in payload["optimizers"]:
                raise CheckpointError(f"{ckpt_path}: no state for optimizer {name!r}")
            opt.load_state_dict(payload["optimizers"][name])
        start = resumed_from = int(payload["step"])
    emas = {n: EMA(raw[n], loop.ema_decay) for n in ema_names}  # after loading: starts from θ
    if payload is not None:
        for name, ema in emas.items():
            if name in payload.get("ema", {}):
                ema.load_state_dict(payload["ema"][name])
        extra = payload.get("extra", {})
        task.load_extra_state(extra.get("task", {}))
        per_rank = payload.get("rng", {}).get("per_rank", [])
        windows = extra.get("window", {}).get("per_rank", [])
        streams = extra.get("stream", {}).get("per_rank", [])
        if len(per_rank) == info.world_size:
            set_rng_state(per_rank[info.rank])
            if len(windows) == info.world_size:
                window.load(windows[info.rank])
            if len(streams) == info.world_size:
                stream_state = streams[info.rank]
        else:  # another world size: per-rank streams cannot continue exactly
            log.warning("%s: saved by %d ranks, running %d: RNG reseeded from (seed, step)",
                        ckpt_path, len(per_rank), info.world_size)
            seed_all(distributed.rank_seed(loop.seed + start, info.rank))
        if hasattr(logger, "set_tag"):
            logger.set_tag("train_loop.resumed_from", str(start))
            logger.set_tag(RESUMED_CHECKPOINT_TAG, str(ckpt_path))
        log.info("resumed from %s (step %d)", ckpt_path, start)
    else:
        seed_all(distributed.rank_seed(loop.seed, info.rank))

    modules = {n: distributed.wrap_ddp(m, device, **task.ddp_options()) for n, m in raw.items()}
    ctx = StepContext(loop=loop, device=device, rank=info.rank, world_size=info.world_size,
                      logger=logger, modules=modules, raw=raw,
                      ema={n: e.module for n, e in emas.items()}, optimizers=optimizers)

    def save(step: int) -> Path:
        position = it.state_dict() if hasattr(it, "state_dict") else None
        ranks = distributed.all_gather_object({"rng": rng_state(), "window": window.state(),
                                               "stream": position})
        distributed.check_replicas_equal(raw)
        path = checkpoint_path(ckpt_dir, step)
        if main:
            save_checkpoint(path, {
                "format": FORMAT,
                "config": to_plain(task.config()),
                "state": {n: m.state_dict() for n, m in raw.items()},
                "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
                "ema": {n: e.state_dict() for n, e in emas.items()},
                "step": step,
                "rng": {"per_rank": [r["rng"] for r in ranks]},
                "extra": {"window": {"per_rank": [r["window"] for r in ranks]},
                          "stream": {"per_rank": [r["stream"] for r in ranks]},
                          "task": task.extra_state(),
                          "loop": dataclasses.asdict(loop)},
            })
            prune_checkpoints(ckpt_dir, loop.keep_checkpoints)
            if hasattr(logger, "set_tag"):
                logger.set_tag(CHECKPOINT_TAG, str(path))
        distributed.barrier()
        return path

    def evaluate(step: int) -> dict[str, float]:
        modes = {n: m.training for n, m in raw.items()}
        np_state, py_state = np.random.get_state(), random.getstate()
        cuda_devices = [device.index] if device.type == "cuda" else []
        try:
            for m in raw.values():
                m.eval()
            with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
                seed_all(distributed.rank_seed(loop.seed + 1, info.rank))
                out = task.evaluate(step, ctx) or {}
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
            for n, m in raw.items():
                m.train(modes[n])
        values = {k: _to_float(k, v) for k, v in out.items()}
        if values:
            logger.log_metrics(values, step=step)
        return values

    step = start
    last_ckpt: int | None = start if payload is not None else None
    last_eval: int | None = None
    metrics: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    it = _batch_iterator(batches, start, stream_state)
    bar = tqdm(total=loop.steps, initial=min(start, loop.steps), disable=not main,
               dynamic_ncols=True, mininterval=1.0, desc="train")
    try:
        with _StopRequest() as stop:
            while step < loop.steps:
                try:
                    batch = next(it)
                except StopIteration:
                    raise RuntimeError(
                        f"the batch stream ended after step {step} of {loop.steps}: make it "
                        "endless (see train_loop.epoch_batches)") from None
                ctx._metrics = {}
                t0 = time.perf_counter()
                out = task.train_step(batch, step, ctx)
                step += 1
                for name, ema in emas.items():
                    ema.update(raw[name])
                values = {k: _to_float(k, v) for k, v in {**(out or {}), **ctx._metrics}.items()}
                values["time/step_s"] = time.perf_counter() - t0
                window.add(values)
                bar.update(1)
                shown = values.get("loss", next(iter(values.values())))
                bar.set_postfix_str(f"loss={shown:.4g}", refresh=False)
                if step % loop.log_every == 0:
                    metrics = window.flush()
                    logger.log_metrics(metrics, step=step)
                if loop.ckpt_every and step % loop.ckpt_every == 0:
                    ckpt_path, last_ckpt = save(step), step
                if loop.eval_every and step % loop.eval_every == 0:
                    eval_metrics, last_eval = evaluate(step), step
                if distributed.any_rank(stop.requested):
                    if last_ckpt != step:
                        ckpt_path, last_ckpt = save(step), step
                    raise KeyboardInterrupt(f"training stopped at step {step}; checkpoint {ckpt_path}")
            if last_ckpt != step:  # before the flush: a longer resumed run logs the same means
                ckpt_path, last_ckpt = save(step), step
            if window.counts:
                metrics = window.flush()
                logger.log_metrics(metrics, step=step)
            if last_eval != step:
                eval_metrics = evaluate(step)
    finally:
        bar.close()

    state = {n: {k: v.detach().cpu().clone() for k, v in
                 (emas[n].state_dict() if n in emas else raw[n].state_dict()).items()}
             for n in raw}
    return FitResult(step=step, metrics=metrics, eval_metrics=eval_metrics, state=state,
                     resumed_from=resumed_from, checkpoint=ckpt_path, is_main=main)
