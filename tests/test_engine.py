"""The data stages on a Dask cluster (pipeline/engine): prepare, tokenize and evaluate's synthesis
run on a local 2-worker cluster this module starts, and give byte-identical outputs to the
single-machine run; a task that keeps killing its worker stops the stage naming it, nothing
partial is left, and a rerun finishes."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest

from conftest_media import good_video
from pipeline.data.sources import VideoSource
from pipeline.engine import prepare as engine_prepare
from pipeline.engine.cluster import EngineError, engine_params, open_engine
from pipeline.engine.config import LOCAL, EngineParams
from pipeline.params import DataParams, PrepareParams
from pipeline.tracking import RecordingLogger
from stages import prepare

distributed = pytest.importorskip("distributed")
SPLIT_OF = {"v0": "train", "v1": "train", "v2": "train", "v3": "val", "v4": "test", "v5": "train"}


@pytest.fixture(scope="module")
def cluster():
    """A local Dask cluster of 2 worker processes; a task may kill 2 workers before it fails."""
    import dask

    # worker-saturation 1.0: a one-thread worker holds one task, so a dying worker kills (and is
    # blamed on) exactly the task it ran (the default 1.1 queues a second one on it)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1,
                          "distributed.scheduler.worker-saturation": 1.0}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None,
                                      silence_logs=logging.ERROR) as local:
            yield EngineParams(kind="dask", address=local.scheduler_address, workers=2)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> DataParams:
    root = tmp_path_factory.mktemp("raw")
    rows = []
    for i, vid in enumerate(SPLIT_OF):
        good_video(root / "videos" / f"{vid}.mp4", num_frames=20, size=(32, 40), seed=i)
        rows.append((f"videos/{vid}.mp4", "ab"[i % 2], SPLIT_OF[vid]))
    rows.append(("videos/missing.mp4", "a", "train"))  # a reject row, in its place
    with open(root / "videos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    return DataParams(source="manifest", path=str(root / "videos.csv"), annotations="",
                      val_fraction=0.2, test_fraction=0.2, fold=1)


def _prepare_params(**change) -> PrepareParams:
    return dataclasses.replace(PrepareParams(
        resolution=32, fps=10.0, clip_length=8, clip_stride=4, frame_step=1, audio=True, audio_rate=8000,
        missing_audio="reject", shard_max_bytes=60_000, workers=1, decoder="auto"), **change)


def test_prepare_on_a_new_local_cluster_is_byte_identical(videos, tmp_path):
    prepare.run(videos, _prepare_params(), tmp_path / "one", RecordingLogger())
    log = RecordingLogger()
    prepare.run(videos, _prepare_params(), tmp_path / "dask", log,
                engine=EngineParams(kind="dask", address="", workers=2))  # starts its own
    assert len(list((tmp_path / "one" / "train").glob("*.tar"))) > 1
    assert _files(tmp_path / "dask") == _files(tmp_path / "one")
    assert log.tags["engine"] == "dask"


def _dies_on_v2(video: VideoSource, params: PrepareParams):
    if Path(video.path).stem == "v2":
        os._exit(3)  # the worker process dies (a decoder crash, an OOM kill)
    return engine_prepare.decode_video(video, params)


def test_a_task_that_keeps_killing_workers_is_named_and_a_rerun_finishes(videos, cluster,
                                                                        tmp_path, monkeypatch):
    import cloudpickle

    cloudpickle.register_pickle_by_value(__import__(__name__))  # the workers need not import us
    monkeypatch.setattr(engine_prepare, "decode_video", _dies_on_v2)
    out = tmp_path / "clips"
    with pytest.raises(EngineError) as err:
        prepare.run(videos, _prepare_params(), out, RecordingLogger(), engine=cluster)
    message = str(err.value)
    assert "v2.mp4" in message and "tcp://127.0.0.1:" in message and "\n" not in message
    # nothing a later stage could take for output: no shard (not even the finished ones of the
    # failed run), no manifest, no temp files
    assert not [p for p in out.rglob("*") if p.is_file()]
    monkeypatch.undo()
    prepare.run(videos, _prepare_params(), out, RecordingLogger(), engine=cluster)
    prepare.run(videos, _prepare_params(), tmp_path / "one", RecordingLogger())
    assert _files(out) == _files(tmp_path / "one")


def test_tokenize_on_the_cluster_is_byte_identical(cluster, tmp_path):
    from test_tokenize import make_world, params, tokenize_to
    from stages import tokenize

    world = make_world(tmp_path / "world")
    tokenize_to(world, tmp_path / "one")
    tokenize.run(params(), world["clips"], world["autoencoder"], tmp_path / "dask",
                 RecordingLogger(), sound_vq=world["sound_vq"], layout_vq=world["layout_vq"],
                 positions=world["positions"], engine=cluster)
    one, dask_ = _files(tmp_path / "one"), _files(tmp_path / "dask")
    assert len([n for n in one if n.endswith(".tar")]) > 2  # several groups and shards
    assert dask_ == one


def test_evaluate_on_the_cluster_gives_the_same_samples_and_metrics(cluster, tmp_path):
    from test_evaluate import _params, evaluate_to, make_world

    world = make_world(tmp_path / "world")
    # decoding known tokens and sampling with T: the two kinds of work; 3 inputs in 2 batches
    params = _params(tasks=("reconstruction", "prediction"), samples=2)
    docs = {name: evaluate_to(world, tmp_path / name, RecordingLogger(), params, **kw)
            for name, kw in (("one", {}), ("dask", {"engine": cluster}))}
    timing = ("seconds", "task_seconds")
    a, b = ({k: v for k, v in d.items() if k not in timing} for d in docs.values())
    assert a == b and a["tasks"]  # every metric of every task, exactly
    for folder in ("samples", "plots"):  # GIFs, contact sheets, curves: the same bytes
        one, dask_ = _files(tmp_path / "one" / folder), _files(tmp_path / "dask" / folder)
        assert one and dask_ == one
    saved = json.loads((tmp_path / "dask" / "evaluate.json").read_text())
    assert saved["tasks"] == a["tasks"]


def test_engine_params_and_unreachable_scheduler(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("prepare: {}\n")
    assert engine_params(str(path)) == LOCAL  # a params file from before the section
    path.write_text("engine: {kind: dask, address: '', workers: 3}\n")
    assert engine_params(str(path)) == EngineParams("dask", "", 3)
    path.write_text("engine: {kind: dask, adress: ''}\n")
    with pytest.raises(Exception, match=r"engine\.adress: unknown key \(did you mean 'address'"):
        engine_params(str(path))
    with pytest.raises(EngineError, match=r"engine\.address tcp://127\.0\.0\.1:9: cannot reach"):
        with open_engine(EngineParams("dask", "tcp://127.0.0.1:9", 1), "prepare"):
            pass
