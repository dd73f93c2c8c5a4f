"""The paper's six datasets as ``data.source`` readers, each on a tiny fixture written in the
dataset's real on-disk format, end to end through ``prepare`` (clips, labels, splits, positions,
layouts), plus the TFRecord / Example reader against the protobuf runtime."""

from __future__ import annotations

import csv
import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest_datasets import (
    bair_camera,
    bair_record,
    bair_trajectory,
    crc32c,
    example_bytes,
    frame_record,
    pattern_frames,
    write_avi,
    write_png,
    write_tfrecord,
)
from conftest_media import tone
from pipeline.data.clip_extraction import Crop
from pipeline.data.datasets import bair as bair_reader
from pipeline.data.datasets.bair import fit_camera, list_bair
from pipeline.data.datasets.tfrecord import (
    RecordError,
    iter_records,
    masked_crc32c,
    parse_example,
    record_spans,
)
from pipeline.data.media_write import write_mp4
from pipeline.data.shards import NO_LAYOUT, iter_clips
from pipeline.data.sources import SourceError
from pipeline.params import DataParams, PrepareParams
from pipeline.tracking import RecordingLogger
from stages import prepare


def _data(source: str, path: Path, annotations: str = "", fold: int = 1,
          val_fraction: float = 0.0) -> DataParams:
    return DataParams(source=source, path=str(path), annotations=annotations,
                      val_fraction=val_fraction, test_fraction=0.0, fold=fold)


def _params(**change) -> PrepareParams:
    base = PrepareParams(resolution=32, fps=10.0, clip_length=8, clip_stride=8, frame_step=1,
                         audio=False, audio_rate=8000, missing_audio="reject",
                         shard_max_bytes=10**7, workers=1, decoder="auto")  # fps: the fixtures'
    # own rate (BAIR's nominal 10, the mp4s'), unless a test says otherwise
    return dataclasses.replace(base, **change)


def _prepare(data: DataParams, params: PrepareParams, out: Path):
    metrics = prepare.run(data, params, out, RecordingLogger())
    manifest = pd.read_parquet(out / "manifest.parquet")
    with open(out / "rejected.csv", newline="", encoding="utf-8") as handle:
        rejected = {row["source"]: row["reason"] for row in csv.DictReader(handle)}
    clips = {c["key"]: c for split in ("train", "val", "test") for c in iter_clips(out, split)}
    return metrics, manifest, rejected, clips


# --------------------------------------------------------------------------- TFRecord, Example


