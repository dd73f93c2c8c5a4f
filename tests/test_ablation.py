"""``ccvs ablation``: the paper's tables as DVC experiment queues (pipeline/ablation/).

Fast tests check the tables against the shipped params.yaml, the one-line errors, the ``-S``
arguments and the report's verdicts on made-up rows; the slow test runs a real queue (Fig. 6's
three evaluate-only rows) in a temporary copy of the project with tiny params and reads the
report and MLflow back. No full table runs here (`ccvs ablation run <table>` runs one by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.ablation import queue as q
from pipeline.ablation.report import RowResult, collect, markdown, verdicts
from pipeline.ablation.tables import FVD, TABLES, AblationTable, Direction, Metric, Row

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_row_of_every_table_is_valid_for_the_shipped_params(name):
    rows = q.check_rows(TABLES[name], ROOT / "params.yaml", {})
    assert list(rows) == [r.name for r in TABLES[name].rows]
    for row in TABLES[name].rows:  # the budget applies first, the row's own keys win
        assert rows[row.name] == {**TABLES[name].budget, **row.overrides}


def test_a_key_params_yaml_lacks_or_a_bad_value_is_one_line_naming_the_row(tmp_path):
    with pytest.raises(q.AblationError, match=r"^table2 row learned_k1: transformer.nope is not a key"):
        q.check_rows(TABLES["table2"], ROOT / "params.yaml", {"transformer.nope": 1})
    with pytest.raises(q.AblationError, match="fig6 row k1: .*top_k"):
        q.check_rows(TABLES["fig6"], ROOT / "params.yaml", {"evaluate.top_k": 0})
    with pytest.raises(q.AblationError, match="expected section.key=value"):
        q.parse_overrides(["evaluate.top_k"])


def test_set_args_are_yaml_dvc_parses_back():
    args = q.set_args({"evaluate.tasks": ["state", "prediction"], "evaluate.context_frames": None,
                       "autoencoder.use_vgg": False, "transformer.model.pos_embedding": "learned",
                       "transformer.lr": 0.0005})
    pairs = [a.split("=", 1) for a in args[1::2]]
    assert args[::2] == ["-S"] * 5
    assert {k: yaml.safe_load(v) for k, v in pairs} == {
        "evaluate.tasks": ["state", "prediction"], "evaluate.context_frames": None,
        "autoencoder.use_vgg": False, "transformer.model.pos_embedding": "learned",
        "transformer.lr": 0.0005}


M = Metric("x", "metrics/evaluate.json", ("tasks", "prediction", FVD), 1)
N = Metric("motion", "metrics/evaluate.json", ("tasks", "prediction", "motion"), 3)
TOY = AblationTable(
    name="toy", title="Toy", paper="nowhere", budget={"evaluate.samples": 2}, budget_note="tiny",
    rows=(Row("a", "A", {"evaluate.top_k": 1}), Row("b", "B", {"evaluate.top_k": 9}),
          Row("c", "C", {"evaluate.top_k": 3})),
    metrics=(M, N),
    directions=(Direction("B moves more", "b", N, "a", N),
                Direction("A's FVD above B's", "a", M, "b", M),
                Direction("C beats A", "c", N, "a", N)))


def _doc(fvd: float, motion: float) -> dict:
    return {"metrics/evaluate.json": {"fvd": {"metric": "fvd_untrained_i3d"},
                                      "tasks": {"prediction": {"fvd_untrained_i3d": fvd,
                                                               "motion": motion}}}}


def test_report_checks_each_direction_and_says_what_was_not_measured():
    results = [RowResult(TOY.rows[0], "toy-a-1", _doc(50.0, 0.01)),
               RowResult(TOY.rows[1], "toy-b-1", _doc(60.0, 0.02)),
               RowResult(TOY.rows[2], None, {})]
    assert results[0].value(M) == 50.0  # FVD under the name evaluate used
    checks = verdicts(TOY, results)
    assert [v.held for v in checks] == [True, False, None]
    md = markdown(TOY, results, checks, {"command": "ccvs ablation run toy", "minutes": 3.25,
                                         "machine": "2 CPUs", "rows": 3, "stamp": "1"})
    assert "| B moves more | B motion 0.020 vs A motion 0.010 | yes |" in md
    assert "| A's FVD above B's | A x 50.0 vs B x 60.0 | **no** |" in md
    assert "| C beats A |" in md and "not measured" in md and "C (not run)" in md
    assert "1 of 3 directions held" in md and "3 rows in 3.2 min" in md
    assert "fvd_untrained_i3d" in md  # the report says FVD had no Kinetics weights


def test_collect_takes_each_rows_newest_experiment(monkeypatch):
    def exp(name, ts, fvd):
        return {"name": name, "revs": [{"data": {"timestamp": ts, "metrics": {
            path: {"data": doc} for path, doc in _doc(fvd, 0.1).items()}}}]}

    show = [{"rev": "abc", "experiments": [exp("toy-a-2501010000", "2025-01-01T00:00", 1.0),
                                           exp("toy-a-2501020000", "2025-01-02T00:00", 2.0),
                                           exp("toy-b-2501010000", "2025-01-01T00:00", 3.0),
                                           exp("toy-bb-2501030000", "2025-01-03T00:00", 9.0)]}]
    monkeypatch.setattr("pipeline.ablation.report.dvc", lambda root, *a: subprocess.CompletedProcess(
        a, 0, json.dumps(show), ""))
    newest = collect(TOY, ".")
    assert [r.exp for r in newest] == ["toy-a-2501020000", "toy-b-2501010000", None]
    assert newest[1].value(M) == 3.0  # not row "bb"'s, whose name only starts the same
    assert collect(TOY, ".", stamp="2501010000")[0].value(M) == 1.0


# --------------------------------------------------------------------------- a real queue


@pytest.mark.slow
def test_a_table_runs_as_a_dvc_queue_and_lands_in_the_report_and_mlflow(tmp_path, monkeypatch):
    from dvc_project import TINY, copy_project, set_params
    from dvc_project import dvc as run_dvc
    from dvc_project import env as project_env

    proj = copy_project(tmp_path / "ccvs")
    set_params(proj, {**TINY, "demo": {"num_videos": 6, "num_frames": 12, "annotated_frames": 20,
                                       "test_fraction": 0.2, "val_fraction": 0.2}})
    run_dvc(proj, "repro")
    for cmd in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"]):
        subprocess.run(["git", *cmd], cwd=proj, check=True)
    for key, value in project_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CCVS_TRACKING", "on")  # the experiments' stages log to the copy's store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CCVS_PIPELINE_ID", raising=False)
    from pipeline.ablation.command import main

    try:
        rc = main(["run", "fig6", "--root", str(proj), "--poll", "2",
                   "--set", "evaluate.tasks=[prediction, point_to_point]",
                   "--set", "evaluate.samples=2"])
    finally:
        subprocess.run([str(Path(sys.executable).with_name("dvc")), "queue", "stop"], cwd=proj,
                       env=dict(os.environ), capture_output=True, check=False)
    assert rc == 0
    report = (proj / "reports/ablations/fig6.md").read_text()
    assert "| top-k 1 (greedy) |" in report and "(not run)" not in report
    assert "| top-k samples differ (DIV > greedy's) |" in report
    line = next(x for x in report.splitlines() if x.startswith("| top-k samples differ"))
    assert line.endswith("| yes |")  # greedy's samples are all alike, top-k 100's are not
    assert "3 rows in" in report
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{proj / 'mlflow.db'}")
    rows = mlflow.search_runs(experiment_names=["ccvs-fig6"], output_format="list")
    assert sorted(r.data.tags["row"] for r in rows) == ["k1", "k10", "k100"]
    assert all("prediction/div" in r.data.metrics for r in rows)
    runs = mlflow.search_runs(experiment_names=["ccvs"], output_format="list")
    names = {r.info.run_id: r.info.run_name for r in runs}
    parents = {names.get(r.data.tags.get("mlflow.parentRunId")) for r in runs
               if r.data.tags.get("stage") == "evaluate"}
    # each row's evaluate run, in the project's store, under its experiment's parent run
    assert {f"dvc exp run {r.data.tags['dvc_exp']}" for r in rows} <= parents
