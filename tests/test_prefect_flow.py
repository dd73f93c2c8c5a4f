"""The Prefect flow reads the DAG from dvc.yaml."""

from pathlib import Path

import pytest
import yaml

from pipeline.orchestration import ccvs_pipeline, read_dag, run_stage

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
    assert by_name["prepare"].upstream == ("demo_data",)
    assert by_name["demo_data"].upstream == ()


def _toy_project(tmp_path: Path) -> Path:
    """A tiny DVC project: a → b, a → c, (b, c) → d; each stage appends to a log."""
    import subprocess

    proj = tmp_path / "proj"
    proj.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    dvc = {"stages": {
        "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
        "b": {"cmd": "cat a.txt > b.txt && echo b >> b.txt", "deps": ["a.txt"], "outs": ["b.txt"]},
        "c": {"cmd": "cat a.txt > c.txt && echo c >> c.txt", "deps": ["a.txt"], "outs": ["c.txt"]},
        "d": {"cmd": "cat b.txt c.txt > d.txt", "deps": ["b.txt", "c.txt"], "outs": ["d.txt"]},
    }}
    (proj / "dvc.yaml").write_text(yaml.safe_dump(dvc))
    from pipeline.orchestration import dvc_executable

    subprocess.run([dvc_executable(), "init", "-q"], cwd=proj, check=True)
    subprocess.run([dvc_executable(), "config", "core.analytics", "false"], cwd=proj, check=True)
    return proj


def test_toy_dag_order(tmp_path):
    proj = _toy_project(tmp_path)
    dag = read_dag(proj)
    assert [s.name for s in dag][0] == "a"
    assert [s.name for s in dag][-1] == "d"
    assert set({s.name: s for s in dag}["d"].upstream) == {"b", "c"}


def test_run_stage_task_logic(tmp_path):
    proj = _toy_project(tmp_path)
    first = run_stage.fn("a", str(proj), "pid")
    assert not first["skipped"]
    assert (proj / "a.txt").read_text().strip() == "a"
    second = run_stage.fn("a", str(proj), "pid")
    assert second["skipped"]


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