def test_tfrecord_framing_and_example_decoding_match_the_protobuf_runtime(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC32C check value (RFC 3720)
    assert frame_record(b"123456789")[-4:] == struct.pack("<I", masked_crc32c(b"123456789"))
    features = {"name": [b"a", b"\x00\xff"], "floats": np.array([1.5, -2.25, 1e-3]),
                "ints": np.array([-3, 0, 2**40]), "single": b"x" * 300}
    path = write_tfrecord(tmp_path / "a.tfrecords", [example_bytes(features), example_bytes({})])
    first, empty = list(iter_records(path))
    parsed = parse_example(first)
    assert parsed["name"] == [b"a", b"\x00\xff"] and parsed["single"] == [b"x" * 300]
    np.testing.assert_array_equal(parsed["floats"], np.float32([1.5, -2.25, 1e-3]))
    assert parsed["ints"].tolist() == [-3, 0, 2**40] and parse_example(empty) == {}

    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # one flipped bit pattern inside the first record's data
    (tmp_path / "bad.tfrecords").write_bytes(bytes(data))
    with pytest.raises(RecordError, match="checksum"):
        next(iter_records(tmp_path / "bad.tfrecords"))
    (tmp_path / "cut.tfrecords").write_bytes(path.read_bytes()[:-5])  # inside the last header
    spans, problem = record_spans(tmp_path / "cut.tfrecords")
    assert len(spans) == 1 and "truncated record header" in problem
    (tmp_path / "cut.tfrecords").write_bytes(path.read_bytes()[:-20])  # inside the first record
    spans, problem = record_spans(tmp_path / "cut.tfrecords")
    assert spans == [] and "file ends first" in problem
    (tmp_path / "text.tfrecords").write_text("not a tfrecord file at all")
    spans, problem = record_spans(tmp_path / "text.tfrecords")
    assert spans == [] and "bad length checksum" in problem


# --------------------------------------------------------------------------- BAIR


@pytest.fixture(scope="module")
def bair(tmp_path_factory):
    """softmotion30_44k/{train,test}/traj_*.tfrecords with 5 trajectories of 30 frames, a broken
    record and a truncated file; returns (root, {video id: (images, state)})."""
    root = tmp_path_factory.mktemp("bair") / "softmotion30_44k"
    truth = {}
    layout = {"train/traj_0_to_1.tfrecords": [0, 1], "train/traj_2_to_3.tfrecords": [2, 3],
              "test/traj_0_to_1.tfrecords": [4, 5]}
    for rel, seeds in layout.items():
        records = []
        for index, seed in enumerate(seeds):
            images, state, actions = bair_trajectory(seed)
            records.append(bair_record(images, state, actions))
            truth[f"{rel.split('/')[0]}-{Path(rel).name.split('.')[0]}-{index:03d}"] = (images, state)
        write_tfrecord(root / rel, records)
    # trajectory 3's data corrupted on disk: the checksum catches it, the others go on
    data = bytearray((root / "train/traj_2_to_3.tfrecords").read_bytes())
    data[len(data) - 1000] ^= 0x55
    (root / "train/traj_2_to_3.tfrecords").write_bytes(bytes(data))
    # a file cut inside its second record: its first record is listed, the rest rejected
    images, state, actions = bair_trajectory(6)
    blob = b"".join(frame_record(bair_record(images, state, actions)) for _ in range(2))
    (root / "train/traj_4_to_5.tfrecords").write_bytes(blob[: len(blob) - 5000])
    truth["train-traj_4_to_5-000"] = (images, state)
    return root, truth


def _annotations(path: Path, truth: dict, picks: list[tuple[str, int]], noise: float = 0.0) -> Path:
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "frame", "x", "y"])
        for vid, frame in picks:
            x, y = np.r_[truth[vid][1][frame], 1.0] @ bair_camera().T + rng.normal(0, noise, 2)
            writer.writerow([vid, frame, f"{x:.4f}", f"{y:.4f}"])
    return path


def test_bair_tfrecords_become_clips_with_projected_gripper_positions(bair, tmp_path):
    root, truth = bair
    picks = [("train-traj_0_to_1-000", 0), ("train-traj_0_to_1-000", 29),
             ("train-traj_0_to_1-001", 5), ("train-traj_0_to_1-001", 20),
             ("test-traj_0_to_1-000", 10), ("test-traj_0_to_1-000", 25)]
    ann = _annotations(tmp_path / "ann.csv", truth, picks, noise=0.2)
    params = _params(resolution=64, clip_length=16, clip_stride=8)
    metrics, manifest, rejected, clips = _prepare(_data("bair", root.parent, str(ann)), params,
                                                  tmp_path / "out")
    # 6 readable trajectories × 2 clips (starts 0 and 8 of 30 frames); the broken ones rejected
    assert rejected == {
        "train/traj_2_to_3.tfrecords#1": rejected["train/traj_2_to_3.tfrecords#1"],
        "train/traj_4_to_5.tfrecords#1": rejected["train/traj_4_to_5.tfrecords#1"],
    }
    assert "checksum" in rejected["train/traj_2_to_3.tfrecords#1"]
    assert "the rest of the file is skipped" in rejected["train/traj_4_to_5.tfrecords#1"]
    assert len(manifest) == 12 and set(manifest.split) == {"train", "test"}
    assert sorted(manifest[manifest.split == "test"].video_id.unique()) == [
        "test-traj_0_to_1-000", "test-traj_0_to_1-001"]
    assert manifest.has_positions.all() and (manifest.fps == 10.0).all()
    with open(ann, newline="") as handle:
        hand = {(r["video"], int(r["frame"])): (float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)}
    for key, clip in clips.items():
        vid, first = clip["meta"]["video_id"], clip["meta"]["first_frame"]
        images, state = truth[vid]
        np.testing.assert_array_equal(clip["frames"], images[first : first + 16])  # aux1, raw
        camera = np.c_[state, np.ones(30)][first : first + 16] @ bair_camera().T
        for t in range(16):
            if (vid, first + t) in hand:  # a hand label (0.2 px noise) wins
                np.testing.assert_allclose(clip["positions"][t], hand[vid, first + t], atol=1e-3)
            else:  # the fitted camera, on a trajectory it may never have seen labelled
                assert np.abs(clip["positions"][t] - camera[t]).max() < 0.6, (key, t)
    assert clips["train-traj_0_to_1-000_0000"]["meta"]["source"] == "train/traj_0_to_1.tfrecords#0"
    assert len(bair_reader._LAST) <= 1  # decoded trajectories are not kept per listed video

    # the same positions follow the resize to 32×32: x' = (x + ½)·½ − ½
    small = _prepare(_data("bair", root.parent, str(ann)), _params(clip_length=16), tmp_path / "s")[3]
    big = clips["test-traj_0_to_1-001_0000"]
    np.testing.assert_allclose(small["test-traj_0_to_1-001_0000"]["positions"],
                               (big["positions"] + 0.5) * 0.5 - 0.5, atol=1e-4)


