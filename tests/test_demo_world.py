"""The demo world (pipeline/data/demo_world.py), the mp4/GIF writers and the demo_data stage."""

from __future__ import annotations

import csv
import dataclasses
import json

import av
import numpy as np
import pytest
from PIL import Image

from pipeline.data.demo_scene import CLASSES, WorldConfig
from pipeline.data.demo_world import motion_sound, render_video
from pipeline.data.media_write import write_gif, write_mp4
from pipeline.params import DemoParams, ParamsError, load_section
from pipeline.tracking import RecordingLogger
from stages import demo_data

decord = pytest.importorskip("decord")

CFG = WorldConfig()  # the params.yaml default: 64 × 64, 32 frames, 10 fps, 16 kHz


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _decode_audio(path) -> np.ndarray:
    with av.open(str(path)) as container:
        assert container.streams.audio, f"{path}: no audio stream"
        return np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)


# --------------------------------------------------------------------------- writers


def _smooth_frames(t=12, h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [
        np.stack([128 + 90 * np.sin(xx / 6 + i / 3), 128 + 80 * np.cos(yy / 5), 100 + 5 * i + 0 * xx],
                 axis=-1)
        for i in range(t)
    ]
    return np.stack(frames).round().astype(np.uint8)


def test_write_mp4_round_trips_frames_and_audio(tmp_path):
    frames = _smooth_frames()
    rate = 16000
    n = int(len(frames) / 10 * rate)
    audio = (0.4 * np.sin(2 * np.pi * 330 * np.arange(n) / rate)).astype(np.float32)
    path = write_mp4(tmp_path / "a.mp4", frames, fps=10, audio=audio, audio_rate=rate)

    reader = decord.VideoReader(str(path))
    assert len(reader) == len(frames)
    decoded = reader.get_batch(list(range(len(reader)))).asnumpy()
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(float) - frames).mean() < 4.0

    sound = _decode_audio(path)[0]
    assert abs(len(sound) - n) <= 1024  # one AAC frame at most
    m = min(len(sound), n)
    assert np.corrcoef(sound[:m], audio[:m])[0, 1] > 0.95
    assert [p.name for p in tmp_path.iterdir()] == ["a.mp4"]  # no temp file left behind


def test_write_mp4_is_byte_deterministic_and_takes_grayscale(tmp_path):
    frames = _smooth_frames()
    a = write_mp4(tmp_path / "a.mp4", frames, fps=10).read_bytes()
    b = write_mp4(tmp_path / "b.mp4", frames, fps=10).read_bytes()
    assert a == b
    gray = write_mp4(tmp_path / "g.mp4", frames[..., 0], fps=10)
    decoded = decord.VideoReader(str(gray))[3].asnumpy()
    assert np.abs(decoded.astype(float) - frames[3, ..., :1]).mean() < 4.0
    with av.open(str(gray)) as container:
        assert not container.streams.audio


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((4, 31, 32, 3), np.uint8), "even frame size"),
        (np.zeros((4, 32, 32, 3), np.float32), "uint8"),
        (np.zeros((0, 32, 32, 3), np.uint8), "no frames"),
    ],
)
def test_write_mp4_rejects_bad_frames_naming_the_file(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message) as err:
        write_mp4(tmp_path / "bad.mp4", frames, fps=10)
    assert "bad.mp4" in str(err.value)
    assert not any(tmp_path.iterdir())


def test_write_gif(tmp_path):
    frames = _smooth_frames(t=5)
    path = write_gif(tmp_path / "s.gif", frames, fps=5, scale=2)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size == (2 * frames.shape[2], 2 * frames.shape[1])


# --------------------------------------------------------------------------- world


def test_render_is_deterministic_per_seed():
    a, b, c = render_video(CFG, 7), render_video(CFG, 7), render_video(CFG, 8)
    for field in ("frames", "audio", "positions", "layout", "object_positions"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.label == b.label
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.positions, c.positions)


