"""Do the controls steer? Train T once on a ``tokenize`` output, evaluate the control tasks with
several sampling seeds, and print each control's margin over plain prediction with its seed noise.

    python -m bench.controls --set transformer.loop.steps=600 --seeds 0 1 2 --out runs.jsonl

Reads the demo's outputs (``data/tokens``, ``data/clips``, ``models/autoencoder.pt``,
``models/position.pt``; ``--root`` to read them elsewhere) and ``params.yaml`` with the
``--set section.key=value`` overrides (YAML values, dotted keys, any section), trains T into a
scratch folder with ``stages.transformer.run`` (the stage's own code), then runs
``stages.evaluate.run`` on ``--tasks`` once per ``--seeds`` value (``evaluate.seed``: the
sampling seeds; the inputs are the same). ``--transformer`` skips training and evaluates that model.

Targets (issue 18), per seed and as mean ± std over seeds:

- state: ``state/trajectory_error_px`` ≤ ½ ``prediction/trajectory_error_px``;
- end frame: ``point_to_point/end/ssim`` ≥ ``prediction/end/ssim`` + 0.1;
- sound: ``sound/sound_sync`` − ``prediction/sound_sync`` > 2 × its std over seeds;
- class: ``class/class_accuracy`` above chance (1 / K) and above ``prediction/class_accuracy``;
- DIV (Fig. 6): ``prediction/div`` > ``prediction_greedy/div``, greedy near-static (``motion``).

Each run appends one JSON line to ``--out`` (the overrides, T's metrics, every seed's tasks and
the margins), so a sweep is a list of commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONTROL_TASKS = ("prediction", "prediction_greedy", "point_to_point", "state", "sound", "class")


def with_overrides(params_path: Path, overrides: list[str], out_path: Path) -> Path:
    """A copy of ``params_path`` with ``<section>.<key> = value`` for each "section.key=value"."""
    import yaml

    raw = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    for item in overrides:
        key, sep, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for name in parents:
            if not isinstance(node, dict) or name not in node:
                raise SystemExit(f"--set {item!r}: {key} is not a key of {params_path}")
            node = node[name]
        if not sep or leaf not in node:
            raise SystemExit(f"--set {item!r}: {key} is not a key of {params_path}")
        node[leaf] = yaml.safe_load(value)
    out_path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out_path


def margins(tasks: dict[str, dict[str, float | None]]) -> dict[str, float]:
    """The control-vs-prediction margins of one evaluation (NaN where a task or key is absent)."""
    def get(task: str, key: str) -> float:
        value = tasks.get(task, {}).get(key)
        return float("nan") if value is None else float(value)

    return {
        "state_error_ratio": get("state", "trajectory_error_px")
                             / get("prediction", "trajectory_error_px"),
        "end_ssim_margin": get("point_to_point", "end/ssim") - get("prediction", "end/ssim"),
        "sound_sync_margin": get("sound", "sound_sync") - get("prediction", "sound_sync"),
        "class_accuracy_margin": get("class", "class_accuracy") - get("prediction", "class_accuracy"),
        "div_margin": get("prediction", "div") - get("prediction_greedy", "div"),
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), (statistics.stdev(finite) if len(finite) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT, help="where data/ and models/ are")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--tasks", nargs="+", default=list(CONTROL_TASKS))
    ap.add_argument("--transformer", type=Path, help="evaluate this T instead of training one")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, help="append one JSON line per run here")
    ap.add_argument("--name", default="", help="a label for the run in --out")
    args = ap.parse_args(argv)
    os.environ.setdefault("CCVS_OFFLINE", "1")

    from pipeline.params import load_section
    from pipeline.tracking import RecordingLogger
    from stages import evaluate as evaluate_stage
    from stages import transformer as transformer_stage

    work = args.work or Path(tempfile.mkdtemp(prefix="ccvs-controls-"))
    work.mkdir(parents=True, exist_ok=True)
    params_path = with_overrides(args.params, args.set, work / "params.yaml")
    root = args.root
    record: dict = {"name": args.name, "set": args.set, "seeds": args.seeds}
    model = args.transformer
    if model is None:
        t0 = time.perf_counter()
        model = work / "transformer.pt"
        tm = transformer_stage.run(load_section("transformer", params_path), root / "data/tokens",
                                   model, work / "transformer.json", work / "plots",
                                   work / "ckpt", RecordingLogger())
        record["transformer"] = {k: tm[k] for k in ("val/perplexity", "val/accuracy",
                                                    "baseline/copy_val_accuracy", "steps",
                                                    "parameters", "sequence_length") if k in tm}
        record["transformer_seconds"] = time.perf_counter() - t0
        print(f"T: {record['transformer']} in {record['transformer_seconds']:.0f} s", flush=True)
    ev_params = load_section("evaluate", params_path)
    import dataclasses

    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        p = dataclasses.replace(ev_params, seed=seed, tasks=tuple(args.tasks), gif_videos=0)
        doc = evaluate_stage.run(p, root / "data/clips", root / "data/tokens", model,
                                 root / "models/autoencoder.pt", work / f"evaluate-{seed}.json",
                                 work / "plots-eval", work / "samples", RecordingLogger(),
                                 positions=root / "models/position.pt")
        runs.append({"seed": seed, "tasks": doc["tasks"], "control": doc["control"],
                     "margins": margins(doc["tasks"]), "seconds": time.perf_counter() - t0})
    record["runs"] = runs
    summary = {}
    for key in runs[0]["margins"]:
        mean, std = _mean_std([r["margins"][key] for r in runs])
        summary[key] = {"mean": mean, "std": std}
    record["summary"] = summary
    record["real"] = runs[0]["control"]["real"]
    keys = ("trajectory_error_px", "end/ssim", "sound_sync", "class_accuracy", "div", "motion")
    print(f"{'task':<18}" + "".join(f"{k:>21}" for k in keys))
    for task in args.tasks:
        cells = []
        for k in keys:
            mean, std = _mean_std([float("nan") if r["tasks"].get(task, {}).get(k) is None
                                   else r["tasks"][task][k] for r in runs])
            cells.append(f"{mean:>13.3f} ± {std:<5.3f}")
        print(f"{task:<18}" + "".join(cells))
    print(f"real clips: {record['real']}")
    for key, v in summary.items():
        print(f"{key:<24} {v['mean']:+.3f} ± {v['std']:.3f}")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