def test_bair_without_enough_annotations(bair, tmp_path):
    root, truth = bair
    listing = list_bair(_data("bair", root))
    assert all(v.stored.positions() is None for v in listing.videos[:2])
    ann = _annotations(tmp_path / "few.csv", truth, [("train-traj_0_to_1-000", f) for f in (0, 1, 2)])
    with pytest.raises(SourceError, match="at least 4 frames"):
        list_bair(_data("bair", root, str(ann)))
    (tmp_path / "typo.csv").write_text("video,frame,x,y\ntrain-traj_0_to_1-9,0,1,1\n")
    with pytest.raises(SourceError, match="no BAIR trajectory"):
        list_bair(_data("bair", root, str(tmp_path / "typo.csv")))


def test_fit_camera_recovers_an_affine_camera():
    rng = np.random.default_rng(1)
    state = rng.uniform(-0.2, 0.2, (12, 3))
    pixels = np.c_[state, np.ones(12)] @ bair_camera().T
    camera, rms = fit_camera(state, pixels)
    np.testing.assert_allclose(camera, bair_camera(), atol=1e-6)
    assert rms < 1e-6
    with pytest.raises(SourceError, match="not on one plane"):
        fit_camera(np.c_[state[:, :2], np.zeros(12)], pixels)  # all at z = 0: rank 3


# --------------------------------------------------------------------------- Kinetics-600


