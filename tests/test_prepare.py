"""stages.prepare: decode → resize/crop → clips → shards, manifest, rejected.csv (and bad input)."""

from __future__ import annotations

import csv
import dataclasses
from fractions import Fraction
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest_media import (
    good_video,
    grayscale_video,
    pyav_video,
    six_channel_video,
    tone,
    truncated_copy,
)
from pipeline.data import clip_extraction
from pipeline.data import media
from pipeline.data import prepare_pool
from pipeline.data.media import read_video
from pipeline.params import DataParams, ParamsError, PrepareParams
from pipeline.data.shards import iter_clips
from pipeline.data.sources import list_folder, slugify, unique_ids
from pipeline.tracking import RecordingLogger
from stages import prepare
from pipeline.data.clip_extraction import Crop, PrepareError, clip_starts

CLASSES = ["left", "right"]
SPLIT_OF = {"v0": "train", "v1": "train", "v2": "val", "v3": "test"}


def _params(**change) -> PrepareParams:
    base = PrepareParams(
        resolution=32, fps=10.0, clip_length=8, clip_stride=4, frame_step=1, audio=True,
        audio_rate=8000,
        missing_audio="reject", shard_max_bytes=10**7, workers=1, decoder="auto",
    )  # fmt: skip
    return dataclasses.replace(base, **change)


def _data(source: str, path: Path, annotations: str = "") -> DataParams:
    return DataParams(source=source, path=str(path), annotations=annotations,
                      val_fraction=0.2, test_fraction=0.2, fold=1)  # fmt: skip


def _run(data: DataParams, params: PrepareParams, out: Path):
    logger = RecordingLogger()
    metrics = prepare.run(data, params, out, logger)
    manifest = pd.read_parquet(out / "manifest.parquet")
    with open(out / "rejected.csv", newline="", encoding="utf-8") as handle:
        rejected = list(csv.DictReader(handle))
    return metrics, manifest, rejected, logger


