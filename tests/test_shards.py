"""pipeline.data.shards: writing size-capped clip shards and reading them back (DataLoader, ranks)."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import torch

from pipeline.data import shards
from pipeline.data.shard_writing import ShardError, ShardWriter, encode_sample
from pipeline.data.shards import clip_dataset, decode_sample, iter_clips, list_shards
from pipeline.data import shard_writing


def _clip(i: int, t: int = 4, size: int = 8):
    rng = np.random.default_rng(i)
    frames = rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8)
    positions = np.full((t, 2), np.nan, np.float32)
    positions[1] = (i, 2 * i)
    return dict(
        key=f"vid-{i // 3}_{i % 3:04d}",
        frames=frames,
        meta={"video_id": f"vid-{i // 3}", "first_frame": i, "label": "é"},
        audio=rng.standard_normal(100).astype(np.float32),
        positions=positions,
        layout=(frames[..., 0] % 3).astype(np.uint8),
    )


def _write(folder, count: int, max_bytes: int) -> list[str]:
    names = []
    with ShardWriter(folder, max_bytes) as writer:
        for i in range(count):
            c = _clip(i)
            names.append(writer.write(encode_sample(c["key"], c["frames"], c["meta"], audio=c["audio"],
                                                    positions=c["positions"], layout=c["layout"])))
    return names


def test_encode_decode_roundtrip():
    c = _clip(5)
    sample = encode_sample(c["key"], c["frames"], c["meta"], audio=c["audio"], positions=c["positions"], layout=c["layout"])
    members = {k: shard_writing.member_bytes(v) for k, v in sample.items() if k != "__key__"}
    out = decode_sample(c["key"], members)
    np.testing.assert_array_equal(out["frames"], c["frames"])
    np.testing.assert_array_equal(out["audio"], c["audio"])
    np.testing.assert_array_equal(out["positions"], c["positions"])  # NaNs included
    np.testing.assert_array_equal(out["layout"], c["layout"])
    assert out["meta"] == c["meta"] and out["key"] == c["key"]


def test_encode_rejects_malformed_clips():
    c = _clip(0)
    with pytest.raises(ValueError, match="must not contain"):
        encode_sample("a.b_0000", c["frames"], {})
    with pytest.raises(ValueError, match="uint8"):
        encode_sample("k", c["frames"].astype(np.float32), {})
    with pytest.raises(ValueError, match="positions"):
        encode_sample("k", c["frames"], {}, positions=np.zeros((3, 2)))


def test_writer_caps_shard_size_and_keeps_order(tmp_path):
    one = shard_writing.sample_nbytes(encode_sample("k_0000", _clip(0)["frames"], {}, audio=_clip(0)["audio"],
                                             positions=_clip(0)["positions"], layout=_clip(0)["layout"]))
    names = _write(tmp_path / "train", 10, max_bytes=3 * one + 1024)
    files = sorted((tmp_path / "train").iterdir())
    assert [f.name for f in files] == ["clips-00000.tar", "clips-00001.tar", "clips-00002.tar", "clips-00003.tar"]
    assert names == ["train/clips-00000.tar"] * 3 + ["train/clips-00001.tar"] * 3 + \
        ["train/clips-00002.tar"] * 3 + ["train/clips-00003.tar"]
    assert all(f.stat().st_size <= 3 * one + 1024 + 10240 for f in files)  # + tar record padding
    back = list(iter_clips(tmp_path, "train"))
    assert [s["key"] for s in back] == [_clip(i)["key"] for i in range(10)]
    np.testing.assert_array_equal(back[7]["frames"], _clip(7)["frames"])


def test_shards_are_byte_identical_across_runs(tmp_path):
    _write(tmp_path / "a" / "train", 4, 10**6)
    _write(tmp_path / "b" / "train", 4, 10**6)
    a = (tmp_path / "a" / "train" / "clips-00000.tar").read_bytes()
    assert a == (tmp_path / "b" / "train" / "clips-00000.tar").read_bytes()


def _encoded(i: int) -> dict:
    c = _clip(i)
    return encode_sample(c["key"], c["frames"], c["meta"], audio=c["audio"], positions=c["positions"],
                         layout=c["layout"])  # fmt: skip


def test_placed_samples_written_in_any_order_give_the_same_shards(tmp_path):
    samples = [_encoded(i) for i in range(7)]
    cap = 3 * shard_writing.sample_nbytes(samples[0]) + 1024  # 3 samples per shard
    with ShardWriter(tmp_path / "seq" / "train", cap) as writer:
        names = [writer.write(sample) for sample in samples]
    writer = ShardWriter(tmp_path / "placed" / "train", cap)
    placements = [writer.place(shard_writing.sample_nbytes(sample)) for sample in samples]
    assert [p.shard for p in placements] == names and len(set(names)) == 3
    folder = tmp_path / "placed" / "train"
    for i in reversed(range(7)):  # written back to front, as decoding processes may
        shard_writing.write_placed([placements[i]], [samples[i]])
        writer.done(placements[i])
        finished = sorted(p.name for p in folder.glob("*.tar"))
        # a full shard is renamed only once all its samples are written; the last one at close
        assert finished == (["clips-00000.tar"] if i == 0 else []) + (["clips-00001.tar"] if i <= 3 else [])
    writer.close()
    for name in sorted(p.name for p in (tmp_path / "seq" / "train").iterdir()):
        assert (folder / name).read_bytes() == (tmp_path / "seq" / "train" / name).read_bytes()
    assert [s["key"] for s in iter_clips(folder)] == [s["__key__"] for s in samples]


def test_unwritten_placements_fail_close_and_abort_removes_them(tmp_path):
    writer = ShardWriter(tmp_path / "train", 10**6)
    placement = writer.place(shard_writing.sample_nbytes(_encoded(0)))
    with pytest.raises(ShardError, match="never written"):
        writer.close()
    writer.abort()
    assert list((tmp_path / "train").iterdir()) == []
    with pytest.raises(ShardError, match="were placed"):  # a sample that is not the placed size
        shard_writing.write_placed([placement._replace(size=placement.size + 512)], [_encoded(0)])


def test_tar_headers_parse_back():
    for name, size in [("v_0000.frames.npy", 0), ("é" * 50, 12345), ("x" * 100, 8**11 - 1)]:
        info = tarfile.TarInfo.frombuf(shard_writing.tar_header(name, size), "utf-8", "strict")
        fields = (info.name, info.size, info.mode, info.mtime, info.uid, info.uname, info.type)
        assert fields == (name, size, 0o444, 0, 0, "", tarfile.REGTYPE)


def test_failed_write_leaves_no_partial_shard(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "val", 10**6) as writer:
            c = _clip(0)
            writer.write(encode_sample(c["key"], c["frames"], c["meta"]))
            raise RuntimeError("killed")
    assert list((tmp_path / "val").iterdir()) == []


def test_corrupt_shard_error_names_the_file(tmp_path):
    _write(tmp_path / "train", 3, 10**6)
    shard = tmp_path / "train" / "clips-00000.tar"
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(ShardError, match="clips-00000.tar"):
        list(iter_clips(tmp_path, "train"))
    with pytest.raises(ShardError, match="no 'test' folder"):
        list_shards(tmp_path, "test")


@pytest.mark.parametrize("count, cap", [(9, 10**6), (12, 3 * 7000)], ids=["one-shard", "many-shards"])
def test_dataloader_workers_see_every_clip_once(tmp_path, count, cap):
    _write(tmp_path / "train", count, cap)
    # forkserver: a forked worker inherits whatever threads earlier tests left running (Prefect's
    # test server), which can kill it; a fresh server process keeps this test order-independent.
    loader = torch.utils.data.DataLoader(clip_dataset(tmp_path, "train"), batch_size=2, num_workers=2,
                                         multiprocessing_context="forkserver")
    batches = list(loader)  # one pass: each pass starts 2 fresh worker processes (~seconds)
    keys = [k for batch in batches for k in batch["key"]]
    assert sorted(keys) == sorted(_clip(i)["key"] for i in range(count))
    assert batches[0]["frames"].shape == (2, 4, 8, 8, 3) and batches[0]["frames"].dtype == torch.uint8


@pytest.mark.parametrize("count, cap", [(7, 10**6), (12, 3 * 7000)])
def test_ranks_and_workers_partition_the_clips(tmp_path, monkeypatch, count, cap):
    _write(tmp_path / "train", count, cap)
    seen = []
    for index in range(4):  # e.g. 2 ranks × 2 workers
        monkeypatch.setattr(shards, "_consumer", lambda index=index: (index, 4))
        seen.append([s["key"] for s in clip_dataset(tmp_path, "train")])
    flat = [k for part in seen for k in part]
    assert sorted(flat) == sorted(_clip(i)["key"] for i in range(count))  # disjoint and complete
    assert all(part for part in seen)  # nobody idles


def test_shuffle_is_seeded_and_changes_with_the_epoch(tmp_path):
    _write(tmp_path / "train", 12, 3 * 7000)
    data = clip_dataset(tmp_path, "train", shuffle=5, seed=3)
    first = [s["key"] for s in data]
    assert first == [s["key"] for s in clip_dataset(tmp_path, "train", shuffle=5, seed=3)]
    data.set_epoch(1)
    second = [s["key"] for s in data]
    assert sorted(first) == sorted(second) and first != second
    assert first != [s["key"] for s in iter_clips(tmp_path, "train")]


def test_fields_selects_arrays(tmp_path):
    _write(tmp_path / "train", 2, 10**6)
    sample = next(iter(clip_dataset(tmp_path / "train", None, fields=["frames"])))
    assert set(sample) == {"key", "meta", "frames"}
