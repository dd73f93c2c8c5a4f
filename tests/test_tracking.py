"""MLflow tracking: a run per stage, flattened params, the pipeline context, the experiment's
setup, headline metrics, dead runs and resumed curves (the run tree under DVC: test_run_tree.py)."""

from pathlib import Path

import pytest

import dataclasses
import json
import os
import subprocess
import sys

from pipeline import tracking
from pipeline.params import load_section
from pipeline.tracking import RecordingLogger, context, experiment, interruption, stage_run
from pipeline.tracking.headline import HEADLINE, headline, write_headline

ROOT = Path(__file__).resolve().parents[1]


def test_recording_logger_records():
    log = RecordingLogger()
    log.log_params({"prepare": {"clip_length": 16}})
    log.log_metric("loss", 1.5, step=3)
    log.log_metrics({"loss": 1.0, "acc": 0.5}, step=4)
    log.set_tags({"stage": "x"})
    assert log.params == {"prepare.clip_length": 16}
    assert log.metrics["loss"] == [(3, 1.5), (4, 1.0)]
    assert log.last("acc") == 0.5
    assert log.tags["stage"] == "x"
    with pytest.raises(FileNotFoundError):
        log.log_artifact("/no/such/file.png")


def test_pipeline_context_from_a_wrapper_env(tmp_path):
    env = context.wrapper_env("ccvs repro", "ccvs repro now")
    ctx = context.current(env, tmp_path)
    assert ctx is not None and ctx.id == env[context.ENV_ID] and ctx.id.startswith("repro-")
    assert ctx.kind == "ccvs repro" and ctx.name == "ccvs repro now" and ctx.wrapped
    assert ctx.owner == context.Owner.of() and ctx.owner.alive() is True
    assert ctx.root == tmp_path.resolve()
    assert context.wrapper_env("ccvs repro", "x")[context.ENV_ID] != ctx.id  # one id per run


def test_a_stage_run_by_hand_belongs_to_no_pipeline():
    assert context.current({}) is None  # neither a wrapper's env nor DVC_STAGE


def test_owner_of_a_dead_process_is_dead_and_of_another_host_unknown():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = context.Owner.of(proc.pid)
    proc.wait()
    assert owner.alive() is False
    assert context.Owner.decode(owner.encode()) == owner
    assert context.Owner.from_tags(owner.tags()) == owner
    assert dataclasses.replace(owner, host="elsewhere").alive() is None


def test_stage_run_writes_one_mlflow_run(mlflow_uri, tmp_path):
    import mlflow

    uri = mlflow_uri
    art = tmp_path / "a.txt"
    art.write_text("hello")
    demo = load_section("demo", ROOT / "params.yaml")
    with stage_run("demo_data", {"demo": demo}, params_path=ROOT / "params.yaml") as log:
        log.log_metric("videos", 3, step=0)
        log.log_metric("nan_metric", float("nan"))  # skipped, not a crash
        log.log_artifact(art)
    with stage_run("demo_data", {"demo": demo}, params_path=ROOT / "params.yaml") as log:
        log.log_metric("videos", 4, step=0)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["ccvs"], output_format="list")
    assert len(runs) == 2  # run by hand: no pipeline, no parent
    run = runs[0]
    assert run.data.tags["stage"] == "demo_data"
    assert "pipeline_id" not in run.data.tags and "mlflow.parentRunId" not in run.data.tags
    assert "git_commit" in run.data.tags
    assert context.Owner.from_tags(run.data.tags).pid == os.getpid()
    assert run.data.params["demo.fps"] == str(demo.fps)
    assert "nan_metric" not in run.data.metrics
    assert run.info.status == "FINISHED"