def _all_clips(out: Path) -> dict[str, dict]:
    return {s["key"]: s for split in ("train", "val", "test") for s in iter_clips(out, split)}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A raw-demo folder by hand: 4 videos of 20 frames 32×32 at 10 fps, layouts, annotations."""
    root = tmp_path_factory.mktemp("demo")
    rows, ann = [], []
    for i, vid in enumerate(SPLIT_OF):
        good_video(root / "videos" / f"{vid}.mp4", num_frames=20, size=(32, 32), seed=i)
        layout = np.zeros((20, 32, 32), np.uint8)
        layout[:, :, : 4 + i] = 1 + i % 2
        (root / "layouts").mkdir(exist_ok=True)
        np.savez_compressed(root / "layouts" / f"{vid}.npz", layout=layout)
        rows.append((f"videos/{vid}.mp4", CLASSES[i % 2], SPLIT_OF[vid]))
        ann.append((vid, 5, 3.0 + i, 7.5))
    with open(root / "videos.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    with open(root / "annotations.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("video", "frame", "x", "y"), *ann])
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root


@pytest.fixture(scope="module")
def demo_run(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    return out, *_run(_data("demo", demo_dir), _params(), out)


# --------------------------------------------------------------------------- units


def test_clip_starts():
    assert clip_starts(20, 8, 4) == [0, 4, 8, 12]
    assert clip_starts(7, 8, 4) == [] and clip_starts(8, 8, 100) == [0]


def test_crop_maps_pixel_centres():
    square = Crop.center(32, 32, 32)
    assert square.identity
    np.testing.assert_allclose(square.points(np.array([[3.0, 7.5]])), [[3.0, 7.5]])
    hd = Crop.center(720, 1280, 32)  # keeps columns 280..1000, scale 32 / 720
    out = hd.points(np.array([[639.5, 359.5], [280.0 - 0.5 + 22.5 / 2, -0.5]]))
    np.testing.assert_allclose(out, [[15.5, 15.5], [0.0, -0.5]], atol=1e-4)


def test_crop_resizes_layouts_without_new_classes():
    layout = np.zeros((2, 720, 1280), np.uint8)
    layout[:, :, 280:640] = 3
    layout[:, :, 640:1000] = 7
    out = Crop.center(720, 1280, 32).layouts(layout)
    assert out.shape == (2, 32, 32) and set(np.unique(out)) == {3, 7}
    assert (out[:, :, :16] == 3).all() and (out[:, :, 16:] == 7).all()


# --------------------------------------------------------------------------- demo source


def test_demo_source_makes_every_clip(demo_dir, demo_run):
    out, metrics, manifest, rejected, logger = demo_run
    assert rejected == []
    assert (out / "rejected.csv").read_text().startswith("source,reason")
    assert len(manifest) == 16 and metrics["num_clips"] == 16  # 4 videos × starts 0, 4, 8, 12
    assert metrics["clips_train"] == 8 and metrics["clips_val"] == 4 and metrics["clips_test"] == 4
    assert logger.metrics["num_rejected"][-1][1] == 0
    assert json.loads((out / "classes.json").read_text()) == CLASSES
    clips = _all_clips(out)
    assert set(clips) == set(manifest["key"])
    for row in manifest.itertuples():  # the manifest points at the right shard
        assert row.key in {s["key"] for s in iter_clips(out / row.shard)}
        assert row.split == SPLIT_OF[row.video_id] and row.label == clips[row.key]["meta"]["label"]

    decoded = read_video(demo_dir / "videos" / "v2.mp4", audio=True, audio_rate=8000)
    clip = clips["v2_0001"]  # frames 4..11
    np.testing.assert_array_equal(clip["frames"], decoded.frames[4:12])
    # the audio is read by PyAV while probing (media.probe_with_audio): exactly its samples, and
    # decord's AudioReader agrees up to float rounding of the down-mix
    by_av = media.read_audio(demo_dir / "videos" / "v2.mp4", audio_rate=8000, backend="av")
    np.testing.assert_array_equal(clip["audio"], by_av[3200:3200 + 6400])  # 0.4 s .. 1.2 s
    np.testing.assert_allclose(clip["audio"], decoded.audio[3200:3200 + 6400], atol=1e-5)
    assert clip["meta"] == {
        "video_id": "v2", "source": str(demo_dir / "videos" / "v2.mp4"), "split": "val",
        "label": "left", "label_id": 0, "fps": 10.0, "first_frame": 4, "frame_step": 1,
        "source_fps": 10.0, "source_frames": [4, 5, 6, 7, 8, 9, 10, 11],
        "audio_rate": 8000, "audio_silent": False, "resolution": 32,
    }  # fmt: skip
    positions = clip["positions"]  # annotated frame 5 is the clip's frame 1
    np.testing.assert_allclose(positions[1], [5.0, 7.5])
    assert np.isnan(np.delete(positions, 1, axis=0)).all()
    assert manifest.set_index("key").loc["v2_0001", "has_positions"]
    assert not manifest.set_index("key").loc["v2_0003", "has_positions"]
    assert (clip["layout"][:, :, :6] == 1).all() and (clip["layout"][:, :, 6:] == 0).all()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_workers_and_reruns_give_identical_output(demo_dir, demo_run, tmp_path, monkeypatch):
    out, _, manifest, _, _ = demo_run
    small = tmp_path / "clips"
    _run(_data("demo", demo_dir), _params(shard_max_bytes=60_000), small)  # many tiny shards
    assert len(list((small / "train").glob("*.tar"))) > 1
    real, parent, here = clip_extraction.process_video, os.getpid(), []

    def counted(video, params):  # the list only grows in this process (children are forked)
        if os.getpid() == parent:
            here.append(video.video_id)
        return real(video, params)

    monkeypatch.setattr(prepare_pool, "process_video", counted)
    # this process and 1 or 2 children writing clips in place, shards filling and closing while
    # others are written
    for workers in (2, 3):
        here.clear()
        _run(_data("demo", demo_dir), _params(shard_max_bytes=60_000, workers=workers),
             tmp_path / f"w{workers}")  # fmt: skip
        assert _tree(tmp_path / f"w{workers}") == _tree(small)
        assert 1 <= len(here) < len(SPLIT_OF), here  # the parent decoded some, not all
    _, again, _, _ = _run(_data("demo", demo_dir), _params(workers=2), small)  # same folder
    pd.testing.assert_frame_equal(again, manifest)
    for split in ("train", "val", "test"):  # stale shards of the first run are gone
        names = sorted(p.name for p in (small / split).iterdir())
        assert names == sorted(p.name for p in (out / split).iterdir())
        for name in names:
            assert (small / split / name).read_bytes() == (out / split / name).read_bytes()


def test_long_videos_decoded_in_chunks_give_the_same_clips(demo_dir, demo_run, tmp_path, monkeypatch):
    out = demo_run[0]
    # frames already at the output size come in one batch (nothing to gather), others in chunks
    assert clip_extraction._batch_frames(200, Crop.center(32, 32, 32)) == 200
    assert clip_extraction._batch_frames(200, Crop.center(48, 64, 32)) == clip_extraction._CHUNK
    monkeypatch.setattr(clip_extraction, "_batch_frames", lambda expected, crop: 7)  # 20 frames: 7, 7, 6
    _run(_data("demo", demo_dir), _params(), tmp_path)
    assert _tree(tmp_path) == _tree(out)
    chunks = [np.full((n, 2, 2, 3), i, np.uint8) for i, n in enumerate((3, 3, 2))]
    for expected in (8, 5, 20):  # the container's count right, under-counted, over-counted
        gathered = clip_extraction._gather(iter(chunks), expected)
        np.testing.assert_array_equal(gathered, np.concatenate(chunks))


@pytest.mark.skipif(prepare_pool._start_method() != "fork", reason="the patch must reach the workers")
@pytest.mark.parametrize("failure", ["crash", "bug"])
def test_a_failing_decoding_process_names_the_video(demo_dir, tmp_path, monkeypatch, failure):
    real, parent = clip_extraction.process_video, os.getpid()

    def flaky(video, params):  # fails in the forked decoding process (the parent decodes too)
        if os.getpid() != parent:
            if failure == "crash":
                os._exit(3)  # as a segfault in a decoder would
            raise RuntimeError("boom")
        return real(video, params)

    monkeypatch.setattr(prepare_pool, "process_video", flaky)
    with pytest.raises(PrepareError) as err:
        _run(_data("demo", demo_dir), _params(workers=2), tmp_path)
    message = str(err.value)
    assert "\n" not in message and re.search(r"/v[0-3]\.mp4", message)
    assert ("crashed" in message) if failure == "crash" else ("RuntimeError: boom" in message)
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written shard left behind


@pytest.mark.skipif(prepare_pool._start_method() != "fork", reason="fork only")
def test_decoding_process_ends_when_the_parent_dies(tmp_path):
    """The parent decodes too, so a decoder crash can kill it: its child must not wait forever."""
    script = tmp_path / "die.py"
    script.write_text(
        "import os\n"
        "from pipeline.params import PrepareParams\n"
        "from pipeline.data import prepare_pool\n"
        f"pool = prepare_pool._Pool(PrepareParams(**{dataclasses.asdict(_params(workers=2))!r}))\n"
        f"open({str(tmp_path / 'pid')!r}, 'w').write(str(pool.workers[0].process.pid))\n"
        "os._exit(3)\n"
    )  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, str(script)], stdout=subprocess.DEVNULL,  # the child
                          stderr=subprocess.DEVNULL, env=env, cwd=root, timeout=60)  # holds pipes
    assert done.returncode == 3
    child = int((tmp_path / "pid").read_text())
    for _ in range(100):  # the child is not ours to wait for: poll until it is gone (or a zombie)
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    os.kill(child, 9)
    pytest.fail("the decoding process outlived its parent by 5 s")


@pytest.mark.skipif("decord" not in media.available_backends(), reason="no decord")
def test_pyav_decoder_gives_the_same_clips(demo_dir, demo_run, tmp_path):
    out, _, manifest, _, _ = demo_run
    _, av_manifest, _, _ = _run(_data("demo", demo_dir), _params(decoder="av"), tmp_path)
    assert list(av_manifest["key"]) == list(manifest["key"])
    ref, got = _all_clips(out), _all_clips(tmp_path)
    for key in ref:
        diff = np.abs(ref[key]["frames"].astype(int) - got[key]["frames"].astype(int)).mean()
        assert diff < 0.5
        np.testing.assert_allclose(ref[key]["audio"], got[key]["audio"], atol=1e-4)


def test_frame_step_subsamples_frames_and_keeps_audio_span(demo_dir, tmp_path):
    params = _params(frame_step=2, clip_length=4, clip_stride=2)
    _, manifest, _, _ = _run(_data("demo", demo_dir), params, tmp_path)
    rows = manifest[manifest.video_id == "v0"]
    assert list(rows.first_frame) == [0, 4, 8, 12] and set(rows.fps) == {5.0}
    decoded = read_video(demo_dir / "videos" / "v0.mp4", audio=True, audio_rate=8000)
    clip = _all_clips(tmp_path)["v0_0001"]
    np.testing.assert_array_equal(clip["frames"], decoded.frames[4:12:2])
    by_av = media.read_audio(demo_dir / "videos" / "v0.mp4", audio_rate=8000, backend="av")
    np.testing.assert_array_equal(clip["audio"], by_av[3200:3200 + 6400])
    assert np.isnan(clip["positions"]).all()  # annotated frame 5 is not a kept frame


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A manifest mixing good and bad inputs; returns (csv path, expected reason word or None)."""
    root = tmp_path_factory.mktemp("messy")
    v = root / "videos"
    good_video(v / "good.mp4", num_frames=20, size=(32, 32))
    (v / "zero.mp4").write_bytes(b"")
    truncated_copy(v / "good.mp4", v / "truncated.mp4", 0.7)
    (v / "text.mp4").write_text("this is not a video\n")
    good_video(v / "one_frame.mp4", num_frames=1, size=(32, 32))
    good_video(v / "short.mp4", num_frames=5, size=(32, 32))
    good_video(v / "no_audio.mp4", num_frames=12, size=(32, 32), audio=False)
    six_channel_video(v / "six_channels.mp4", num_frames=12, size=(32, 48))
    grayscale_video(v / "gray.mp4", num_frames=12, size=(32, 32))
    hd = np.zeros((8, 720, 1280, 3), np.uint8)  # red | green | blue thirds; the crop keeps green
    hd[:, :, :280, 0], hd[:, :, 280:1000, 1], hd[:, :, 1000:, 2] = 255, 255, 255
    pyav_video(v / "hd.mp4", hd, audio=tone(0.8, 16000)[None])
    good_video(v / "été à la plage" / "chat noir 猫.mp4", num_frames=12, size=(32, 32))
    expected = {
        "videos/good.mp4": None,
        "videos/zero.mp4": "empty file",
        "videos/truncated.mp4": "truncated",
        "videos/text.mp4": "not a video",
        "videos/one_frame.mp4": "too short: 1 frame at 10 fps,",
        "videos/short.mp4": "too short: 5 frames",
        "videos/no_audio.mp4": "no audio track",
        "videos/six_channels.mp4": None,
        "videos/gray.mp4": None,
        "videos/hd.mp4": None,
        "videos/été à la plage/chat noir 猫.mp4": None,
        "videos/deleted.mp4": "file not found",
    }
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label", "split"))
        for i, path in enumerate(expected):
            writer.writerow((path, "a" if i % 2 else "b", "train" if i % 3 else "test"))
    return manifest, expected