def test_kinetics600_csvs_and_clips(tmp_path):
    root = tmp_path / "kinetics600"
    rows = {  # csv → rows (label, youtube_id, start, end, split)
        "train.csv": [("abseiling", "aaaaaaaaaa1", 10, 20, "train"),
                      ("zumba", "-bbbbbbbbb2", 0, 10, "train"),
                      ("zumba", "ccccccccc_3", 5, 15, "train")],  # never downloaded
        "validate.csv": [("abseiling", "ddddddddd4", 30, 40, "validate")],
    }
    root.mkdir()
    for name, table in rows.items():
        with open(root / name, "w") as handle:
            handle.write("label,youtube_id,time_start,time_end,split\n")
            handle.writelines(f"{','.join(map(str, r))}\n" for r in table)
    (root / "test.csv").write_text("youtube_id,time_start,time_end,split\neeeeeeeee_5,1,11,test\n")
    videos = {"train/abseiling/aaaaaaaaaa1_000010_000020.mp4": 0, "train/zumba/-bbbbbbbbb2_000000_000010.mp4": 1,
              "val/ddddddddd4_000030_000040.mp4": 2, "test/eeeeeeeee_5_000001_000011.mp4": 3}
    for rel, seed in videos.items():
        write_mp4(root / rel, pattern_frames(10, 36, 48, seed), 25)
    _, manifest, rejected, clips = _prepare(_data("kinetics600", root), _params(fps=25.0),
                                            tmp_path / "out")
    assert rejected == {"train.csv: ccccccccc_3_000005_000015":
                        "not downloaded (no such video under data.path)"}
    by_video = manifest.set_index("video_id")
    assert by_video.loc["aaaaaaaaaa1_000010_000020"][["label", "label_id", "split"]].tolist() == \
        ["abseiling", 0, "train"]
    assert by_video.loc["-bbbbbbbbb2_000000_000010"][["label", "label_id"]].tolist() == ["zumba", 1]
    assert by_video.loc["ddddddddd4_000030_000040", "split"] == "val"
    assert by_video.loc["eeeeeeeee_5_000001_000011"][["label", "label_id", "split"]].tolist() == \
        ["", -1, "test"]
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["abseiling", "zumba"]
    clip = clips["ddddddddd4_000030_000040_0000"]
    expected = Crop.center(36, 48, 32).frames(pattern_frames(10, 36, 48, 2)[:8])
    assert clip["frames"].shape == (8, 32, 32, 3)  # H.264 at crf 15: close, not equal
    assert np.abs(clip["frames"].astype(int) - expected).mean() < 4


# --------------------------------------------------------------------------- UCF-101


def test_ucf101_official_lists_folds_and_groups(tmp_path):
    root = tmp_path / "ucf"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 HandstandPushups\n")
    files = []
    for cls, file_cls in (("ApplyEyeMakeup", "ApplyEyeMakeup"), ("HandstandPushups", "HandStandPushups")):
        for group in (1, 2, 8, 9, 10):
            files.append((cls, f"v_{file_cls}_g{group:02d}_c01"))
    for i, (cls, stem) in enumerate(files):
        write_avi(root / "UCF-101" / cls / f"{stem}.avi", pattern_frames(9, 24, 32, i))
    # fold 1: groups 1-2 test; fold 2: group 8 test. The lists write "HandstandPushups/v_Handstand…"
    listed = [(cls, stem.replace("HandStand", "Handstand")) for cls, stem in files]
    for fold, test_groups in ((1, ("g01", "g02")), (2, ("g08",))):
        train = [f"{c}/{s}.avi {1 + (c != 'ApplyEyeMakeup')}" for c, s in listed
                 if not any(g in s for g in test_groups)]
        test = [f"{c}/{s}.avi" for c, s in listed if any(g in s for g in test_groups)]
        (lists / f"trainlist0{fold}.txt").write_text("\r\n".join(train) + "\r\n")
        (lists / f"testlist0{fold}.txt").write_text("\r\n".join(test) + "\r\n")
    (lists / "testlist01.txt").write_text((lists / "testlist01.txt").read_text()
                                          + "ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi\r\n")

    _, manifest, rejected, clips = _prepare(_data("ucf101", root, val_fraction=0.7),
                                            _params(fps=25.0), tmp_path / "out")
    assert rejected == {"ApplyEyeMakeup/v_ApplyEyeMakeup_g03_c01.avi": "file not found under data.path"}
    assert len(manifest) == 10  # every file: 9 frames → one 8-frame clip each
    test = set(manifest[manifest.split == "test"].video_id)
    assert test == {s for _, s in files if "_g01_" in s or "_g02_" in s}
    group = manifest.video_id.str.extract(r"_(g\d\d)_")[0]
    train_groups, val_groups = set(group[manifest.split == "train"]), set(group[manifest.split == "val"])
    assert val_groups and train_groups and not train_groups & val_groups  # whole groups held out
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["ApplyEyeMakeup",
                                                                          "HandstandPushups"]
    hs = manifest[manifest.video_id.str.contains("HandStand")]
    assert (hs.label == "HandstandPushups").all() and (hs.label_id == 1).all()
    assert all(c["frames"].shape == (8, 32, 32, 3) for c in clips.values())

    fold2 = _prepare(_data("ucf101", root, fold=2), _params(fps=25.0), tmp_path / "out2")[1]
    assert set(fold2[fold2.split == "test"].video_id) == {s for _, s in files if "_g08_" in s}
    with pytest.raises(SourceError, match="data.fold"):
        prepare.run(_data("ucf101", root, fold=4), _params(fps=25.0), tmp_path / "out3",
                    RecordingLogger())


