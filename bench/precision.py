"""bf16 vs fp32 training, per training stage: step time and the stage's own validation metric.

    python -m bench.precision --data /path/to/data          # clips/, raw/demo/, tokens/ of a demo run
    python -m bench.precision                               # renders a small demo world first
    python -m bench.precision --stages positions sound_vq --steps positions=100

For each stage (positions, sound_vq, layout_vq, autoencoder, transformer) this calls the stage's
own ``run`` (``stages.<stage>.run``: its data loading, ``TrainTask``, batch stream, the shared loop
``pipeline.training.loop.fit``, its final evaluation and metrics JSON) once per variant:

* ``fp32``   — ``loop.bf16: false``, ``loop.seed`` as in params.yaml;
* ``bf16``   — ``loop.bf16: true`` (autocast to bfloat16; ``fit`` stores conv weights channels-last);
* ``fp32s1`` — fp32 with ``loop.seed + 1``: the seed-to-seed spread of the metric, the tolerance
  bf16 is judged by (``--no-seed-spread`` leaves it out).

**Interleaved.** The variants of a stage run in threads of one process that take turns: a variant
runs ``--block`` training steps, then hands over to the next one (round robin), so every variant's
steps are measured under the same load of a shared machine. Only one thread computes at a time
(the others wait on a condition variable), each variant's global RNG state (torch, numpy, Python)
is put back when its turn comes, so each trains exactly as it would alone, and autocast is
thread-local. A step's time is that of the task's ``train_step`` (forward, backward, optimizer,
as ``fit``'s ``time/step_s``); the data fetch, evaluations and checkpoints are not in it. The
figure is the median over the steps after the first block (warm-up); ``speedup`` = fp32 / bf16.
``--profile N`` runs ``torch.profiler`` over N steps of the fp32 and bf16 variants' second turn
(those steps are not timed) and writes the ops by self CPU time to ``<out>/<stage>/<variant>/
profile.txt``.

**Verdict** per stage: bf16 pays where speedup ≥ ``--min-speedup`` (1.15) and its metric is
better than fp32's or worse by at most |fp32 − fp32s1| (the seed spread).

**Threads.** On a shared machine use ``--threads 1`` (what the Prefect flow gives each stage):
at 2 threads with other jobs running, OpenMP teams are oversubscribed and both precisions slow
down 2.7–5× (BENCHMARKS.md "precision"), which measures the contention rather than the precision.

Without ``--data`` the bench renders a demo world (``stages.demo_data``, ``--videos`` videos),
prepares it (``stages.prepare``) and tokenizes it (``stages.tokenize``) with the models its own
fp32 variants wrote, in ``--out``. The autoencoder runs ``--steps autoencoder=N`` steps (default
100, a short check: its full bf16 measurement is ``bench/ae_recipe.py``'s row in BENCHMARKS.md).
Results: a table on stdout and ``<out>/precision.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.params import (  # noqa: E402
    DataParams,
    DemoParams,
    PrepareParams,
    TokenizeParams,
    build,
    read_yaml,
    section_types,
    with_training_defaults,
)
from pipeline.training import loop as train_loop  # noqa: E402
from pipeline.training.checkpoint import rng_state, set_rng_state  # noqa: E402
from pipeline.training.task import NullLogger  # noqa: E402

STAGES = ("positions", "sound_vq", "layout_vq", "autoencoder", "transformer")


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str  # in the stage's metrics JSON
    higher_is_better: bool
    also: tuple[str, ...] = ()  # reported, not judged


METRICS = {
    "positions": Metric("heldout_error_px_mean", False, ("never_annotated_error_px_mean",)),
    "sound_vq": Metric("val/lsd_db", False, ("val/spectral_convergence", "codebook/perplexity")),
    "layout_vq": Metric("val/miou", True, ("val/pixel_accuracy", "codebook/perplexity")),
    "autoencoder": Metric("val/psnr", True, ("val/psnr_objects", "codebook/perplexity")),
    "transformer": Metric("val/loss", False, ("val/perplexity", "val/accuracy")),
}


# --------------------------------------------------------------------------- taking turns


class Turnstile:
    """Round-robin turns between named threads: ``block`` steps each, one thread at a time, each
    with its own global RNG state."""

    def __init__(self, names: list[str], block: int):
        self.order, self.block = list(names), block
        self.turn: str | None = names[0]
        self.done: set[str] = set()
        self.steps = {n: 0 for n in names}
        self.rng: dict[str, dict] = {}
        self.cond = threading.Condition()

    def _advance(self, name: str) -> None:
        i = self.order.index(name)
        rest = [self.order[(i + k) % len(self.order)] for k in range(1, len(self.order) + 1)]
        self.turn = next((n for n in rest if n not in self.done), None)
        self.cond.notify_all()

    def _wait(self, name: str) -> None:
        self.cond.wait_for(lambda: self.turn == name)
        if name in self.rng:
            set_rng_state(self.rng.pop(name))

    def enter(self, name: str) -> None:
        with self.cond:
            self._wait(name)

    def step(self, name: str) -> None:
        """Called before each training step: hands over after every ``block`` steps."""
        with self.cond:
            if self.steps[name] and self.steps[name] % self.block == 0:
                self.rng[name] = rng_state()
                self._advance(name)
                self._wait(name)
            self.steps[name] += 1

    def leave(self, name: str) -> None:
        with self.cond:
            self.done.add(name)
            if self.turn == name:
                self._advance(name)


@dataclasses.dataclass
class Variant:
    name: str
    bf16: bool
    seed_offset: int
    times: list[float] = dataclasses.field(default_factory=list)
    profile_steps: int = 0  # torch.profiler over this many steps of the second turn
    profile: str = ""  # its table of ops by self CPU time
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: BaseException | None = None


_current = threading.local()


def _timed_fit(turnstile: Turnstile) -> Callable[..., Any]:
    """``fit`` for the stages: times each ``train_step`` and takes turns between them."""

    def fit(task, batches, loop, ckpt_dir, logger=None, resume=True):
        variant: Variant = _current.variant
        step_fn = task.train_step
        block = turnstile.block
        window = range(block, block + min(variant.profile_steps, block))  # within one turn
        prof: list[Any] = []

        def train_step(batch, step, ctx):
            turnstile.step(variant.name)
            if step == window.start and len(window):
                prof.append(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]))
                prof[0].__enter__()
            t0 = time.perf_counter()
            out = step_fn(batch, step, ctx)
            # a profiled step is slower: counted, not timed
            variant.times.append(float("nan") if step in window else time.perf_counter() - t0)
            if prof and step == window.stop - 1:
                prof[0].__exit__(None, None, None)
                variant.profile = prof[0].key_averages().table(sort_by="self_cpu_time_total",
                                                               row_limit=15)
            return out

        task.train_step = train_step
        return train_loop.fit(task, batches, loop, ckpt_dir, logger, resume=False)

    return fit


# --------------------------------------------------------------------------- params


def stage_params(raw: dict, stage: str, **loop: Any) -> Any:
    """Section ``stage`` of params.yaml with ``loop`` keys overridden."""
    section = dict(raw[stage])
    section["loop"] = {**section["loop"], **loop}
    return build(section_types()[stage], with_training_defaults({**raw, stage: section}, stage),
                 stage)


def call_stage(stage: str, params: Any, paths: dict[str, Path], out: Path) -> dict[str, Any]:
    """``stages.<stage>.run`` with ``paths`` (clips, raw, tokens) writing into ``out``."""
    mod = importlib.import_module(f"stages.{stage}")
    log = NullLogger()
    out.mkdir(parents=True, exist_ok=True)
    model, metrics, ckpt = out / "model.pt", out / "metrics.json", out / "ckpt"
    if stage == "positions":
        return mod.run(params, paths["clips"], paths.get("raw"), model, out / "positions", metrics,
                       log, ckpt_dir=ckpt, resume=False)
    if stage in ("sound_vq", "layout_vq"):
        return mod.run(params, paths["clips"], model, metrics, ckpt, log, out / "artifacts")
    if stage == "autoencoder":
        return mod.run(params, paths["clips"], model, metrics, out / "plots", ckpt, log)
    if stage == "transformer":
        return mod.run(params, paths["tokens"], model, metrics, out / "plots", ckpt, log)
    raise ValueError(stage)


def run_stage(stage: str, raw: dict, variants: list[Variant], steps: int | None, block: int,
              paths: dict[str, Path], out: Path) -> None:
    """Every variant of ``stage``, interleaved (module docstring)."""
    base = stage_params(raw, stage)
    overrides = {"ckpt_every": 0}
    if steps is not None:
        overrides["steps"] = steps
    turnstile = Turnstile([v.name for v in variants], block)
    mod = importlib.import_module(f"stages.{stage}")
    real_fit, real_bar = mod.fit, train_loop.tqdm
    mod.fit = _timed_fit(turnstile)
    # the variants' progress is this bench's lines (three bars in turns would interleave)
    train_loop.tqdm = lambda *a, **k: real_bar(*a, **{**k, "disable": True})

    def work(v: Variant) -> None:
        _current.variant = v
        params = stage_params(raw, stage, bf16=v.bf16, seed=base.loop.seed + v.seed_offset,
                              **overrides)
        turnstile.enter(v.name)
        try:
            v.metrics = call_stage(stage, params, paths, out / stage / v.name)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            v.error = err
        finally:
            turnstile.leave(v.name)

    threads = [threading.Thread(target=work, args=(v,), name=f"{stage}-{v.name}") for v in variants]
    total = steps if steps is not None else base.loop.steps
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=15)
            print(f"  {stage}: " + ", ".join(f"{v.name} {len(v.times)}/{total}" for v in variants),
                  file=sys.stderr, flush=True)
    finally:
        mod.fit, train_loop.tqdm = real_fit, real_bar
    for v in variants:
        if v.error is not None:
            raise RuntimeError(f"{stage} ({v.name}) failed: {v.error}") from v.error
        if v.profile:
            path = out / stage / v.name / "profile.txt"
            path.write_text(v.profile, encoding="utf-8")
            print(f"{stage} ({v.name}): {len(range(block, block + v.profile_steps))} steps "
                  f"profiled → {path}\n{v.profile}", file=sys.stderr)


# --------------------------------------------------------------------------- report


def summarize(stage: str, variants: list[Variant], block: int, min_speedup: float) -> dict:
    by = {v.name: v for v in variants}
    metric = METRICS[stage]

    def med(v: Variant) -> float:
        times = [t for t in (v.times[block:] or v.times) if t == t]
        return statistics.median(times) if times else float("nan")

    def value(v: Variant, key: str) -> float:
        return float(v.metrics.get(key, float("nan")))

    fp32, bf16 = by["fp32"], by["bf16"]
    row: dict[str, Any] = {"steps": len(fp32.times), "metric": metric.key,
                           "higher_is_better": metric.higher_is_better}
    for v in variants:
        row[v.name] = {"step_s": med(v), "metric": value(v, metric.key),
                       **{k: value(v, k) for k in metric.also}}
    row["speedup"] = med(fp32) / med(bf16)
    a, b = value(fp32, metric.key), value(bf16, metric.key)
    worse = (a - b) if metric.higher_is_better else (b - a)  # > 0: bf16 worse
    row["bf16_worse_by"] = worse
    if "fp32s1" in by:
        row["tolerance"] = abs(value(by["fp32s1"], metric.key) - a)
        row["metric_ok"] = bool(worse <= row["tolerance"])
    else:
        row["tolerance"], row["metric_ok"] = float("nan"), bool(worse <= 0)
    row["bf16_pays"] = bool(row["speedup"] >= min_speedup and row["metric_ok"])
    return row


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def print_table(rows: dict[str, dict]) -> None:
    print(f"{'stage':<12} {'steps':>5} {'fp32 s':>8} {'bf16 s':>8} {'speedup':>7}  "
          f"{'metric':<24} {'fp32':>9} {'bf16':>9} {'fp32 s1':>9} {'tol':>7}  pays")
    for stage, r in rows.items():
        s1 = r.get("fp32s1", {}).get("metric", float("nan"))
        print(f"{stage:<12} {r['steps']:>5} {r['fp32']['step_s']:>8.4f} {r['bf16']['step_s']:>8.4f} "
              f"{r['speedup']:>6.2f}×  {r['metric']:<24} {r['fp32']['metric']:>9.4f} "
              f"{r['bf16']['metric']:>9.4f} {s1:>9.4f} {r['tolerance']:>7.4f}  "
              f"{'yes' if r['bf16_pays'] else 'no'}")


# --------------------------------------------------------------------------- data


def make_data(raw: dict, out: Path, videos: int, frames: int) -> dict[str, Path]:
    """A small demo world, rendered and prepared with the stages' own code."""
    from stages import demo_data, prepare

    demo = build(DemoParams, {**raw["demo"], "num_videos": videos, "num_frames": frames,
                              "annotated_frames": min(raw["demo"]["annotated_frames"],
                                                      videos * frames // 2)}, "demo")
    raw_dir, clips = out / "raw" / "demo", out / "clips"
    demo_data.run(demo, raw_dir, NullLogger())
    data = build(DataParams, {**raw["data"], "source": "demo", "path": str(raw_dir),
                              "annotations": ""}, "data")
    prep = build(PrepareParams, {**raw["prepare"], "workers": 1, "shards": ""}, "prepare")
    prepare.run(data, prep, clips, NullLogger())
    return {"clips": clips, "raw": raw_dir}


def make_tokens(raw: dict, paths: dict[str, Path], out: Path) -> Path:
    """tokenize with the models the fp32 variants of this run wrote."""
    from stages import tokenize

    params = build(TokenizeParams, {**raw["tokenize"], "device": "cpu", "shards": ""}, "tokenize")
    models = {s: out / s / "fp32" / "model.pt" for s in ("sound_vq", "layout_vq")}
    positions = out / "positions" / "fp32" / "positions"
    tokens = out / "data" / "tokens"
    tokenize.run(params, paths["clips"], out / "autoencoder" / "fp32" / "model.pt", tokens,
                 NullLogger(), sound_vq=models["sound_vq"] if models["sound_vq"].exists() else None,
                 layout_vq=models["layout_vq"] if models["layout_vq"].exists() else None,
                 positions=positions if positions.exists() else None)
    return tokens


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--data", default="", help="a demo run's data/ (clips/, raw/demo/, tokens/); "
                    "'' = render and prepare a small demo world into --out")
    ap.add_argument("--out", default="bench_out/precision")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--steps", nargs="*", default=[], metavar="STAGE=N",
                    help="steps per stage (default: params.yaml's, autoencoder 100)")
    ap.add_argument("--block", type=int, default=10, help="steps per turn")
    ap.add_argument("--min-speedup", type=float, default=1.15)
    ap.add_argument("--no-seed-spread", action="store_true", help="skip the fp32 seed+1 variant")
    ap.add_argument("--videos", type=int, default=12, help="demo world size without --data")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as set)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="torch.profiler over N ≤ --block steps of each variant's second turn")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    raw = read_yaml(args.params)
    steps = {"autoencoder": 100}
    for item in args.steps:
        name, _, n = item.partition("=")
        if name not in STAGES or not n.isdigit():
            raise SystemExit(f"--steps {item!r}: expected STAGE=N, STAGE one of {', '.join(STAGES)}")
        steps[name] = int(n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.data:
        data = Path(args.data)
        paths = {"clips": data / "clips", "raw": data / "raw" / "demo", "tokens": data / "tokens"}
    else:
        paths = make_data(raw, out / "data", args.videos, args.frames)
    print(f"precision bench: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16 units: {train_loop.cpu_has_bf16_units()}, {platform.processor() or platform.machine()}"
          f", load {load_average()}", file=sys.stderr)

    rows: dict[str, dict] = {}
    for stage in args.stages:
        if stage == "transformer" and "tokens" not in paths:
            paths["tokens"] = make_tokens(raw, paths, out)
        variants = [Variant("fp32", False, 0, profile_steps=args.profile),
                    Variant("bf16", True, 0, profile_steps=args.profile)]
        if not args.no_seed_spread:
            variants.append(Variant("fp32s1", False, 1))
        load0 = load_average()
        t0 = time.perf_counter()
        run_stage(stage, raw, variants, steps.get(stage), args.block, paths, out)
        rows[stage] = summarize(stage, variants, args.block, args.min_speedup)
        rows[stage]["load_average"] = [load0, load_average()]
        rows[stage]["wall_s"] = time.perf_counter() - t0
        print(f"{stage}: speedup {rows[stage]['speedup']:.2f}×, {rows[stage]['metric']} fp32 "
              f"{rows[stage]['fp32']['metric']:.4f} / bf16 {rows[stage]['bf16']['metric']:.4f} "
              f"(load {load0} → {load_average()})", file=sys.stderr, flush=True)
    print_table(rows)
    (out / "precision.json").write_text(json.dumps(
        {"torch": torch.__version__, "threads": torch.get_num_threads(), "block": args.block,
         "min_speedup": args.min_speedup, "stages": rows}, indent=2), encoding="utf-8")
    return rows


if __name__ == "__main__":
    main()
