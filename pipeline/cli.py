"""The ``ccvs`` command.

    ccvs check                 validate params.yaml (unknown / missing keys, types)
    ccvs preset NAME           write a dataset's paper settings (params/NAME.yaml) into params.yaml
    ccvs repro [dvc args]      `dvc repro` with one pipeline id shared by every stage's MLflow run
    ccvs pipeline [stages]     the same DAG as a Prefect flow (parallel branches)
    ccvs stage NAME [args]     run one stage module directly (python -m stages.NAME)
    ccvs synthesize [args]     videos from the trained models and your controls (--help)
"""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
import uuid
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
    env = dict(os.environ)
    env.setdefault("CCVS_PIPELINE_ID", f"repro-{uuid.uuid4().hex[:12]}")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    from pipeline.orchestration import dvc_executable

    print(f"pipeline id: {env['CCVS_PIPELINE_ID']}")
    return subprocess.call([dvc_executable(), "repro", *extra], env=env)


def _pipeline(args: argparse.Namespace, extra: list[str]) -> int:
    from pipeline.orchestration import main as flow_main

    return flow_main(extra)


def _stage(args: argparse.Namespace, extra: list[str]) -> int:
    sys.argv = [f"stages.{args.name}", *extra]
    runpy.run_module(f"stages.{args.name}", run_name="__main__")
    return 0


def _synthesize(args: argparse.Namespace, extra: list[str]) -> int:
    from pipeline.synthesis.command import main as synthesize_main

    return synthesize_main(extra)


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
    sub.add_parser("repro", help="dvc repro with a shared pipeline id (extra args go to dvc)")
    sub.add_parser("pipeline", help="run the DAG as a Prefect flow")
    p = sub.add_parser("stage", help="run one stage: ccvs stage prepare --params params.yaml")
    p.add_argument("name")
    sub.add_parser("synthesize", help="synthesize videos (ccvs synthesize --help)", add_help=False)
    args, extra = parser.parse_known_args(argv)
    if args.command in ("check", "preset"):
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        return _check(args) if args.command == "check" else _preset(args)
    handlers = {"repro": _repro, "pipeline": _pipeline, "stage": _stage,
                "synthesize": _synthesize}
    return handlers[args.command](args, extra)


if __name__ == "__main__":
    raise SystemExit(main())