# --------------------------------------------------------------------------- AudioSet-Drums


def test_audioset_drums_segments_with_sound(tmp_path):
    root = tmp_path / "drums"
    header = ("# Segments csv created Sun Mar  5 10:54:31 2017\n"
              "# num_ytids=4, num_segs=4, num_unique_labels=3, num_positive_labels=5\n"
              "# YTID, start_seconds, end_seconds, positive_labels\n")
    (root).mkdir()
    (root / "balanced_train_segments.csv").write_text(
        header + '--drum00001, 30.000, 40.000, "/m/026t6,/m/04rlf"\n'
        'drumkit0002, 0.000, 10.000, "/m/02hnl"\n'
        'speech00003, 5.000, 15.000, "/m/09x0r"\n'  # not a drum clip, not downloaded: not ours
        'drum0000004, 10.000, 20.000, "/m/026t6"\n')  # a drum clip nobody downloaded
    (root / "eval_segments.csv").write_text(header + 'evaldrum005, 20.000, 30.000, "/m/026t6"\n')
    fps, rate = 10, 16000
    for name, freq in (("--drum00001_30", 300.0), ("clips/drumkit0002_000000_000010", 500.0),
                       ("evaldrum005", 700.0)):
        write_mp4(root / f"{name}.mp4", pattern_frames(12, 32, 32, int(freq)), fps,
                  audio=tone(12 / fps, rate, freq=freq), audio_rate=rate)
    params = _params(audio=True, audio_rate=rate)
    _, manifest, rejected, clips = _prepare(_data("audioset_drums", root), params, tmp_path / "out")
    assert rejected == {"balanced_train_segments.csv: drum0000004 10.000-20.000":
                        "not downloaded (no such clip under data.path)"}
    assert sorted(manifest.video_id) == ["drum00001_30", "drumkit0002_000000_000010", "evaldrum005"]
    assert manifest.set_index("video_id").loc["evaldrum005", "split"] == "test"
    assert manifest.has_audio.all() and (manifest.label_id == -1).all()
    for key, freq in (("drum00001_30_0000", 300.0), ("evaldrum005_0000", 700.0)):
        sound = clips[key]["audio"]
        assert len(sound) == 8 * rate // fps
        spectrum = np.abs(np.fft.rfft(sound[2000:]))
        peak = np.fft.rfftfreq(len(sound) - 2000, 1 / rate)[spectrum.argmax()]
        assert abs(peak - freq) < 20, (key, peak)  # each clip carries its own track

    curated = tmp_path / "curated" / "AudioSet_Dataset"
    for split, seed in (("train", 1), ("test", 2)):
        write_mp4(curated / split / "mp4" / f"{seed}.mp4", pattern_frames(8, 32, 32, seed), fps,
                  audio=tone(0.8, rate), audio_rate=rate)
    listing_manifest = _prepare(_data("audioset_drums", curated.parent), params, tmp_path / "o2")[1]
    assert dict(zip(listing_manifest.video_id, listing_manifest.split)) == {"1": "train", "2": "test"}


# --------------------------------------------------------------------------- Cityscapes


def _city_frames(root: Path, split: str, city: str, seq: int, first: int, count: int, seed: int):
    frames = pattern_frames(count, 32, 64, seed)  # 2:1 like Cityscapes' 2048×1024
    for i in range(count):
        write_png(root / "leftImg8bit_sequence" / split / city /
                  f"{city}_{seq:06d}_{first + i:06d}_leftImg8bit.png", frames[i])
    return frames