@pytest.mark.parametrize("missing_audio", ["reject", "silence"])
def test_bad_inputs_are_rejected_and_good_clips_kept(messy, tmp_path, missing_audio):
    manifest_csv, expected = messy
    expected = dict(expected)
    if missing_audio == "silence":
        expected["videos/no_audio.mp4"] = None
    metrics, manifest, rejected, _ = _run(
        _data("manifest", manifest_csv), _params(missing_audio=missing_audio), tmp_path
    )
    reasons = {row["source"]: row["reason"] for row in rejected}
    assert set(reasons) == {k for k, v in expected.items() if v}  # one row per bad input
    for source, reason in reasons.items():
        assert expected[source] in reason and "\n" not in reason
    kept = {k for k, v in expected.items() if v is None}
    assert set(manifest["source"]) == kept and metrics["num_rejected"] == len(reasons)
    clips = _all_clips(tmp_path)
    assert set(clips) == set(manifest["key"])  # every valid clip landed in a shard
    for key, clip in clips.items():
        assert clip["frames"].shape == (8, 32, 32, 3) and clip["audio"].shape == (6400,)
        assert re.fullmatch(r"[A-Za-z0-9_-]+_\d{4}", key)
    by_source = {row.source: row.key for row in manifest.itertuples()}
    hd = clips[by_source["videos/hd.mp4"]]["frames"]
    assert (hd[..., 1] > 200).all() and (hd[..., [0, 2]] < 60).all()  # center crop: all green
    gray = clips[by_source["videos/gray.mp4"]]["frames"]
    assert (gray[..., 0] == gray[..., 2]).all()
    six = clips[by_source["videos/six_channels.mp4"]]["audio"]
    assert six.std() > 0.05  # the 5.1 track was mixed down, not dropped
    unicode_clip = clips[by_source["videos/été à la plage/chat noir 猫.mp4"]]
    assert unicode_clip["meta"]["source"] == "videos/été à la plage/chat noir 猫.mp4"
    if missing_audio == "silence":
        silent = manifest[manifest.source == "videos/no_audio.mp4"]
        assert len(silent) == 2 and not silent.has_audio.any()  # 12 frames: clips at 0 and 4
        for key in silent.key:
            assert (clips[key]["audio"] == 0).all() and clips[key]["meta"]["audio_silent"]


