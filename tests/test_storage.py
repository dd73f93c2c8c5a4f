"""Shards at fsspec URLs: written to and streamed back from a real S3 API on 127.0.0.1 (moto's
server, started and stopped here), ``file://`` URLs, and the bad-input rules (an unreachable URL
named in one line, no partial shard ever visible, a rerun finishes the work)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from conftest_media import good_video
from conftest_s3 import aws_env, local_s3
from pipeline.data import storage
from pipeline.data.shard_index import INDEX_FILE, read_index
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.data.shards import iter_clips, iter_shard, list_shards
from pipeline.data.storage import StorageError
from pipeline.params import DataParams, PrepareParams
from pipeline.tracking import RecordingLogger
from stages import prepare

SPLIT_OF = {"v0": "train", "v1": "train", "v2": "train", "v3": "val", "v4": "test"}


def _sample(i: int) -> dict:
    rng = np.random.default_rng(i)
    frames = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return encode_sample(f"vid{i // 2}_{i % 2:04d}", frames, {"video_id": f"vid{i // 2}", "i": i},
                         audio=rng.standard_normal(64).astype(np.float32),
                         positions=np.full((4, 2), float(i), np.float32))


def _write(folder: Path, count: int, publish_to: str | None = None) -> ShardWriter:
    with ShardWriter(folder, 12_000, publish_to=publish_to) as writer:
        for i in range(count):
            writer.write(_sample(i))
    return writer


def _same_samples(a, b) -> None:
    a, b = list(a), list(b)
    assert [s["key"] for s in a] == [s["key"] for s in b]
    for x, y in zip(a, b):
        for field in ("frames", "audio", "positions"):
            np.testing.assert_array_equal(x[field], y[field])
        assert x["meta"] == y["meta"]


@pytest.fixture(scope="module")
def s3():
    with local_s3() as bucket:
        yield bucket


def test_shards_round_trip_through_a_local_s3_server(s3, tmp_path):
    local = _write(tmp_path / "local" / "train", 9)
    remote = _write(tmp_path / "stage" / "train", 9, publish_to=f"{s3}/clips/train")
    assert len(local.shards) > 2  # several shards, so the listing and the order matter
    assert remote.shards == [f"{s3}/clips/train/{Path(p).name}" for p in local.shards]
    assert not list((tmp_path / "stage" / "train").iterdir())  # local copies gone after upload
    fs = fsspec.filesystem("s3")
    for path, url, record in zip(local.shards, remote.shards, remote.records):
        data = fs.cat(url)
        assert data == Path(path).read_bytes()  # the same bytes
        assert record["bytes"] == len(data) and record["name"] == f"train/{Path(path).name}"
    # streamed back: a folder URL lists split/*.tar, every sample decodes the same
    assert list_shards(f"{s3}/clips", "train") == remote.shards
    _same_samples(iter_clips(f"{s3}/clips", "train"), iter_clips(tmp_path / "local" / "train"))
    _same_samples(iter_shard(remote.shards[1]), iter_shard(str(local.shards[1])))


def test_file_urls_publish_whole_files(tmp_path):
    url = f"file://{tmp_path / 'bucket'}/train"
    writer = _write(tmp_path / "stage" / "train", 5, publish_to=url)
    names = sorted(p.name for p in (tmp_path / "bucket" / "train").iterdir())
    assert names == [Path(u).name for u in writer.shards]  # no temporary left behind
    _same_samples(iter_clips(f"file://{tmp_path / 'bucket'}", "train"),
                  (s for u in writer.shards for s in iter_shard(u)))


def _videos(root: Path) -> DataParams:
    rows = []
    for i, vid in enumerate(SPLIT_OF):
        good_video(root / "videos" / f"{vid}.mp4", num_frames=20, size=(32, 32), seed=i)
        rows.append((f"videos/{vid}.mp4", "a" if i % 2 else "b", SPLIT_OF[vid]))
    with open(root / "videos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    return DataParams(source="manifest", path=str(root / "videos.csv"), annotations="",
                      val_fraction=0.2, test_fraction=0.2, fold=1)


def _params(**change) -> PrepareParams:
    return dataclasses.replace(PrepareParams(
        resolution=32, fps=10.0, clip_length=8, clip_stride=4, frame_step=1, audio=True, audio_rate=8000,
        missing_audio="reject", shard_max_bytes=40_000, workers=1, decoder="auto"), **change)


def test_prepare_writes_its_shards_to_s3_and_later_readers_find_them(s3, tmp_path):
    data = _videos(tmp_path / "raw")
    prepare.run(data, _params(), tmp_path / "local", RecordingLogger())
    url = f"{s3}/prepare-{tmp_path.name}"
    prepare.run(data, _params(shards=url), tmp_path / "clips", RecordingLogger())
    index = read_index(tmp_path / "clips")
    assert index["root"] == url
    fs = fsspec.filesystem("s3")
    for split in ("train", "val", "test"):
        local = sorted((tmp_path / "local" / split).glob("*.tar"))
        assert [e["name"] for e in index["splits"][split]] == [f"{split}/{p.name}" for p in local]
        assert not list((tmp_path / "clips" / split).iterdir())  # only the index is local
        for entry, path in zip(index["splits"][split], local):
            assert fs.cat(f"{url}/{entry['name']}") == path.read_bytes()
        # a later stage reads data/clips as always; the index sends it to the bucket
        assert all(u.startswith(url) for u in list_shards(tmp_path / "clips", split))
        _same_samples(iter_clips(tmp_path / "clips", split), iter_clips(tmp_path / "local", split))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "clips" / "manifest.parquet"),
                                  pd.read_parquet(tmp_path / "local" / "manifest.parquet"))


def test_a_failed_upload_leaves_no_index_and_a_rerun_finishes(s3, tmp_path, monkeypatch):
    data = _videos(tmp_path / "raw")
    url = f"{s3}/partial-{tmp_path.name}"
    real, calls = storage.publish, []

    def flaky(local, dest):  # the third shard never arrives
        calls.append(dest)
        if len(calls) == 3:
            raise StorageError(f"{dest}: cannot be written (connection reset)")
        real(local, dest)

    monkeypatch.setattr(storage, "publish", flaky)
    with pytest.raises(StorageError, match=r"s3://.*clips-\d+\.tar: cannot be written"):
        prepare.run(data, _params(shards=url), tmp_path / "clips", RecordingLogger())
    assert not (tmp_path / "clips" / INDEX_FILE).exists()  # a later stage finds nothing to read
    fs = fsspec.filesystem("s3")
    assert fs.glob(f"{url}/*/*.tar") == []  # the two published before the failure are removed
    leftovers = [p for p in (tmp_path / "clips").rglob("*") if p.is_file()]
    assert not [p for p in leftovers if ".tar" in p.name]  # no .tmp left on local disk either

    monkeypatch.setattr(storage, "publish", real)
    prepare.run(data, _params(shards=url), tmp_path / "clips", RecordingLogger())
    index = read_index(tmp_path / "clips")
    listed = sorted(f"{url}/{e['name']}" for s in index["splits"].values() for e in s)
    assert sorted(f"s3://{p}" for p in fs.glob(f"{url}/*/*.tar")) == listed
    assert sum(1 for _ in iter_clips(tmp_path / "clips", "train")) == int(
        (pd.read_parquet(tmp_path / "clips" / "manifest.parquet")["split"] == "train").sum())


def test_an_unreachable_url_is_named_in_one_line(tmp_path):
    with aws_env("http://127.0.0.1:9"):  # the discard port: nothing listens
        with pytest.raises(StorageError) as err:
            list(iter_clips("s3://no-such-host-bucket/clips/train/clips-00000.tar"))
    message = str(err.value)
    assert "s3://no-such-host-bucket/clips/train/clips-00000.tar" in message
    assert "\n" not in message and "cannot be read" in message
    with pytest.raises(StorageError, match=r"^nosuchproto://b/x\.tar: .*Protocol not known"):
        storage.open_read("nosuchproto://b/x.tar")
    try:
        import gcsfs  # noqa: F401
    except ImportError:  # the backend a gs:// URL needs is named, with what to install
        with pytest.raises(StorageError, match=r"^gs://b/x\.tar: no fsspec backend.*gcsfs"):
            storage.open_read("gs://b/x.tar")


def test_an_index_that_is_not_one_is_named(tmp_path):
    (tmp_path / INDEX_FILE).write_text(json.dumps({"splits": {}}))
    with pytest.raises(Exception, match=r"shards\.json: not a shard index"):
        list_shards(tmp_path, "train")
