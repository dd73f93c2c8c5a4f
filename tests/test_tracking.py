"""MLflow tracking: one run per stage, flattened params, shared pipeline id."""

from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.params import load_section
from pipeline.tracking import RecordingLogger, pipeline_id, stage_run

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


def test_pipeline_id_from_env(monkeypatch):
    monkeypatch.setenv("CCVS_PIPELINE_ID", "abc")
    assert pipeline_id() == "abc"


def test_pipeline_id_without_env_is_fresh(monkeypatch):
    monkeypatch.delenv("CCVS_PIPELINE_ID", raising=False)
    assert pipeline_id() != pipeline_id()  # not under dvc: a new id each time


def test_stage_run_writes_one_mlflow_run(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CCVS_PIPELINE_ID", "pid-1")
    monkeypatch.delenv("CCVS_TRACKING", raising=False)
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
    assert len(runs) == 2
    run = runs[0]
    assert run.data.tags["stage"] == "demo_data"
    assert run.data.tags["pipeline_id"] == "pid-1"
    assert "git_commit" in run.data.tags
    assert run.data.params["demo.fps"] == str(demo.fps)
    assert "nan_metric" not in run.data.metrics
    assert run.info.status == "FINISHED"


def test_stage_run_marks_failures(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("CCVS_TRACKING", raising=False)
    with pytest.raises(RuntimeError):
        with stage_run("prepare", {"x": 1}, params_path=ROOT / "params.yaml"):
            raise RuntimeError("boom")
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["ccvs"], output_format="list")
    assert run.info.status == "FAILED"


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
