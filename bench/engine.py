"""Benchmark of the distributed engine: a local Dask cluster against today's single-machine paths.

On the same videos and in one run (interleaved rounds, the order rotated each round):

- ``prepare`` with ``prepare.workers = 2`` (this process + one forked decoder writing clips in
  place: the process pool the stage uses by default) against ``engine.kind: dask`` on a local
  cluster of 2 worker processes: once with the cluster already running (``engine.address``), once
  starting its own (the cluster's start-up counted, as a ``dvc repro`` with ``address: ""`` pays);
- ``tokenize`` (E/Q of the demo-sized autoencoder, random weights, over every clip) in this process
  against the same cluster.

Each run's output is checked byte-identical to the single-machine one. Reported: best and median
wall seconds and the ratio dask / single machine (below 1 = faster on the cluster).

    python -m bench.engine                     # ~3 min on 2 idle CPU cores
    python -m bench.engine --videos 16 --frames 64 --size 128 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CCVS_TRACKING", "off")


class _NullLogger:
    def log_params(self, *a, **k): ...
    def log_metric(self, *a, **k): ...
    def log_metrics(self, *a, **k): ...
    def log_artifact(self, *a, **k): ...
    def set_tag(self, *a, **k): ...
    def set_tags(self, *a, **k): ...


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _quiet(run):
    def wrapped():
        sys.stderr, saved = open(os.devnull, "w"), sys.stderr  # no progress bars in the table
        try:
            start = time.perf_counter()
            run()
            return time.perf_counter() - start
        finally:
            sys.stderr.close()
            sys.stderr = saved
    return wrapped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=24, help="videos written")
    parser.add_argument("--frames", type=int, default=64, help="frames per video")
    parser.add_argument("--size", type=int, default=128, help="written video size (pixels)")
    parser.add_argument("--resolution", type=int, default=64, help="prepare.resolution")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)

    import torch
    from distributed import LocalCluster

    from bench.prepare import _render
    from ccvs_models.autoencoder import CCVSAutoencoder
    from pipeline.engine.config import EngineParams
    from pipeline.params import DataParams, PrepareParams, load_section
    from pipeline.training.checkpoint import save_model
    from stages import prepare, tokenize

    root = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        _render(root / "raw", args.videos, args.frames, args.size)
        data = DataParams(source="demo", path=str(root / "raw"), annotations="", val_fraction=0.0,
                          test_fraction=0.0, fold=1)
        pp = PrepareParams(resolution=args.resolution, fps=10.0, clip_length=16, clip_stride=8,
                           frame_step=1, audio=True, audio_rate=16000, missing_audio="silence",
                           shard_max_bytes=50_000_000, workers=2, decoder="auto")
        repo = Path(__file__).resolve().parents[1]
        ae_params = load_section("autoencoder", repo / "params.yaml")
        tp = dataclasses.replace(load_section("tokenize", repo / "params.yaml"), device="cpu",
                                 audio=False, layout=False, state=False)
        torch.manual_seed(0)
        save_model(root / "ae.pt", ae_params.model, CCVSAutoencoder(ae_params.model).state_dict())
        prepare.run(data, pp, root / "clips", _NullLogger())  # the clips tokenize reads
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None, silence_logs=logging.ERROR,
                          env={"OMP_NUM_THREADS": "1"}) as cluster:
            running = EngineParams("dask", cluster.scheduler_address, 2)
            fresh = EngineParams("dask", "", 2)

            def tok(out: str, engine=None):
                return lambda: tokenize.run(tp, root / "clips", root / "ae.pt", root / out,
                                            _NullLogger(), **({"engine": engine} if engine else {}))

            runs = {  # name: (run, output folder, reference output folder)
                "prepare, process pool (2 workers)": (
                    lambda: prepare.run(data, pp, root / "p_pool", _NullLogger()), "p_pool", "clips"),
                "prepare, dask cluster running": (
                    lambda: prepare.run(data, pp, root / "p_dask", _NullLogger(), engine=running),
                    "p_dask", "clips"),
                "prepare, dask cluster started": (
                    lambda: prepare.run(data, pp, root / "p_new", _NullLogger(), engine=fresh),
                    "p_new", "clips"),
                "tokenize, this process": (tok("t_one"), "t_one", None),
                "tokenize, dask cluster running": (tok("t_dask", running), "t_dask", "t_one"),
            }
            names = list(runs)
            wall: dict[str, list[float]] = {n: [] for n in names}
            for round_ in range(args.repeats):
                turn = round_ % len(names)
                for name in names[turn:] + names[:turn]:
                    run, out, _ = runs[name]
                    shutil.rmtree(root / out, ignore_errors=True)
                    wall[name].append(_quiet(run)())
            same = {n: _files(root / runs[n][1]) == _files(root / runs[n][2])
                    for n in names if runs[n][2]}
        load = os.getloadavg()
        print(f"{args.videos} videos × {args.frames} frames {args.size}², prepare.resolution "
              f"{args.resolution}; {args.repeats} rounds; {os.cpu_count()} CPUs; load after "
              f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
        print(f"| {'run':<34} | {'best s':>6} | {'median s':>8} | {'identical':>9} |")
        print(f"|{'-' * 36}|{'-' * 8}|{'-' * 10}|{'-' * 11}|")
        for name in names:
            ident = "-" if name not in same else ("yes" if same[name] else "NO")
            print(f"| {name:<34} | {min(wall[name]):>6.2f} | {statistics.median(wall[name]):>8.2f} | {ident:>9} |")

        def ratio(a: str, b: str) -> float:
            return statistics.median([x / y for x, y in zip(wall[a], wall[b])])

        print("\nmedian of same-round ratios (dask / single machine):")
        for a, b in (("prepare, dask cluster running", "prepare, process pool (2 workers)"),
                     ("prepare, dask cluster started", "prepare, process pool (2 workers)"),
                     ("tokenize, dask cluster running", "tokenize, this process")):
            print(f"  {a} / {b}: {ratio(a, b):.2f}×")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