def test_nothing_usable_fails_after_writing_rejected_csv(messy, tmp_path):
    manifest_csv, _ = messy
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\n" + "videos/zero.mp4,a,train\n".replace("videos", str(manifest_csv.parent / "videos")))
    with pytest.raises(PrepareError, match="no clip could be made"):
        prepare.run(_data("manifest", bad), _params(), tmp_path / "out", RecordingLogger())
    assert "empty file" in (tmp_path / "out" / "rejected.csv").read_text()


# --------------------------------------------------------------------------- folder source


def test_folder_source_labels_splits_and_safe_ids(tmp_path):
    root = tmp_path / "my videos"
    names = ["cats/été 1.mp4", "cats/été_1.mp4", "dogs/猫.mp4", "dogs/a.b.c.mp4"]
    for name in names:
        good_video(root / name, num_frames=10, size=(32, 32), audio=False)
    (root / "dogs" / "notes.txt").write_text("ignored: not matched by the glob")
    pattern = str(root / "**" / "*.mp4")
    listing = list_folder(pattern)
    assert [v.label for v in listing.videos] == ["cats", "cats", "dogs", "dogs"]
    assert {v.split for v in listing.videos} == {""}  # drawn by prepare, among usable videos
    assert sorted(v.split_key for v in listing.videos) == sorted(names)
    ids = [v.video_id for v in listing.videos]
    assert len(set(ids)) == 4 and all(re.fullmatch(r"[A-Za-z0-9_-]+", i) for i in ids)
    assert ids[2] == "dogs_a_b_c" and ids[0] != ids[1]  # "été 1" and "été_1" both slug to ete_1
    _, manifest, rejected, _ = _run(_data("folder", pattern), _params(audio=False), tmp_path / "out")
    assert rejected == [] and len(manifest) == 4 * 1  # 10 frames → one clip of 8 each
    assert set(manifest.split) == {"train", "val", "test"}  # 4 videos: every split gets one
    again = prepare.run(_data("folder", pattern), _params(audio=False), tmp_path / "again",
                        RecordingLogger())
    assert again["num_clips"] == 4
    redo = pd.read_parquet(tmp_path / "again" / "manifest.parquet")
    assert dict(zip(redo.key, redo.split)) == dict(zip(manifest.key, manifest.split))  # stable
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["cats", "dogs"]
    assert "audio" not in next(iter(_all_clips(tmp_path / "out").values()))


