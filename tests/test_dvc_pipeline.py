"""The DAG under real DVC, in a temporary copy of the project with tiny params.

`dvc repro` runs every stage; a second `dvc repro` skips everything; changing a `prepare` param
reruns `prepare` but never `demo_data`, and leaves every stage after it out of date.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

_LOOP = {"steps": 4, "log_every": 2, "eval_every": 4, "ckpt_every": 4}
TINY = {
    "demo": {"num_videos": 6, "num_frames": 12, "annotated_frames": 20, "test_fraction": 0.2,
             "val_fraction": 0.2},
    "prepare": {"clip_length": 8, "clip_stride": 4, "workers": 1},
    "positions": {"loop": _LOOP},
    "sound_vq": {"loop": _LOOP, "griffin_lim_iters": 2},
    "layout_vq": {"loop": _LOOP},
    "autoencoder": {"loop": _LOOP, "val_clips": 2, "gif_clips": 1},
    "transformer": {"loop": _LOOP, "val_clips": 2},
    "evaluate": {"samples": 2, "timesteps": [4, 7], "num_frames": 0, "batch_size": 2,
                 "gif_videos": 1, "tasks": ["reconstruction", "prediction", "point_to_point",
                                            "unconditional"],
                 "fvd": {"frames": 8, "videos": 0, "batch_size": 4}},
}


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["CCVS_TRACKING"] = "off"
    env["PYTHONPATH"] = ""  # the copy must run from its own files
    return env


def _dvc(proj: Path, *args: str) -> subprocess.CompletedProcess:
    dvc = Path(sys.executable).with_name("dvc")
    proc = subprocess.run([str(dvc), *args], cwd=proj, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _set_params(proj: Path, changes: dict) -> None:
    path = proj / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in changes.items():
        if section not in params:  # a stage this checkout does not have yet
            continue
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key].update(value)
            else:
                params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = tmp_path_factory.mktemp("dvcproj") / "ccvs"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            dst = proj / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    subprocess.run(["git", "init", "-q"], cwd=proj, check=True)
    _set_params(proj, TINY)
    _dvc(proj, "repro")
    return proj


def test_repro_builds_every_output(project):
    assert (project / "data/raw/demo/videos.csv").exists()
    assert (project / "data/clips/manifest.parquet").exists()
    assert list((project / "data/clips/train").glob("*.tar"))
    assert (project / "dvc.lock").exists()
    for model in ("autoencoder", "transformer", "position", "sound_vq", "layout_vq"):
        assert (project / f"models/{model}.pt").exists()
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert evaluation["fvd"]["metric"] == "fvd_untrained_i3d"  # no I3D weights offline
    assert "prediction" in evaluation["tasks"] and "reconstruction" in evaluation["tasks"]
    assert (project / "samples/evaluate/prediction.gif").exists()


def test_second_repro_skips_everything(project):
    status = _dvc(project, "status", "--json")
    assert json.loads(status.stdout or "{}") == {}
    out = _dvc(project, "repro").stdout
    assert "Running stage" not in out


def test_transformer_param_change_reruns_transformer_and_evaluate_only(project):
    _set_params(project, {"transformer": {"lr": 0.0005}})
    changed = json.loads(_dvc(project, "status", "--json").stdout)
    assert set(changed) == {"transformer"}
    out = _dvc(project, "repro").stdout
    ran = sorted(line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage"))
    assert ran == ["evaluate", "transformer"]


def test_prefect_flow_runs_the_same_dag_to_the_same_outputs(project, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from pipeline.orchestration import ccvs_pipeline

    _set_params(project, {"transformer": {"lr": 0.0007}})
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the flow's tasks: the same float rounding
    with prefect_test_harness(server_startup_timeout=300):
        results = ccvs_pipeline(root=str(project))
    ran = sorted(r["stage"] for r in results if not r["skipped"])
    assert ran == ["evaluate", "transformer"]
    assert json.loads(_dvc(project, "status", "--json").stdout or "{}") == {}
    from pipeline.training.checkpoint import load_model

    by_flow = load_model(project / "models/transformer.pt").state
    tasks = json.loads((project / "metrics/evaluate.json").read_text())["tasks"]
    shutil.rmtree(project / "checkpoints" / "transformer")  # DVC alone trains it from scratch
    _dvc(project, "repro", "--force", "--single-item", "transformer")
    _dvc(project, "repro", "--force", "--single-item", "evaluate")
    by_dvc = load_model(project / "models/transformer.pt").state
    assert by_dvc.keys() == by_flow.keys()
    for key, value in by_flow.items():  # DVC alone: the same model
        torch.testing.assert_close(by_dvc[key], value, rtol=1e-5, atol=1e-6)
    again = json.loads((project / "metrics/evaluate.json").read_text())["tasks"]
    assert again.keys() == tasks.keys()
    for task, row in tasks.items():
        assert again[task].keys() == row.keys(), task
        for name, value in row.items():
            if value is None:
                assert again[task][name] is None, (task, name)
            else:
                assert again[task][name] == pytest.approx(value, rel=1e-3, abs=1e-5), (task, name)


def test_prepare_param_change_reruns_prepare_not_demo(project):
    _set_params(project, {"prepare": {"clip_stride": 2}})
    changed = json.loads(_dvc(project, "status", "--json").stdout)
    assert "prepare" in changed
    assert "demo_data" not in changed
    # Rerun prepare alone (the stages after it would only retrain on the new clips, which the
    # fixture's full repro and the Prefect test already exercise): DVC must not touch demo_data,
    # and every stage that reads the clips is then out of date (transformer reads the tokens,
    # which change only once tokenize reruns).
    out = _dvc(project, "repro", "--single-item", "prepare").stdout
    assert "Running stage 'prepare'" in out
    assert "Running stage 'demo_data'" not in out
    stale = set(json.loads(_dvc(project, "status", "--json").stdout or "{}"))
    assert stale == {"positions", "sound_vq", "layout_vq", "autoencoder", "tokenize", "evaluate"}
