"""The Prefect flow reads the DAG from dvc.yaml, runs a task per stage with its output as the task's
log, retries a failed stage once and names it in one line."""

from pathlib import Path

import pytest
import yaml

from pipeline.dag import dvc_executable, read_dag
from pipeline.orchestration import StageFailed, _reason, ccvs_pipeline, main, run_stage

ROOT = Path(__file__).resolve().parents[1]


def test_dag_matches_dvc_yaml():
    dag = read_dag(ROOT)
    names = [s.name for s in dag]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(names) == set(stages)
    seen = set()
    for spec in dag:  # topological: every upstream stage comes first
        assert set(spec.upstream) <= seen, spec
        seen.add(spec.name)
        assert "${" not in spec.cmd  # templating resolved
    by_name = {s.name: s for s in dag}
    assert by_name["prepare"].upstream == ("listing",)
    assert by_name["listing"].upstream == ("demo_data",)
    assert by_name["demo_data"].upstream == ()


def _toy_project(tmp_path: Path, b_cmd: str = "cat a.txt > b.txt && echo b >> b.txt") -> Path:
    """A tiny DVC project: a → b, a → c, (b, c) → d; each stage appends to a log."""
    import subprocess

    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    dvc = {"stages": {
        "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
        "b": {"cmd": b_cmd, "deps": ["a.txt"], "outs": ["b.txt"]},
        "c": {"cmd": "cat a.txt > c.txt && echo c >> c.txt", "deps": ["a.txt"], "outs": ["c.txt"]},
        "d": {"cmd": "cat b.txt c.txt > d.txt", "deps": ["b.txt", "c.txt"], "outs": ["d.txt"]},
    }}
    (proj / "dvc.yaml").write_text(yaml.safe_dump(dvc))

    subprocess.run([dvc_executable(), "init", "-q"], cwd=proj, check=True)
    subprocess.run([dvc_executable(), "config", "core.analytics", "false"], cwd=proj, check=True)
    return proj


def test_toy_dag_order(tmp_path):
    proj = _toy_project(tmp_path)
    dag = read_dag(proj)
    assert [s.name for s in dag][0] == "a"
    assert [s.name for s in dag][-1] == "d"
    assert set({s.name: s for s in dag}["d"].upstream) == {"b", "c"}


def test_run_stage_task_logic(tmp_path, caplog):
    proj = _toy_project(tmp_path)
    with caplog.at_level("INFO", logger="ccvs.flow"):
        first = run_stage.fn("a", str(proj), {})
    assert not first["skipped"]
    assert (proj / "a.txt").read_text().strip() == "a"
    assert any("Running stage 'a'" in r.getMessage() for r in caplog.records)  # the task's log
    second = run_stage.fn("a", str(proj), {})
    assert second["skipped"]


def test_a_failed_stage_is_one_line_naming_it(tmp_path):
    proj = _toy_project(tmp_path, b_cmd="echo 'b: a.txt: no clips in it' >&2; exit 3")
    run_stage.fn("a", str(proj), {})
    with pytest.raises(StageFailed) as caught:
        run_stage.fn("b", str(proj), {})
    assert str(caught.value) == "stage 'b' failed (exit 3): b: a.txt: no clips in it"
    assert "\n" not in str(caught.value)


def test_the_reason_is_the_stages_own_line_else_the_last_one():
    lines = ["Running stage 'x':", "Traceback (most recent call last):", "ValueError: bad",
             "ERROR: failed to reproduce 'x': failed to run: python -m stages.x, exited with 1"]
    assert _reason("x", lines) == "ValueError: bad"
    assert _reason("x", ["x: params.yaml: x.lr: must be > 0", *lines]) == \
        "x: params.yaml: x.lr: must be > 0"


@pytest.mark.slow
def test_flow_runs_the_toy_dag(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    proj = _toy_project(tmp_path)
    with prefect_test_harness(server_startup_timeout=300):
        results = ccvs_pipeline(root=str(proj))
        assert [r["stage"] for r in results][-1] == "d"
        assert (proj / "d.txt").read_text().split() == ["a", "b", "a", "c"]
        again = ccvs_pipeline(root=str(proj), stages=["d"])
        assert all(r["skipped"] for r in again)


@pytest.mark.slow
def test_a_failing_stage_is_retried_once_then_reported_in_one_line(tmp_path, capsys):
    from prefect.testing.utilities import prefect_test_harness

    proj = _toy_project(tmp_path, b_cmd="echo try >> tries.txt; echo 'b: broken input' >&2; exit 3")
    with prefect_test_harness(server_startup_timeout=300):
        assert main(["--root", str(proj)]) == 1
    assert (proj / "tries.txt").read_text().split() == ["try", "try"]  # retried once
    assert not (proj / "d.txt").exists()  # its downstream stage never ran
    assert (proj / "c.txt").exists()  # the independent branch did
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ccvs pipeline: stage 'b' failed (exit 3): "
                                               "b: broken input")
