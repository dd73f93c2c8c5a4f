"""The DAG under real DVC, in a temporary copy of the project with tiny params.

`dvc repro` runs every stage; a second `dvc repro` reruns only the listing (always changed: it
stats the inputs) and skips everything else; changing a `prepare` param reruns `prepare` but never
`demo_data`, and leaves every stage after it out of date.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

import dvc_project
from dvc_project import copy_project, dvc as _dvc, env as _env, ran, set_params as _set_params
from dvc_project import stale

pytestmark = pytest.mark.slow

TINY = {
    **dvc_project.TINY,
    "demo": {"num_videos": 6, "num_frames": 12, "annotated_frames": 20, "test_fraction": 0.2,
             "val_fraction": 0.2},
    "evaluate": {**dvc_project.TINY["evaluate"],
                 "tasks": ["reconstruction", "prediction", "point_to_point", "unconditional"]},
}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    proj = copy_project(tmp_path_factory.mktemp("dvcproj") / "ccvs")
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


def test_second_repro_skips_everything_but_the_listing(project):
    status = json.loads(_dvc(project, "status", "--json").stdout or "{}")
    assert status == {"listing": ["always changed"]}
    out = _dvc(project, "repro").stdout
    assert ran(out) == ["listing"]  # its file is unchanged: prepare and the rest stay cached
    assert "Stage 'prepare' didn't change, skipping" in out


def test_transformer_param_change_reruns_transformer_and_evaluate_only(project):
    _set_params(project, {"transformer": {"lr": 0.0005}})
    assert stale(project) == {"listing", "transformer"}
    assert ran(_dvc(project, "repro").stdout) == ["evaluate", "listing", "transformer"]


def test_prefect_flow_runs_the_same_dag_to_the_same_outputs(project, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from pipeline.orchestration import ccvs_pipeline

    _set_params(project, {"transformer": {"lr": 0.0007}})
    for key, value in _env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as the flow's tasks: the same float rounding
    with prefect_test_harness(server_startup_timeout=300):
        results = ccvs_pipeline(root=str(project))
    assert sorted(r["stage"] for r in results if not r["skipped"]) == [
        "evaluate", "listing", "transformer"]
    assert stale(project) == {"listing"}
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
    changed = stale(project)
    assert "prepare" in changed
    assert "demo_data" not in changed
    # Rerun prepare alone (the stages after it would only retrain on the new clips, which the
    # fixture's full repro and the Prefect test already exercise): DVC must not touch demo_data,
    # and every stage that reads the clips is then out of date (transformer reads the tokens,
    # which change only once tokenize reruns).
    out = _dvc(project, "repro", "--single-item", "prepare").stdout
    assert "Running stage 'prepare'" in out
    assert "Running stage 'demo_data'" not in out
    assert stale(project) == {"listing", "positions", "sound_vq", "layout_vq", "autoencoder",
                              "tokenize", "evaluate"}