def _label_map(seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:64]
    return ((xx // 8 + yy // 8 + seed) % 34).astype(np.uint8)  # ids 0..33 like labelIds


def test_cityscapes_sequences_with_sparse_and_dense_layouts(tmp_path):
    root = tmp_path / "cityscapes"
    a = _city_frames(root, "train", "aachen", 0, 0, 30, 1)  # snippet 1: frames 0..29
    _city_frames(root, "train", "aachen", 0, 1000, 30, 2)  # same seq, a gap: snippet 2
    _city_frames(root, "val", "frankfurt", 0, 275, 30, 3)
    _city_frames(root, "test", "berlin", 0, 0, 30, 4)
    for split, city, frame, seed in (("train", "aachen", 19, 1), ("train", "aachen", 1019, 2),
                                     ("val", "frankfurt", 294, 3), ("test", "berlin", 19, 4)):
        write_png(root / "gtFine" / split / city / f"{city}_000000_{frame:06d}_gtFine_labelIds.png",
                  _label_map(seed))
        write_png(root / "gtFine" / split / city / f"{city}_000000_{frame:06d}_gtFine_color.png",
                  np.zeros((32, 64, 3), np.uint8))  # the other gtFine files are ignored
    # a segmentation model's map for one more frame of snippet 1, in a folder of the user's
    write_png(root / "predicted" / "aachen_000000_000003_pred_labelIds.png", _label_map(9))

    params = _params(clip_length=30, clip_stride=30, fps=17.0)  # Cityscapes' own rate
    _, manifest, rejected, clips = _prepare(_data("cityscapes", root), params, tmp_path / "out")
    assert rejected == {}
    assert dict(zip(manifest.video_id, manifest.split)) == {
        "aachen_000000_000000": "train", "aachen_000000_001000": "train",
        "frankfurt_000000_000275": "train", "berlin_000000_000000": "test"}
    assert manifest.has_layout.all() and (manifest.fps == 17.0).all()
    clip = clips["aachen_000000_000000_0000"]
    np.testing.assert_array_equal(clip["layout"][19], _label_map(1)[:, 16:48])  # 32×64 → centre
    np.testing.assert_array_equal(clip["layout"][3], _label_map(9)[:, 16:48])
    others = [t for t in range(30) if t not in (3, 19)]
    assert (clip["layout"][others] == NO_LAYOUT).all()
    np.testing.assert_array_equal(clip["frames"], a[:, :, 16:48])  # PNG is lossless, crop exact
    late = clips["frankfurt_000000_000275_0000"]["layout"]
    assert (late[19] == _label_map(3)[:, 16:48]).all() and (late[:19] == NO_LAYOUT).all()


# --------------------------------------------------------------------------- Weizmann


def test_weizmann_actions_person_disjoint(tmp_path):
    root = tmp_path / "weizmann"
    names = ["walk/daria_walk", "walk/lena_walk1", "walk/lena_walk2", "wave1/daria_wave1",
             "wave1/lena_wave1", "run/denis_run", "wave1/denis_wave1", "jack/denis_jack"]
    for i, name in enumerate(names):
        write_avi(root / f"{name}.avi", pattern_frames(9, 36, 44, i), fps=25)
    (root / "walk" / "README.txt").write_text("not a video")
    _, manifest, rejected, _ = _prepare(_data("weizmann", root, fold=2), _params(fps=25.0),
                                        tmp_path / "out")
    assert rejected == {}
    labels = dict(zip(manifest.video_id, manifest.label))
    assert labels == {"daria_walk": "walk", "lena_walk1": "walk", "lena_walk2": "walk",
                      "daria_wave1": "wave1", "lena_wave1": "wave1", "denis_run": "run",
                      "denis_wave1": "wave1", "denis_jack": "jack"}
    # subjects sorted: daria, denis, lena → fold 2 holds out denis
    assert set(manifest[manifest.split == "test"].video_id) == {"denis_run", "denis_wave1", "denis_jack"}
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["jack", "run", "walk", "wave1"]
    with pytest.raises(SourceError, match=r"data.fold: the held-out subject must be 1..3"):
        prepare.run(_data("weizmann", root, fold=4), _params(fps=25.0), tmp_path / "o2",
                    RecordingLogger())
