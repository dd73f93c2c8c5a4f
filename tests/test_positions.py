"""Position estimator (ccvs_models/position.py) and the ``positions`` stage (stages/positions.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ccvs_models.position import (
    PositionEstimator,
    PositionEstimatorConfig,
    pixels_to_unit,
    soft_argmax,
    unit_to_pixels,
)
from pipeline.training import positions as position_training
from pipeline.training.checkpoint import load_model
from pipeline.params import PositionsParams, load_section
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.data.shards import iter_clips
from pipeline.tracking import RecordingLogger
from pipeline.training.config import LoopConfig
from stages import positions as stage

SIZE = 32  # synthetic frames are SIZE × SIZE
TINY = PositionEstimatorConfig(stem_channels=8, stem_stride=2, channels=(8, 16), refine_blocks=0)


def disc_frame(x: float, y: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """A light, slightly noisy background with a dark anti-aliased disc (radius 3) at (x, y)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cover = np.clip(3.5 - np.hypot(xx - x, yy - y), 0, 1)[..., None]
    base = np.full((SIZE, SIZE, 3), 200.0, np.float32)
    if rng is not None:
        base += rng.normal(0, 4, base.shape)
    return np.clip(base * (1 - cover) + 30 * cover, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- model


def test_pixel_unit_round_trip_and_frame_edges():
    xy = torch.tensor([[-0.5, -0.5], [63.5, 31.5], [10.25, 3.0]])
    uv = pixels_to_unit(xy, 64, 32)
    assert torch.allclose(uv[0], torch.tensor([-1.0, -1.0]))
    assert torch.allclose(uv[1], torch.tensor([1.0, 1.0]))
    assert torch.allclose(unit_to_pixels(uv, 64, 32), xy)


def test_soft_argmax_peak_gives_that_cells_centre():
    logits = torch.full((2, 4, 8), -1e4)
    logits[0, 1, 5] = 0.0  # row 1, column 5
    logits[1, 3, 0] = 0.0
    uv, p = soft_argmax(logits)
    assert torch.allclose(p.sum(dim=(1, 2)), torch.ones(2))
    # 8 columns over a 64-wide frame: column 5 is pixels 40..47, centre 43.5; 4 rows over 32
    xy = unit_to_pixels(uv, 64, 32)
    assert torch.allclose(xy, torch.tensor([[43.5, 11.5], [3.5, 27.5]]), atol=1e-4)
    # a saturated offset moves the point by one cell (8 px in x here); zero offsets change nothing
    offsets = torch.zeros(2, 2, 4, 8)
    assert torch.allclose(soft_argmax(logits, offsets)[0], uv)
    offsets[0, 0, 1, 5] = 50.0
    assert torch.allclose(unit_to_pixels(soft_argmax(logits, offsets)[0], 64, 32)[0],
                          torch.tensor([51.5, 11.5]), atol=1e-4)
    # two equal peaks → their midpoint
    logits = torch.full((1, 4, 4), -1e4)
    logits[0, 0, 0] = logits[0, 0, 2] = 0.0
    assert torch.allclose(soft_argmax(logits)[0], torch.tensor([[-0.25, -0.75]]))  # columns 0, 2: (−0.75 + 0.25) / 2


@pytest.mark.parametrize("head", ["soft_argmax", "linear"])
def test_forward_shapes_loss_and_bad_size(head):
    model = PositionEstimator(dataclasses.replace(TINY, head=head))
    x = torch.rand(3, 3, SIZE, SIZE) * 2 - 1
    target = torch.tensor([[4.0, 5.0], [20.0, 8.0], [31.0, 0.0]])
    out = model(x, target)
    assert out.xy.shape == (3, 2) and out.uv.shape == (3, 2)
    assert (out.heatmap is not None) == (head == "soft_argmax")
    expected = ((out.uv - pixels_to_unit(target, SIZE, SIZE)) ** 2).mean()
    assert torch.allclose(out.loss, expected)
    assert model(x).loss is None
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.zeros(1, 3, 30, 30))


