"""``ccvs ablation``: run one of the paper's ablation tables as a DVC experiment queue.

    ccvs ablation list                     the tables, their rows and budgets
    ccvs ablation run table2               queue every row, run the queue, write the report
    ccvs ablation run table1 --set autoencoder.loop.steps=300    (every row, after the budget)
    ccvs ablation run fig6 --dry-run       print the dvc commands only
    ccvs ablation report table2            rewrite the report from the newest run of each row

``run`` checks every row's params first (one line naming the row and the key), queues the rows
with ``dvc exp run --queue -n <table>-<row>-<stamp> -S …``, starts ``dvc queue start -j 1`` and
waits, printing each row's status, then writes ``reports/ablations/<table>.md`` (every row's
metrics, the paper's directions and whether they held, the budget and the time) and logs each
row to the MLflow experiment ``<tracking.experiment>-<table>``. The experiments stay in DVC
(``dvc exp show``; ``dvc exp apply <name>`` restores a row's outputs). Run it in the project
after ``dvc repro`` and a commit (``dvc exp run`` works from the workspace's Git state): rows
then reuse every stage they do not change from DVC's cache.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from pipeline.ablation.queue import (
    AblationError,
    check_rows,
    failed_log,
    parse_overrides,
    queue_table,
    run_queue,
)
from pipeline.ablation.report import collect, log_rows, markdown, verdicts
from pipeline.ablation.tables import TABLES, AblationTable

REPORTS = Path("reports/ablations")


def _table(name: str) -> AblationTable:
    if name not in TABLES:
        raise AblationError(f"no ablation table {name!r}; known: {', '.join(TABLES)}")
    return TABLES[name]


def _list() -> int:
    for t in TABLES.values():
        print(f"{t.name}: {t.title}\n  budget: {t.budget_note}")
        for r in t.rows:
            print(f"  - {r.name}: {r.label}  " + " ".join(f"{k}={v}" for k, v in r.overrides.items()))
    return 0


def write_report(table: AblationTable, root: Path, out: Path, stamp: str | None = None,
                 run_info: dict | None = None, mlflow: bool = True) -> Path:
    """Collect the rows, write the markdown, log the rows to MLflow; returns the report path."""
    results = collect(table, root, stamp)
    checks = verdicts(table, results)
    meta = out.with_suffix(".run.json")
    if run_info is None and meta.exists():
        run_info = json.loads(meta.read_text(encoding="utf-8"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(table, results, checks, run_info), encoding="utf-8")
    if run_info is not None:
        meta.write_text(json.dumps(run_info, indent=2), encoding="utf-8")
    print(f"wrote {out}: {sum(v.held is True for v in checks)} of {len(checks)} of the paper's "
          f"directions held ({sum(r.exp is not None for r in results)}/{len(results)} rows found)")
    from pipeline.tracking import tracking_off, tracking_uri

    if mlflow and not tracking_off():
        from pipeline.params import load_section

        cfg = load_section("tracking", root / "params.yaml")
        uri = tracking_uri(root / "params.yaml", root)
        name = log_rows(table, results, checks, uri, cfg.experiment, out)
        print(f"MLflow: experiment {name!r}, one run per row")
    return out


def _run(args: argparse.Namespace) -> int:
    table = _table(args.table)
    root = Path(args.root).resolve()
    extra = parse_overrides(args.set)
    rows = check_rows(table, root / "params.yaml", extra)
    stamp = time.strftime("%y%m%d%H%M")
    print(f"{table.name}: {len(rows)} rows, budget: {table.budget_note}")
    t0 = time.monotonic()
    names = queue_table(table, root, rows, stamp, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    status = run_queue(root, names, jobs=args.jobs, poll=args.poll)
    failed = [n for n, s in status.items() if s != "Success"]
    for name in failed:
        print(f"{name} failed; the end of its log (dvc queue logs {name}):\n{failed_log(root, name)}",
              file=sys.stderr)
    info = {"command": "ccvs ablation run " + " ".join([table.name, *(f"--set {s}" for s in args.set)]),
            "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})",
            "rows": len(names), "minutes": (time.monotonic() - t0) / 60, "stamp": stamp,
            "set": {k: str(v) for k, v in extra.items()}, "failed": failed}
    write_report(table, root, Path(args.out or root / REPORTS / f"{table.name}.md"), stamp, info,
                 mlflow=not args.no_mlflow)
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    table = _table(args.table)
    root = Path(args.root).resolve()
    write_report(table, root, Path(args.out or root / REPORTS / f"{table.name}.md"), args.stamp,
                 mlflow=not args.no_mlflow)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ccvs ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="the tables, their rows and budgets")
    for action in ("run", "report"):
        p = sub.add_parser(action)
        p.add_argument("table", help=f"one of {', '.join(TABLES)}")
        p.add_argument("--root", default=".", help="the project (default: here)")
        p.add_argument("--out", help="the markdown report (default reports/ablations/<table>.md)")
        p.add_argument("--no-mlflow", action="store_true", help="do not log the rows to MLflow")
        if action == "run":
            p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                           help="override a param in every row (after the table's budget)")
            p.add_argument("--jobs", type=int, default=1, help="experiments at a time")
            p.add_argument("--poll", type=float, default=20.0, help="seconds between status checks")
            p.add_argument("--dry-run", action="store_true", help="print the dvc commands only")
        else:
            p.add_argument("--stamp", help="the run to report (default: each row's newest)")
    args = parser.parse_args(argv)
    try:
        if args.action == "list":
            return _list()
        return _run(args) if args.action == "run" else _report(args)
    except AblationError as err:
        print(f"ccvs ablation: {err}", file=sys.stderr)
        return 2
