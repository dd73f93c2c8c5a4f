"""The ``ccvs`` command.

    ccvs check                 validate params.yaml (unknown / missing keys, types)
    ccvs preset NAME           write a dataset's paper settings (params/NAME.yaml) into params.yaml
    ccvs repro [dvc args]      `dvc repro` as one pipeline execution in MLflow (one parent run)
    ccvs pipeline [stages]     the same DAG as a Prefect flow (parallel branches, one retry)
    ccvs stage NAME [args]     run one stage module directly (python -m stages.NAME)
    ccvs synthesize [args]     videos from the trained models and your controls (--help)
    ccvs register [--name N]   register the newest trained transformer and its autoencoder in
                               MLflow's model registry (N-transformer, N-autoencoder)
    ccvs ui [--port P]         the MLflow UI on 127.0.0.1, opened on the pipeline's runs
    ccvs ablation ACTION       the paper's ablation tables as DVC experiment queues (--help)
"""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path


def _check(args: argparse.Namespace) -> int:
    from pipeline.params import ParamsError, load_all

    try:
        sections = load_all(args.params)
    except ParamsError as err:
        print(f"{args.params}: {err}", file=sys.stderr)
        return 2
    print(f"{args.params}: ok ({', '.join(sections)})")
    return 0


def _preset(args: argparse.Namespace) -> int:
    from pipeline.params import ParamsError
    from pipeline.presets import PRESET_DIR, apply_preset

    if args.name is None:
        for path in sorted(PRESET_DIR.glob("*.yaml")):
            print(f"{path.stem:20s} {path.read_text(encoding='utf-8').splitlines()[0].lstrip('# ')}")
        return 0
    overrides = {"data.path": args.data_path} if args.data_path else {}
    try:
        changes = apply_preset(args.name, args.params, overrides=overrides, write=not args.dry_run)
    except ParamsError as err:
        print(f"ccvs preset: {err}", file=sys.stderr)
        return 2
    verb = "would change" if args.dry_run else "changed"
    print(f"{args.params}: {verb} {len(changes)} key(s) from preset {args.name} (ccvs check: ok)")
    for line in changes:
        print(f"  {line}")
    return 0


def _repro(args: argparse.Namespace, extra: list[str]) -> int:
    """``dvc repro`` with every stage nested under one MLflow parent run, which this process ends
    (FINISHED, FAILED, or KILLED on Ctrl-C) after linking the stages DVC skipped."""
    from pipeline.dag import dvc_executable
    from pipeline.tracking import finish_pipeline
    from pipeline.tracking.context import ENV_ID, wrapper_env
    from pipeline.tracking.experiment import runs_url

    pipeline = wrapper_env("ccvs repro", f"ccvs repro {time.strftime('%m-%d %H:%M')}",
                           os.environ.get(ENV_ID))
    env = dict(os.environ, **pipeline)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    print(f"pipeline id: {pipeline[ENV_ID]}", flush=True)
    proc = subprocess.Popen([dvc_executable(), "repro", *extra], env=env)
    try:
        rc = proc.wait()
        status = "FINISHED" if rc == 0 else "FAILED"
    except KeyboardInterrupt:  # Ctrl-C reached dvc too (same process group): let it stop
        rc, status = proc.wait(), "KILLED"
    done = finish_pipeline(pipeline, status)
    if done is not None:
        exp_id, parent = done
        if parent is None:
            print("MLflow: no stage ran, so no pipeline run was recorded")
        else:
            print(f"MLflow: pipeline run {parent} ({status}); runs: {runs_url(exp_id)} "
                  f"(after `ccvs ui`)")
    return rc if status != "KILLED" else 130


def _pipeline(args: argparse.Namespace, extra: list[str]) -> int:
    from pipeline.orchestration import main as flow_main

    return flow_main(extra)


def _stage(args: argparse.Namespace, extra: list[str]) -> int:
    sys.argv = [f"stages.{args.name}", *extra]
    runpy.run_module(f"stages.{args.name}", run_name="__main__")
    return 0


def _synthesize(args: argparse.Namespace, extra: list[str]) -> int:
    from pipeline.synthesis.command import main as synthesize_main

    if Path("params.yaml").exists() and not os.environ.get("MLFLOW_TRACKING_URI"):
        from pipeline.tracking import tracking_uri

        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri()  # --model-uri: the project's store

    return synthesize_main(extra)


def _register(args: argparse.Namespace, extra: list[str]) -> int:
    from pipeline.tracking import open_tracking
    from pipeline.tracking.models import register

    client, experiment_id = open_tracking(args.params)
    try:
        registered = register(client, experiment_id, args.name, args.run)
    except LookupError as err:
        print(f"ccvs register: {err}", file=sys.stderr)
        return 2
    for r in registered:
        print(f"registered {r.name} version {r.version} (from {r.source})")
    transformer = next((r for r in registered if r.name.endswith("-transformer")), None)
    if transformer is not None:
        print(f"use it: ccvs synthesize --model-uri models:/{transformer.name}/"
              f"{transformer.version} --class <name>")
    return 0


def _ui(args: argparse.Namespace, extra: list[str]) -> int:
    from pipeline.tracking import open_tracking, tracking_uri
    from pipeline.tracking.experiment import runs_url

    _, experiment_id = open_tracking(args.params)  # sets the experiment up if it is new
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI: {runs_url(experiment_id, base)}", flush=True)
    cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
           tracking_uri(args.params), "--host", "127.0.0.1", "--port", str(args.port), *extra]
    return subprocess.call(cmd, env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))


def _ablation(args: argparse.Namespace, extra: list[str]) -> int:
    from pipeline.ablation.command import main as ablation_main

    return ablation_main(extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ccvs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate params.yaml")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("preset", help="write a dataset's paper settings into params.yaml")
    p.add_argument("name", nargs="?", help="bair64, kinetics64, … or a preset file (none: list them)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--data-path", help="where the dataset is (sets data.path)")
    p.add_argument("--dry-run", action="store_true", help="check and show the changes, write nothing")
    sub.add_parser("repro", help="dvc repro as one MLflow pipeline run (extra args go to dvc)")
    sub.add_parser("pipeline", help="run the DAG as a Prefect flow")
    p = sub.add_parser("stage", help="run one stage: ccvs stage prepare --params params.yaml")
    p.add_argument("name")
    sub.add_parser("synthesize", help="synthesize videos (ccvs synthesize --help)", add_help=False)
    p = sub.add_parser("register", help="register the trained models in MLflow's registry")
    p.add_argument("--name", default="ccvs", help="registered names: NAME-transformer, "
                                                  "NAME-autoencoder")
    p.add_argument("--run", default=None, help="a pipeline or transformer run id (default: the "
                                               "newest finished transformer run)")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("ui", help="the MLflow UI on 127.0.0.1 (extra args go to mlflow ui)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--params", default="params.yaml")
    sub.add_parser("ablation", help="the paper's ablation tables as DVC experiment queues "
                   "(ccvs ablation --help)", add_help=False)
    args, extra = parser.parse_known_args(argv)
    if args.command in ("check", "preset", "register") and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("check", "preset"):
        return _check(args) if args.command == "check" else _preset(args)
    handlers = {"repro": _repro, "pipeline": _pipeline, "stage": _stage,
                "synthesize": _synthesize, "register": _register, "ui": _ui,
                "ablation": _ablation}
    return handlers[args.command](args, extra)


if __name__ == "__main__":
    raise SystemExit(main())