def test_shapes_dtypes_and_audio_length():
    v = render_video(CFG, 3, label=0)
    t, r = CFG.num_frames, CFG.resolution
    assert v.frames.shape == (t, r, r, 3) and v.frames.dtype == np.uint8
    assert v.layout.shape == (t, r, r) and v.layout.dtype == np.uint8
    assert v.positions.shape == (t, 2) and v.positions.dtype == np.float32
    assert v.audio.dtype == np.float32 and v.audio.shape == (t * CFG.audio_rate // CFG.fps,)
    assert np.abs(v.audio).max() <= 1.0
    num_objects = v.object_positions.shape[1]
    assert CFG.min_objects <= num_objects <= CFG.max_objects
    assert set(np.unique(v.layout)) <= set(range(2 + num_objects))
    assert v.label_name == "circle"


def test_motion_is_visible_but_smooth():
    for seed in range(5):
        v = render_video(CFG, seed, label=seed % len(CLASSES))
        step = np.linalg.norm(np.diff(v.positions, axis=0), axis=1)
        assert 0.8 < step.mean() < 4.5, (seed, step.mean())  # a few pixels per frame
        assert step.max() < 7.0
        assert (v.positions >= 0).all() and (v.positions <= CFG.resolution - 1).all()
        assert not np.array_equal(v.frames[0], v.frames[-1])


def test_motion_patterns_shape_the_trajectory():
    for seed in range(4):
        h = render_video(CFG, seed, label=CLASSES.index("sweep_horizontal")).positions
        v = render_video(CFG, seed, label=CLASSES.index("sweep_vertical")).positions
        assert np.ptp(h[:, 0]) > 2 * np.ptp(h[:, 1])
        assert np.ptp(v[:, 1]) > 2 * np.ptp(v[:, 0])
        circle = render_video(CFG, seed, label=CLASSES.index("circle")).positions
        r = np.linalg.norm(circle - circle.mean(axis=0), axis=1)
        turn = np.unwrap(np.arctan2(*(circle - circle.mean(axis=0)).T[::-1]))
        assert abs(turn[-1] - turn[0]) > np.pi  # it goes round
        assert r.std() < 0.35 * r.mean()


def test_objects_move_only_when_pushed_and_along_the_push():
    pushed_total, along = 0.0, 0.0
    for seed in range(6):
        v = render_video(CFG, seed, label=seed % len(CLASSES))
        moves = np.linalg.norm(np.diff(v.object_positions, axis=0), axis=-1).max(axis=1)  # (T-1,)
        assert v.contacts.any(), f"seed {seed}: the gripper never touches an object"
        assert np.all(moves[~v.contacts[:-1]] < 1e-3)  # no push, no motion
        assert moves[v.contacts[:-1]].sum() > 1.0
        pushed_total += moves[v.contacts[:-1]].sum()
        grip = np.diff(v.positions, axis=0)[:, None]  # (T-1, 1, 2)
        obj = np.diff(v.object_positions, axis=0)  # (T-1, N, 2)
        along += float((grip * obj).sum())
    assert pushed_total > 10
    assert along > 0  # objects are displaced with the gripper's motion, not against it


def test_layout_agrees_with_rendering():
    for seed in range(4):
        v = render_video(CFG, seed)
        rgb = v.frames.astype(np.float32)
        sat = rgb.max(axis=-1) - rgb.min(axis=-1)
        gripper, objects, table = v.layout == 1, v.layout >= 2, v.layout == 0
        assert gripper.any() and objects.any()
        luma = _luma(v.frames)
        assert luma[gripper].mean() < 0.8 * luma[table].mean()  # a grey arm, a dark head
        assert np.median(sat[gripper]) < 30  # grey / black
        yy, xx = np.mgrid[0 : CFG.resolution, 0 : CFG.resolution]
        near = np.hypot(xx - v.positions[:, 0, None, None], yy - v.positions[:, 1, None, None])
        head = near < CFG.gripper_radius - 1
        assert (v.layout[head] == 1).all()
        assert luma[head].mean() < 0.4 * luma[table].mean()
        assert np.median(sat[objects]) > 80  # saturated colours
        for i in range(v.object_positions.shape[1]):  # each object's pixels sit around its centre
            mask = v.layout[0] == 2 + i
            if mask.sum() > 20:
                ys, xs = np.nonzero(mask)
                centre = v.object_positions[0, i]
                assert np.hypot(xs.mean() - centre[0], ys.mean() - centre[1]) < 3.0


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_ground_truth_position_lies_on_the_gripper_head(resolution):
    cfg = dataclasses.replace(CFG, resolution=resolution, num_frames=12)
    v = render_video(cfg, 11)
    for t, (x, y) in enumerate(v.positions):
        assert v.layout[t, int(round(y)), int(round(x))] == 1
        # the head is darkest at its centre: darker than the pixels a head-radius away
        ring = v.frames[t, int(round(y)), int(round(x) + int(cfg.gripper_radius * cfg.scale) + 2)]
        assert _luma(v.frames[t, int(round(y)), int(round(x))]) < _luma(ring)


def _per_frame_pitch_and_energy(audio, fps, rate):
    hop = rate // fps
    pitch, energy = [], []
    freqs = np.fft.rfftfreq(hop, 1 / rate)
    band = (freqs > 50) & (freqs < 400)
    for t in range(len(audio) // hop):
        window = audio[t * hop : (t + 1) * hop] * np.hanning(hop)
        spectrum = np.abs(np.fft.rfft(window))
        pitch.append(freqs[band][np.argmax(spectrum[band])])
        energy.append(np.sqrt(np.mean(window**2)))
    return np.array(pitch), np.array(energy)


def test_hum_pitch_and_energy_follow_speed():
    rate, fps = 16000, 10
    speed = np.concatenate([np.linspace(0, 4, 20), np.linspace(4, 0.5, 12)])  # px / frame
    audio = motion_sound(speed, np.array([], int), len(speed) * rate // fps, fps, rate)
    pitch, energy = _per_frame_pitch_and_energy(audio, fps, rate)
    assert np.corrcoef(pitch, speed)[0, 1] > 0.95
    assert np.corrcoef(energy, speed)[0, 1] > 0.95


def test_rendered_audio_tracks_gripper_speed_and_clicks_on_contact():
    pitches, speeds = [], []
    for label in range(len(CLASSES)):
        v = render_video(CFG, 5, label=label)
        pitch, _ = _per_frame_pitch_and_energy(v.audio, CFG.fps, CFG.audio_rate)
        # the hum's fundamental is 90 Hz + 40 Hz per pixel/frame (FFT bins are 10 Hz wide)
        assert np.median(np.abs(pitch - (90 + 40 * v.speed))) < 12
        pitches.append(pitch)
        speeds.append(v.speed)
    assert np.corrcoef(np.concatenate(pitches), np.concatenate(speeds))[0, 1] > 0.9
    # clicks are high-pitched (2–3 kHz): energy above 1.5 kHz marks the frames where a push starts
    hop = CFG.audio_rate // CFG.fps
    high = []
    for t in range(CFG.num_frames):
        spectrum = np.abs(np.fft.rfft(v.audio[t * hop : (t + 1) * hop] * np.hanning(hop)))
        high.append(spectrum[np.fft.rfftfreq(hop, 1 / CFG.audio_rate) > 1500].sum())
    high = np.array(high)
    assert len(v.click_times)
    window = (v.click_times * CFG.fps).astype(int)
    early = (v.click_times * CFG.fps) % 1 < 0.7  # the click's burst lies inside its window
    silent = np.ones(CFG.num_frames, bool)
    silent[window] = False
    silent[np.minimum(window + 1, CFG.num_frames - 1)] = False
    assert silent.sum() > 5
    assert high[window[early]].min() > 20 * np.median(high[silent])


def test_world_config_validates():
    with pytest.raises(ValueError, match="even"):
        WorldConfig(resolution=63)
    with pytest.raises(ValueError, match="max_objects"):
        WorldConfig(min_objects=3, max_objects=2)


# --------------------------------------------------------------------------- stage


def _tiny_params(**overrides) -> DemoParams:
    base = dict(
        seed=3, num_videos=6, test_fraction=0.2, val_fraction=0.2, resolution=32, fps=8,
        num_frames=8, min_objects=1, max_objects=2, audio_rate=8000, annotated_frames=10,
    )
    base.update(overrides)
    return DemoParams(**base)


def test_params_yaml_demo_section_builds():
    params = load_section("demo", "params.yaml")
    assert params.num_videos >= 1
    demo_data.world_config(params)  # valid world


def test_stage_writes_the_raw_demo_layout(tmp_path):
    params = _tiny_params()
    logger = RecordingLogger()
    metrics = demo_data.run(params, tmp_path, logger)

    with open(tmp_path / "videos.csv", newline="") as f:
        videos = list(csv.DictReader(f))
    assert len(videos) == 6 and list(videos[0]) == ["path", "label", "split"]
    assert {v["split"] for v in videos} <= {"train", "val", "test"}
    assert sum(v["split"] == "train" for v in videos) == 4 == metrics["num_train"]
    assert {v["label"] for v in videos} <= set(CLASSES)
    assert json.loads((tmp_path / "classes.json").read_text()) == list(CLASSES)

    for row in videos:
        path = tmp_path / row["path"]
        vid = path.stem
        reader = decord.VideoReader(str(path))
        assert len(reader) == params.num_frames
        assert reader[0].shape == (params.resolution, params.resolution, 3)
        sound = _decode_audio(path)[0]
        assert abs(len(sound) - params.num_frames / params.fps * params.audio_rate) <= 1024
        assert np.abs(sound).max() > 0.01
        layout = np.load(tmp_path / "layouts" / f"{vid}.npz")["layout"]
        assert layout.shape == (params.num_frames, params.resolution, params.resolution)
        positions = np.load(tmp_path / "ground_truth" / f"{vid}.npz")["positions"]
        assert positions.shape == (params.num_frames, 2) and positions.dtype == np.float32

    with open(tmp_path / "annotations.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == params.annotated_frames
    assert list(rows[0]) == ["video", "frame", "x", "y"]
    train = {tmp_path.joinpath(v["path"]).stem for v in videos if v["split"] == "train"}
    assert {r["video"] for r in rows} <= train
    assert len({(r["video"], r["frame"]) for r in rows}) == len(rows)
    for r in rows:
        gt = np.load(tmp_path / "ground_truth" / f"{r['video']}.npz")["positions"][int(r["frame"])]
        assert np.allclose([float(r["x"]), float(r["y"])], gt, atol=1e-3)

    assert logger.last("num_videos") == 6
    assert logger.last("num_annotations") == 10
    assert any(p.endswith(".gif") for p, _ in logger.artifacts)


def test_stage_is_byte_deterministic_and_removes_stale_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    demo_data.run(_tiny_params(num_videos=5), a, RecordingLogger())
    demo_data.run(_tiny_params(num_videos=5), b, RecordingLogger())
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # a rerun with fewer videos leaves no file of the earlier run behind
    fewer = _tiny_params(num_videos=3, annotated_frames=5, test_fraction=0.0, val_fraction=0.0)
    demo_data.run(fewer, a, RecordingLogger())
    assert len(list((a / "videos").iterdir())) == 3
    assert len(list((a / "layouts").iterdir())) == 3


def test_splits_and_labels_are_balanced_and_seeded():
    params = _tiny_params(num_videos=48, test_fraction=0.17, val_fraction=0.08)
    labels, splits = demo_data.assign_labels_and_splits(params)
    counts = np.bincount(labels, minlength=len(CLASSES))
    assert counts.max() - counts.min() <= 1
    assert (splits == "test").sum() == 8 and (splits == "val").sum() == 4
    again = demo_data.assign_labels_and_splits(params)
    assert np.array_equal(labels, again[0]) and np.array_equal(splits, again[1])
    other = demo_data.assign_labels_and_splits(dataclasses.replace(params, seed=4))
    assert not np.array_equal(splits, other[1])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (dict(annotated_frames=1000), "demo.annotated_frames"),
        (dict(test_fraction=0.6, val_fraction=0.5), "demo"),
        (dict(resolution=33), "demo"),
    ],
)
def test_stage_rejects_bad_params_before_writing(tmp_path, overrides, key):
    with pytest.raises(ParamsError, match=key):
        demo_data.run(_tiny_params(**overrides), tmp_path / "out", RecordingLogger())
    assert not (tmp_path / "out").exists()
