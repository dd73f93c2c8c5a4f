"""The MLflow run tree under real DVC: a toy project (prepare → positions → evaluate, the stages of
tests/tracking_toy.py: real ``stage_main`` entry points, a real ``fit``) run by ``ccvs repro``,
plain ``dvc repro`` and ``dvc exp run``, read back through MLflow's client API.

- one parent run per execution, each stage that ran nested under it, the parent holding the
  params and every stage's headline metrics; a stage DVC skipped linked to the run that produced
  its outputs;
- a training stage killed with SIGKILL leaves no RUNNING run once it is rerun, and the rerun
  continues the killed run's curve.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.dag import dvc_executable

ROOT = Path(__file__).resolve().parents[1]
TOY = Path(__file__).with_name("tracking_toy.py")
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    for key in ("CCVS_TRACKING", "CCVS_PIPELINE_ID", "CCVS_PIPELINE_OWNER", "MLFLOW_TRACKING_URI",
                "DVC_STAGE", "TOY_STEP_SLEEP"):
        env.pop(key, None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _run(proj: Path, *cmd: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=proj, env=_env(**extra), capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _set(proj: Path, **toy: int) -> None:
    path = proj / "params.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["toy"].update(toy)
    path.write_text(yaml.safe_dump(doc))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("runtree") / "toy"
    proj.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    (proj / "params.yaml").write_text(yaml.safe_dump(
        {"tracking": {"uri": "sqlite:///mlflow.db", "experiment": "ccvs"},
         "toy": {"clips": 3, "steps": 4}}))
    py = sys.executable

    def stage(name: str, deps: list[str], outs: list[str], params: list[str], extra: str = ""):
        spec = {"cmd": f"{py} {TOY} {name} --headline metrics/headline/{name}.json{extra}",
                "deps": deps, "params": params, "outs": outs,
                "metrics": [{f"metrics/headline/{name}.json": {"cache": False}}]}
        return {k: v for k, v in spec.items() if v}

    (proj / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "prepare": stage("prepare", [], ["clips.txt"], ["toy.clips"]),
        "positions": stage("positions", [], ["models/position.pt"], ["toy.steps"],
                           " --model models/position.pt"),
        "evaluate": stage("evaluate", ["clips.txt", "models/position.pt"], ["evaluate.txt"], []),
    }}, sort_keys=False))
    (proj / ".gitignore").write_text("mlflow.db\nmlruns/\ncheckpoints/\n")
    _run(proj, dvc_executable(), "init", "-q")
    _run(proj, dvc_executable(), "config", "core.analytics", "false")
    first = _run(proj, sys.executable, "-m", "pipeline.cli", "repro", PYTHONPATH=str(ROOT))
    assert "MLflow: pipeline run" in first.stdout
    return proj


def _client(proj: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{proj / 'mlflow.db'}")
    return client, client.get_experiment_by_name("ccvs").experiment_id


def _parents(proj: Path) -> list:
    client, exp = _client(proj)
    return client.search_runs([exp], filter_string="tags.`ccvs.role` = 'pipeline'",
                              order_by=["attributes.start_time ASC"])


def _children(proj: Path, parent_id: str) -> dict:
    client, exp = _client(proj)
    runs = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["stage"]: r for r in runs}


def test_ccvs_repro_is_one_parent_with_every_stage_nested(project):
    (parent,) = _parents(project)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["ccvs.kind"] == "ccvs repro"
    kids = _children(project, parent.info.run_id)
    assert set(kids) == {"prepare", "positions", "evaluate"}
    assert all(k.info.status == "FINISHED" for k in kids.values())
    assert all(k.data.tags["pipeline_id"] == parent.data.tags["pipeline_id"] for k in kids.values())
    # the params that define the pipeline, the headline metrics of every stage
    assert parent.data.params["toy.steps"] == "4" and parent.data.params["toy.clips"] == "3"
    m = parent.data.metrics
    assert m["prepare/clips"] == 3.0
    assert m["evaluate/prediction/ssim"] == pytest.approx(0.53)
    assert m["positions/error_px"] == pytest.approx(kids["positions"].data.metrics["positions/error_px"])
    assert not any(k.startswith("ccvs.skipped.") for k in parent.data.tags)
    for stage, run in kids.items():  # the parent's description links each stage's run
        assert parent.data.tags[f"ccvs.stage.{stage}"] == run.info.run_id
        assert run.info.run_id in parent.data.tags["mlflow.note.content"]
    # the headline metrics are also the stages' DVC metrics
    assert yaml.safe_load((project / "metrics/headline/evaluate.json").read_text()) == {
        "evaluate": {"prediction": {"psnr": 20.0, "ssim": 0.53}}}


def test_a_second_dvc_repro_is_a_second_comparable_parent_linking_the_skipped_stage(project):
    first, = _parents(project)
    _set(project, steps=6)
    out = _run(project, dvc_executable(), "repro").stdout
    assert "Stage 'prepare' didn't change, skipping" in out
    first, second = _parents(project)
    assert second.data.tags["ccvs.kind"] == "dvc repro"
    assert second.info.status == "FINISHED"  # the last stage process ended it
    assert set(_children(project, second.info.run_id)) == {"positions", "evaluate"}
    produced = _children(project, first.info.run_id)["prepare"].info.run_id
    assert second.data.tags["ccvs.skipped.prepare"] == produced
    # complete and comparable: same columns, the changed param and metric differ
    assert set(second.data.metrics) == set(first.data.metrics)
    assert second.data.metrics["prepare/clips"] == first.data.metrics["prepare/clips"]
    assert second.data.metrics["positions/error_px"] < first.data.metrics["positions/error_px"]
    assert (first.data.params["toy.steps"], second.data.params["toy.steps"]) == ("4", "6")
    assert "skipped by DVC" in second.data.tags["mlflow.note.content"]


def test_dvc_exp_run_is_a_parent_named_after_the_experiment(project):
    _run(project, "git", "add", "-A")
    _run(project, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "toy")
    _run(project, dvc_executable(), "exp", "run", "-n", "more-clips", "-S", "toy.clips=5")
    parent = _parents(project)[-1]
    assert parent.data.tags["ccvs.kind"] == "dvc exp run"
    assert parent.info.run_name == "dvc exp run more-clips"
    assert set(_children(project, parent.info.run_id)) == {"prepare", "evaluate"}
    assert parent.data.metrics["prepare/clips"] == 5.0
    assert "ccvs.skipped.positions" in parent.data.tags


def _wait_for(path_glob: str, proj: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(proj.glob(path_glob)):
            return
        time.sleep(0.5)
    raise AssertionError(f"{path_glob} never appeared in {proj}")


def test_a_sigkilled_training_stage_leaves_no_running_run_after_its_rerun(project):
    import psutil

    _set(project, steps=40)
    dvc = subprocess.Popen([dvc_executable(), "repro"], cwd=project, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=_env(TOY_STEP_SLEEP="0.5"))
    try:
        _wait_for("checkpoints/positions/step-000000[1-3][0-9].pt", project)  # past step 6
        # the Python process itself: DVC runs the command through $SHELL, and dash (/bin/sh, the
        # default when SHELL is unset) forks the command instead of exec'ing it, so the
        # shell's cmdline names the stage too
        stage = next(p for p in psutil.Process(dvc.pid).children(recursive=True)
                     if "positions" in " ".join(p.cmdline())
                     and "python" in Path(p.cmdline()[0]).name)
        stage.send_signal(signal.SIGKILL)
        assert dvc.wait(timeout=120) != 0
    finally:
        if dvc.poll() is None:
            dvc.kill()
    client, exp = _client(project)
    killed = client.search_runs([exp], filter_string="attributes.status = 'RUNNING'")
    assert [r.data.tags.get("stage") for r in killed if r.data.tags.get("ccvs.role") == "stage"] \
        == ["positions"]  # nobody closed it: its process is gone
    killed_run = next(r for r in killed if r.data.tags.get("stage") == "positions")
    killed_ckpt = killed_run.data.tags["train_loop.checkpoint"]

    _run(project, dvc_executable(), "repro")
    assert client.search_runs([exp], filter_string="attributes.status = 'RUNNING'") == []
    dead = client.get_run(killed_run.info.run_id)
    assert dead.info.status == "KILLED" and "died" in dead.data.tags["ccvs.ended"]
    assert client.get_run(killed_run.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    resumed = client.get_run(dead.data.tags["ccvs.resumed_by"])
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["ccvs.resumes"] == killed_run.info.run_id
    assert resumed.data.tags["train_loop.resumed_checkpoint"] == killed_ckpt
    steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "loss")]
    assert steps == list(range(1, 41))  # one curve: the killed run's steps, then the rest