def test_estimator_overfits_a_handful_of_frames_to_subpixel_error():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    xy = rng.uniform(5, SIZE - 6, (6, 2)).astype(np.float32)
    frames = np.stack([disc_frame(x, y) for x, y in xy])
    x, target = position_training.to_input(frames), torch.from_numpy(xy)
    model = PositionEstimator(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = (model(x).xy - target).norm(dim=1).mean().item()
    for _ in range(60):
        loss = model(x, target).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    err = (model(x).xy - target).norm(dim=1)
    assert before > 3.0  # the task is not trivially solved at initialisation
    assert err.max().item() < 0.5 and err.mean().item() < 0.3, err


# --------------------------------------------------------------------------- stage

T_VIDEO, CLIP, STRIDE = 12, 8, 4  # clips start at frames 0 and 4: frames 4..7 are in both
ANNOTATED = (1, 5, 6, 10)  # frames of each train video with a position (5, 6 in both clips)


def trajectory(index: int) -> np.ndarray:
    """(T_VIDEO, 2) a straight path, different per video."""
    t = np.arange(T_VIDEO, dtype=np.float32)
    start = np.array([5 + 3 * index, 6 + 2 * index], np.float32)
    return start + t[:, None] * np.array([1.5, 0.8 + 0.2 * index], np.float32)


def make_clips(root: Path, annotate: bool = True, videos=(("train", 4), ("val", 1), ("test", 1))):
    """Shards in the prepare layout + the demo's ground_truth/ folder; returns (clips, raw)."""
    clips, raw = root / "clips", root / "raw"
    (raw / "ground_truth").mkdir(parents=True)
    rng = np.random.default_rng(1)
    index = 0
    for split, count in videos:
        with ShardWriter(clips / split, max_bytes=10**8) as writer:
            for _ in range(count):
                vid = f"vid_{index:03d}"
                path = trajectory(index)
                np.savez(raw / "ground_truth" / f"{vid}.npz", positions=path)
                frames = np.stack([disc_frame(x, y, rng) for x, y in path])
                known = np.full((T_VIDEO, 2), np.nan, np.float32)
                if annotate:  # val/test clips get annotations too: the stage must ignore them
                    known[list(ANNOTATED)] = path[list(ANNOTATED)]
                for c, first in enumerate(range(0, T_VIDEO - CLIP + 1, STRIDE)):
                    meta = {"video_id": vid, "first_frame": first, "frame_step": 1, "split": split}
                    writer.write(encode_sample(f"{vid}_{c:04d}", frames[first:first + CLIP], meta,
                                               positions=known[first:first + CLIP]))
                index += 1
    return clips, raw


def tiny_params(steps: int = 12, **kw) -> PositionsParams:
    loop = LoopConfig(steps=steps, log_every=4, eval_every=0, ckpt_every=4, keep_checkpoints=0,
                      device="cpu", seed=0)
    base = dict(model=TINY, loop=loop, batch_size=4, lr=3e-3, warmup_steps=2,
                holdout_fraction=0.25, flip=True, color_jitter=0.1)
    return PositionsParams(**{**base, **kw})


def run_stage(tmp_path: Path, clips: Path, raw: Path | None, params: PositionsParams, logger=None):
    logger = logger or RecordingLogger()
    metrics = stage.run(params, clips, raw, tmp_path / "models" / "position.pt",
                        tmp_path / "positions", tmp_path / "metrics" / "positions.json", logger,
                        ckpt_dir=tmp_path / "ckpt")
    return metrics, logger


def test_stage_trains_only_on_annotated_train_frames_and_writes_outputs(tmp_path, monkeypatch):
    clips, raw = make_clips(tmp_path)
    seen_targets = []
    real_augment = position_training.augment

    def spy(frames, xy, params, rng):
        seen_targets.append(np.array(xy))
        return real_augment(frames, xy, params, rng)

    monkeypatch.setattr(position_training, "augment", spy)  # _batches looks it up there
    metrics, logger = run_stage(tmp_path, clips, raw, tiny_params())

    # 4 train videos × 4 annotated frames, each once although frames 5 and 6 are in two clips;
    # the annotations of the val/test clips are not training data
    assert metrics["annotated_frames"] == 16
    assert metrics["train_frames"] + metrics["heldout_frames"] == 16
    assert metrics["heldout_frames"] == 4  # one whole video of 4 (holdout_fraction 0.25)
    truth = {tuple(np.round(trajectory(i)[t], 4)) for i in range(4) for t in ANNOTATED}
    targets = np.concatenate(seen_targets)
    assert len(seen_targets) == 12 and np.isfinite(targets).all()
    unflipped = {tuple(np.round(p, 4)) for p in targets}
    flipped = {(round(SIZE - 1 - p[0], 4), round(float(p[1]), 4)) for p in targets}
    assert all(p in truth or f in truth for p, f in zip(unflipped, flipped))

    # one parquet row per clip frame, keyed like the shards
    for split in stage.SPLITS:
        table = pq.read_table(tmp_path / "positions" / f"{split}.parquet").to_pandas()
        assert list(table.columns) == ["key", "t", "x", "y"]
        expected = [(s["key"], t) for s in iter_clips(clips, split) for t in range(CLIP)]
        assert list(zip(table["key"], table["t"])) == expected
        assert np.isfinite(table[["x", "y"]].to_numpy()).all()

    saved = json.loads((tmp_path / "metrics" / "positions.json").read_text())
    assert saved["heldout_frames"] == 4 and "heldout_error_px_mean" in saved
    # never-annotated frames: 6 videos × 12 frames − 6 × 4 annotated (val/test ones count too)
    assert saved["never_annotated_frames"] == 6 * T_VIDEO - 6 * len(ANNOTATED)
    assert {"never_annotated_error_px_mean", "never_annotated_error_px_median",
            "never_annotated_error_px_p95"} <= set(saved)
    assert "ground_truth" in saved and saved["ground_truth"].startswith(str(raw))
    assert logger.last("never_annotated_error_px_mean") == pytest.approx(
        saved["never_annotated_error_px_mean"])
    assert any(p.endswith("examples.png") for p, _ in logger.artifacts)

    config, state, meta = load_model(tmp_path / "models" / "position.pt")
    model = PositionEstimator(PositionEstimatorConfig(**{**config, "channels": tuple(config["channels"])}))
    model.load_state_dict(state)
    assert meta["steps"] == 12


def test_stage_without_ground_truth_reports_heldout_only(tmp_path):
    clips, _ = make_clips(tmp_path)
    metrics, _ = run_stage(tmp_path, clips, None, tiny_params(steps=4))
    assert metrics["ground_truth"].startswith("none")
    assert not any(k.startswith("never_annotated") for k in metrics)
    assert "heldout_error_px_mean" in json.loads((tmp_path / "metrics" / "positions.json").read_text())


def test_stage_resumes_from_its_checkpoint(tmp_path):
    clips, raw = make_clips(tmp_path)
    first, _ = run_stage(tmp_path, clips, raw, tiny_params(steps=8))
    assert first["steps"] == 8 and (tmp_path / "ckpt" / "step-00000008.pt").exists()
    second, logger = run_stage(tmp_path, clips, raw, tiny_params(steps=12))
    assert logger.tags["train_loop.resumed_from"] == "8" and second["steps"] == 12
    # other params: the old checkpoints are not resumed, training starts afresh
    third, logger = run_stage(tmp_path, clips, raw, tiny_params(steps=12, lr=1e-3))
    assert "train_loop.resumed_from" not in logger.tags and third["steps"] == 12


def test_no_annotations_writes_a_placeholder_and_the_dag_goes_on(tmp_path):
    clips, raw = make_clips(tmp_path, annotate=False, videos=(("train", 1),))
    metrics, logger = run_stage(tmp_path, clips, raw, tiny_params(steps=2))
    assert metrics["available"] == 0.0 and logger.tags["positions.available"] == "false"
    assert "no annotated frame" in metrics["reason"] and "\n" not in metrics["reason"]
    loaded = load_model(tmp_path / "models" / "position.pt")
    assert loaded.meta["available"] is False and loaded.meta["reason"] == metrics["reason"]
    out = tmp_path / "positions"
    assert not list(out.glob("*.parquet"))  # no trajectories: tokenize writes no state tokens
    assert json.loads((out / "unavailable.json").read_text())["reason"] == metrics["reason"]
    from stages.tokenize import _why_no_trajectories

    assert _why_no_trajectories(out) == metrics["reason"]


def test_params_yaml_has_a_valid_positions_section(repo_root):
    params = load_section("positions", repo_root / "params.yaml")
    assert isinstance(params.model, PositionEstimatorConfig)
    assert params.model.head == "soft_argmax"