def test_the_experiment_opens_on_its_runs_with_the_headline_columns(mlflow_uri, tmp_path):
    import mlflow

    uri = mlflow_uri
    with stage_run("prepare", {"x": 1}, params_path=ROOT / "params.yaml"):
        pass
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("ccvs")
    assert exp.tags[experiment.EXPERIMENT_KIND_TAG] == "custom_model_development"
    view = json.loads(exp.tags[experiment.VIEW_TAG])
    assert "metrics.`autoencoder/psnr`" in view["selectedColumns"]
    assert "metrics.`transformer/perplexity`" in view["selectedColumns"]
    url = experiment.runs_url(exp.experiment_id)
    assert url.startswith(f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs?")
    assert "workflowType=machine_learning" in url and experiment.VIEW_KEY in url
    # every default metric column is a headline metric some stage reports
    names = {f"{stage}/{name.replace('*', 'prediction')}" for stage, spec in HEADLINE.items()
             for name in spec.values()} | {f"evaluate/{t}/{m}" for t in ("point_to_point", "state")
                                           for m in ("end_ssim", "trajectory_error_px")}
    for column in view["selectedColumns"]:
        if column.startswith("metrics."):
            assert column[len("metrics.`"):-1] in names, column


def test_headline_picks_the_named_metrics_and_skips_the_rest():
    result = {"val/psnr": 24.123456, "val/ssim": 0.8, "seconds": 12.0, "time/step_s": 0.3,
              "val/psnr_objects": float("nan")}
    assert headline("autoencoder", result) == {"psnr": 24.123456, "ssim": 0.8}
    doc = {"tasks": {"prediction": {"ssim": 0.7, "fvd_untrained_i3d": 80.0, "div": 0.01,
                                    "motion": 0.1},
                     "point_to_point": {"end/ssim": 0.6, "psnr": None}},
           "fvd": {"metric": "fvd_untrained_i3d"}, "seconds": 40.0}
    assert headline("evaluate", doc) == {"prediction/ssim": 0.7,
                                         "prediction/fvd_untrained_i3d": 80.0,
                                         "point_to_point/end_ssim": 0.6}
    assert headline("tokenize", {"clips": 3}) == {} and headline("evaluate", None) == {}


def test_headline_file_nests_names_for_readable_dvc_columns(tmp_path):
    path = write_headline(tmp_path / "h" / "evaluate.json", "evaluate",
                          {"prediction/ssim": 0.712345678, "prediction/psnr": 21.0})
    assert json.loads(path.read_text()) == {
        "evaluate": {"prediction": {"psnr": 21.0, "ssim": 0.71235}}}


def test_stage_run_marks_failures_and_interrupts(mlflow_uri, tmp_path):
    import mlflow

    uri = mlflow_uri
    with pytest.raises(RuntimeError):
        with stage_run("prepare", {"x": 1}, params_path=ROOT / "params.yaml"):
            raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt):
        with stage_run("autoencoder", {"x": 1}, params_path=ROOT / "params.yaml"):
            raise KeyboardInterrupt  # Ctrl-C, or SIGTERM (stage_run turns it into this)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["ccvs"], output_format="list")
    assert {r.data.tags["stage"]: r.info.status for r in runs} == {"prepare": "FAILED",
                                                                  "autoencoder": "KILLED"}


def test_a_run_whose_process_died_is_closed_when_a_stage_starts(mlflow_uri, tmp_path):
    import mlflow

    uri = mlflow_uri
    with stage_run("prepare", {"x": 1}, params_path=ROOT / "params.yaml"):
        pass  # creates the experiment
    client = mlflow.MlflowClient(uri)
    exp_id = client.get_experiment_by_name("ccvs").experiment_id
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead = context.Owner.of(proc.pid)
    proc.wait()
    killed = client.create_run(exp_id, tags={"stage": "autoencoder", **dead.tags()}).info.run_id
    alive = client.create_run(exp_id, tags={"stage": "transformer",
                                            **context.Owner.of().tags()}).info.run_id
    with stage_run("positions", {"x": 1}, params_path=ROOT / "params.yaml"):
        pass
    assert client.get_run(killed).info.status == "KILLED"
    assert "died" in client.get_run(killed).data.tags[interruption.ENDED_TAG]
    assert client.get_run(alive).info.status == "RUNNING"  # its process (this one) still runs


def test_a_resumed_run_gets_the_curve_of_the_run_that_wrote_its_checkpoint(mlflow_uri):
    import mlflow

    from pipeline.training.loop import CHECKPOINT_TAG

    uri = mlflow_uri
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment("curves")
    old = client.create_run(exp_id).info.run_id
    for step in range(1, 7):
        client.log_metric(old, "loss", 10.0 - step, step=step)
    client.set_tag(old, CHECKPOINT_TAG, "checkpoints/x/step-00000004.pt")
    new = client.create_run(exp_id).info.run_id
    linked = interruption.continue_curves(client, new, exp_id, "checkpoints/x/step-00000004.pt", 4)
    assert linked == old
    assert [(m.step, m.value) for m in client.get_metric_history(new, "loss")] == [
        (1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0)]  # steps 5-6 were not checkpointed: redone
    assert client.get_run(new).data.tags[interruption.RESUMES_TAG] == old
    assert client.get_run(old).data.tags[interruption.RESUMED_BY_TAG] == new
    assert interruption.continue_curves(client, new, exp_id, "checkpoints/x/other.pt", 4) is None


def test_tracking_off_gives_recording_logger(monkeypatch):
    monkeypatch.setenv("CCVS_TRACKING", "off")
    with stage_run("x", {"a": {"b": 1}}) as log:
        assert isinstance(log, RecordingLogger)
        assert log.params == {"a.b": 1}
        assert log.tags["stage"] == "x"


def test_only_rank_zero_opens_a_run(monkeypatch):
    monkeypatch.delenv("CCVS_TRACKING", raising=False)
    monkeypatch.setenv("RANK", "1")
    with stage_run("x", {"a": 1}) as log:
        assert isinstance(log, RecordingLogger)


def test_stage_run_reports_peak_memory(monkeypatch, capsys):
    import numpy as np

    monkeypatch.setenv("CCVS_TRACKING", "off")
    with tracking.stage_run("demo", {"a": 1}) as logger:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB held while the stage runs
        del block
    (step, peak), = logger.metrics["peak_rss_mb"]
    assert peak > 64
    assert "demo: peak memory" in capsys.readouterr().out