def test_slugs():
    assert slugify("vidéos d'été/chat noir 猫") == "videos_d_ete_chat_noir"
    assert unique_ids(["猫", "犬"])[0].startswith("video-") and len(set(unique_ids(["猫", "犬"]))) == 2


# --------------------------------------------------------------------------- CLI


def _yaml(path: Path, demo: Path, **prepare_change) -> Path:
    import yaml

    p = dataclasses.asdict(_params(**prepare_change))
    p.update(prepare_change)
    text = yaml.safe_dump({
        "data": dataclasses.asdict(_data("demo", demo)),
        "prepare": p,
        "tracking": {"uri": f"sqlite:///{path.parent / 'mlflow.db'}", "experiment": "test"},
    })  # fmt: skip
    path.write_text(text)
    return path


def test_main_runs_and_reports_param_typos(demo_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CCVS_TRACKING", "off")
    params = _yaml(tmp_path / "params.yaml", demo_dir)
    prepare.main(["--params", str(params), "--out", str(tmp_path / "clips")])
    assert "16 clips" in capsys.readouterr().out
    typo = params.read_text().replace("clip_length:", "clip_lenght:")
    (tmp_path / "typo.yaml").write_text(typo)
    with pytest.raises(SystemExit, match=r"prepare\.clip_lenght: unknown key"):
        prepare.main(["--params", str(tmp_path / "typo.yaml"), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match=r"prepare\.clip_length: must be >= 1"):
        prepare.main(["--params", str(_yaml(tmp_path / "p0.yaml", demo_dir, clip_length=0)),
                      "--out", str(tmp_path / "x")])


# --------------------------------------------------------------------------- a folder of ordinary videos


@pytest.fixture(scope="module")
def own_folder(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    from own_videos import write_folder

    root = tmp_path_factory.mktemp("own") / "my videos"
    return root, write_folder(root, seconds=2.0)


def test_mixed_rates_sizes_and_tracks_become_one_rate(own_folder, tmp_path):
    root, expected = own_folder
    params = _params(fps=10.0, audio_rate=16000, missing_audio="silence", workers=2)
    metrics, manifest, rejected, _ = _run(_data("folder", root), params, tmp_path)
    reasons = {Path(r["source"]).relative_to(root).as_posix(): r["reason"] for r in rejected}
    assert {k: v for k, v in expected.items() if v} == {k: w for k, w in expected.items()
                                                        if k in reasons and w in reasons[k]}
    usable = {k for k, v in expected.items() if v is None}
    assert {Path(s).relative_to(root).as_posix() for s in manifest.source} == usable
    assert set(manifest.fps) == {10.0} and set(manifest.split) == {"train", "val", "test"}
    from own_videos import VIDEOS

    clips = _all_clips(tmp_path)
    for row in manifest.itertuples():
        clip = clips[row.key]
        rel = Path(row.source).relative_to(root).as_posix()
        fps, _, _, channels, _, vfr = VIDEOS[rel]
        assert clip["frames"].shape == (8, 32, 32, 3) and clip["audio"].shape == (12800,)
        assert bool(row.has_audio) == bool(channels)
        shown = clip["meta"]["source_frames"]
        if not vfr:  # a tick every 0.1 s: the source frame nearest in time
            ticks = (row.first_frame + np.arange(8)) / 10
            assert np.all(np.abs(np.asarray(shown) / float(fps) - ticks) <= 0.5 / float(fps) + 1e-6)
    # the 29.97 fps portrait and the 25 fps landscape were both cut to 0.8 s clips of 10 fps
    portrait = manifest[manifest.source.str.contains("29.97")]
    assert len(portrait) == 4 and not portrait.has_audio.any()  # 2 s: clips at 0, 0.4, 0.8, 1.2 s


def test_params_no_video_can_satisfy_stop_prepare_naming_them(own_folder, tmp_path):
    root, _ = own_folder
    with pytest.raises(PrepareError, match=r"prepare\.clip_length: 40 frames .* the longest video "
                                           r"has 20 \(2\.00 s\); lower prepare\.clip_length"):
        prepare.run(_data("folder", root), _params(clip_length=40, audio=False), tmp_path / "a",
                    RecordingLogger())
    assert "too short" in (tmp_path / "a" / "rejected.csv").read_text()
    with pytest.raises(ParamsError, match=r"prepare\.fps: 30 fps with prepare\.audio_rate 16000 "
                                          r"gives 533\.33 audio samples per frame.* one of .*\b10\b"):
        prepare.check_params(_params(fps=30.0, audio_rate=16000))
    prepare.check_params(_params(fps=30.0, audio_rate=48000))  # 1600 a frame: fine
    prepare.check_params(_params(fps=30.0, audio=False))  # no audio: any rate


def test_too_few_usable_videos_name_the_counts(own_folder, tmp_path):
    root, _ = own_folder
    pattern = str(root / "street" / "*.mp4")  # 2 usable videos (+ a too-short one)
    with pytest.raises(PrepareError, match=r"2 usable video\(s\).*needs at least one video"):
        prepare.run(_data("folder", pattern), _params(audio=False), tmp_path, RecordingLogger())
    assert "too short" in (tmp_path / "rejected.csv").read_text()  # why the third one is out


def test_listing_file_changes_only_with_the_videos(own_folder, tmp_path):
    from pipeline.data.sources import SourceError
    from stages import listing

    root, _ = own_folder
    data = _data("folder", root)
    out = tmp_path / "listing.json"
    listing.run(data, out, RecordingLogger())
    first = out.read_bytes()
    listing.run(data, out, RecordingLogger())
    assert out.read_bytes() == first  # nothing changed: DVC keeps prepare cached
    (root / "street" / "notes.txt").write_text("edited notes\n")  # not a video
    listing.run(data, out, RecordingLogger())
    assert out.read_bytes() == first
    # prepare lists again and checks it sees what the listing says
    metrics = prepare.run(data, _params(audio=False), tmp_path / "clips", RecordingLogger(),
                          listing=out)
    assert metrics["num_clips"] > 0
    video = next(root.rglob("*.mov"))
    stamp = video.stat()
    os.utime(video, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # touched after listing
    try:
        with pytest.raises(SourceError, match=r"inputs changed since the listing stage ran "
                                              r"\(0 added, 0 removed, 1 changed; e\.g\. .*\.mov\)"):
            prepare.run(data, _params(audio=False), tmp_path / "again", RecordingLogger(),
                        listing=out)
        listing.run(data, out, RecordingLogger())
        assert out.read_bytes() != first  # touched: the listing changes, DVC reruns prepare
    finally:
        os.utime(video, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


def test_demo_data_renders_nothing_for_another_source(tmp_path, capsys, monkeypatch):
    import yaml

    from stages import demo_data

    monkeypatch.setenv("CCVS_TRACKING", "off")
    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["source"] = "folder"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "raw"
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "demo_0000.mp4").write_bytes(b"from an earlier demo run")
    demo_data.main(["--params", str(tmp_path / "params.yaml"), "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["README.txt"]
    assert "'folder'" in (out / "README.txt").read_text()
    assert "not rendered" in capsys.readouterr().out


def test_annotations_follow_their_source_frame_through_resampling(tmp_path):
    from own_videos import encode, scene

    video = encode(tmp_path / "v" / "thirty.mp4", scene(30, 32, 64, seed=3), Fraction(30))
    encode(tmp_path / "v" / "other.mp4", scene(30, 32, 64, seed=4), Fraction(30))
    (tmp_path / "manifest.csv").write_text(
        "path,label,split\nv/thirty.mp4,a,train\nv/other.mp4,a,test\n")
    ann = tmp_path / "ann.csv"  # source frames at 30 fps: 6 is shown at 10 fps (as frame 2), 7 not
    ann.write_text("video,frame,x,y\nv_thirty,6,10.0,20.0\nv_thirty,7,11.0,21.0\n")
    data = _data("manifest", tmp_path / "manifest.csv", str(ann))
    params = _params(audio=False, resolution=32, clip_length=4, clip_stride=4)
    _, manifest, _, _ = _run(data, params, tmp_path / "out")
    clip = _all_clips(tmp_path / "out")["v_thirty_0000"]
    assert clip["meta"]["source_frames"] == [0, 3, 6, 9] and video.exists()
    pos = clip["positions"]
    assert np.isnan(pos[[0, 1, 3]]).all() and np.isfinite(pos[2]).all()
    crop = Crop.center(32, 64, 32)  # 64×32 → centre 32×32 square: x shifts by 16
    np.testing.assert_allclose(pos[2], crop.points(np.array([[10.0, 20.0]]))[0])


def test_stored_videos_are_read_with_their_own_step_or_picked_at_another_rate():
    class Stored:  # a StoredVideo that reads its frames in order only; frame i is filled with i
        calls: list[int] = []

        def iter_frames(self, frame_step, chunk_size):
            self.calls.append(frame_step)
            frames = np.arange(30, dtype=np.uint8)[::frame_step, None, None, None]
            frames = np.broadcast_to(frames, (len(frames), 2, 2, 3))
            for i in range(0, len(frames), chunk_size):
                yield frames[i:i + chunk_size]

    stored = Stored()
    own = np.arange(0, 30, 3)  # the dataset's rate is a multiple of prepare.fps: its own step
    got = np.concatenate(list(clip_extraction._stored_frames(stored, own, 4)))
    assert stored.calls == [3] and got[:, 0, 0, 0].tolist() == own.tolist()
    ticks = clip_extraction.resample_indices(np.arange(30) / 17, 10)  # 17 Hz → 10 fps
    got = np.concatenate(list(clip_extraction._stored_frames(stored, ticks, 4)))
    assert stored.calls == [3, 1] and got[:, 0, 0, 0].tolist() == ticks.tolist()
    doubled = np.repeat(np.arange(5), 2)  # a slower source: every frame shown twice
    got = np.concatenate(list(clip_extraction._stored_frames(stored, doubled, 3)))
    assert got[:, 0, 0, 0].tolist() == doubled.tolist()
