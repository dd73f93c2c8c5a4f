"""The layout_vq stage (App. E): one-hot layouts → VQ tokens, IoU, no-layout data."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccvs_models.vq_autoencoder import VQAutoencoder, VQAutoencoderConfig
from pipeline.training.checkpoint import load_model
from pipeline.params import LayoutVQParams
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.data.shards import NO_LAYOUT
from pipeline.tracking import RecordingLogger
from pipeline.training.config import LoopConfig
from stages import layout_vq
from stages.layout_vq import colorize_layout, iou_per_class, majority_layout


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs: one thread is as fast, and immune to OpenMP spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


T, S = 4, 32  # frames per clip, layout size


def scene(rng: np.random.Generator, classes: int = 4) -> np.ndarray:
    """(T, S, S) uint8: background 0 and a few moving boxes of labels 1..classes-1."""
    out = np.zeros((T, S, S), np.uint8)
    for label in range(1, classes):
        x, y = rng.integers(2, S - 12, 2)
        dx, dy = rng.integers(-2, 3, 2)
        for t in range(T):
            x0, y0 = np.clip([x + t * dx, y + t * dy], 0, S - 10)
            out[t, y0 : y0 + 9, x0 : x0 + 9] = label
    return out


def write_clips(root, specs):
    """specs: {split: [(key, layout or None)]} → shards under root."""
    for split, items in specs.items():
        with ShardWriter(root / split, 10**8) as writer:
            for key, layout in items:
                shape = layout.shape if layout is not None else (T, S, S)
                frames = np.zeros((*shape, 3), np.uint8)
                writer.write(encode_sample(key, frames, {"fps": 10, "split": split}, layout=layout))
    return root


MODEL = VQAutoencoderConfig(in_channels=0, out_channels=0, channels=(8, 8, 16), mid_blocks=0,
                            codebook_size=32, dim=16)


def params(steps=30, **over) -> LayoutVQParams:
    loop = LoopConfig(steps=steps, log_every=10, ckpt_every=15, device="cpu", seed=0)
    base = dict(model=MODEL, batch_size=8, lr=3e-3, q_weight=1.0, dead_code_every=10, loop=loop)
    base.update(over)
    return LayoutVQParams(**base)


@pytest.fixture
def clips(tmp_path):
    rng = np.random.default_rng(0)
    specs = {"train": [(f"v{i}_0000", scene(rng)) for i in range(6)] + [("nolayout_0000", None)],
             "val": [("w0_0000", scene(rng)), ("w1_0000", scene(rng, classes=6))]}
    return write_clips(tmp_path / "clips", specs)


def _run(tmp_path, clips, p):
    logger = RecordingLogger()
    metrics = layout_vq.run(p, clips, tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "ckpt",
                            logger, artifacts_dir=tmp_path / "art")
    return metrics, logger


def test_iou_and_majority():
    true = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    ious = iou_per_class(true, pred, 3)
    assert ious == {0: pytest.approx(0.5), 1: pytest.approx(2 / 3)}  # class 2 absent: left out
    lay = np.array([[[0, 1]], [[0, 1]], [[2, 1]]], np.uint8)
    assert majority_layout(lay, 3).tolist() == [[0, 1]]
    assert colorize_layout(np.array([[0, 1, 2]])).shape == (1, 3, 3)


def test_tiny_overfit():
    """Four layouts are decoded almost pixel-exactly after a short training (CE + L_q)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    target = torch.from_numpy(scene(rng)).long()  # (4, 32, 32), 4 classes
    x = F.one_hot(target, 4).permute(0, 3, 1, 2).float()
    model = VQAutoencoder(VQAutoencoderConfig(in_channels=4, out_channels=4, channels=(8, 8, 16),
                                              mid_blocks=0, codebook_size=16, dim=8))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(110):
        out = model(x)
        loss = F.cross_entropy(out.recon, target) + out.q_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            model.quantizer.reinit_dead_codes(out.z.detach(), out.counts)
    pred = model(x).recon.argmax(1)
    ious = iou_per_class(target.numpy(), pred.numpy(), 4)
    assert min(ious.values()) > 0.75, ious


def test_stage_trains_writes_and_resumes(tmp_path, clips):
    metrics, logger = _run(tmp_path, clips, params())
    assert json.loads((tmp_path / "m.json").read_text()) == pytest.approx(metrics)
    assert metrics["available"] == 1 and metrics["num_classes"] == 4  # max train label + 1
    assert metrics["tokens_per_frame"] == 16  # 32×32 → 4×4
    assert metrics["train_clips"] == 6 and metrics["val_clips"] == 1
    assert metrics["skipped_clips"] == 2  # no layout; val labels 4, 5 unseen in train
    assert 0 <= metrics["val/miou"] <= 1 and 0 <= metrics["baseline/miou"] <= 1
    assert {f"val/iou/class_{c}" for c in range(4)} <= set(metrics)
    assert np.isfinite(metrics["codebook/perplexity"])
    config, state, meta = load_model(tmp_path / "m.pt")
    assert meta["available"] and meta["num_classes"] == 4 and meta["token_grid"] == [4, 4]
    cfg = VQAutoencoderConfig(**config["model"])
    assert cfg.in_channels == cfg.out_channels == 4
    VQAutoencoder(cfg).load_state_dict(state)
    reasons = dict(meta["skipped"])
    assert reasons["nolayout_0000"] == "no layout" and "label 5 >= num_classes 4" in reasons["w1_0000"]
    assert (tmp_path / "art" / "layout_vq_reconstructions.png").is_file()
    again, _ = _run(tmp_path, clips, params())
    assert again["resumed_from"] == 30 and again["val/miou"] == pytest.approx(metrics["val/miou"])


def test_fixed_class_count(tmp_path, clips):
    model = VQAutoencoderConfig(**{**MODEL.__dict__, "in_channels": 6})
    metrics, _ = _run(tmp_path, clips, params(steps=5, model=model))
    assert metrics["num_classes"] == 6 and metrics["val_clips"] == 2  # labels 4, 5 now known
    small = VQAutoencoderConfig(**{**MODEL.__dict__, "in_channels": 3})
    with pytest.raises(layout_vq.StageError, match="label 3"):
        _run(tmp_path, clips, params(steps=5, model=small))


def test_no_layouts_writes_a_placeholder(tmp_path):
    clips = write_clips(tmp_path / "clips", {"train": [("v0_0000", None)], "val": [("w0_0000", None)]})
    metrics, logger = _run(tmp_path, clips, params())
    assert metrics["available"] == 0
    _, state, meta = load_model(tmp_path / "m.pt")
    assert meta == {"available": False, "reason": "no layouts in the data"} and state == {}
    assert json.loads((tmp_path / "m.json").read_text())["reason"] == "no layouts in the data"
    assert logger.tags["layout_vq.available"] == "false"


def test_layout_size_must_fit_the_downsampling(tmp_path):
    rng = np.random.default_rng(0)
    clips = write_clips(tmp_path / "clips", {"train": [("v0_0000", scene(rng)[:, :, :30]),
                                                       ("v1_0000", scene(rng)[:, :, :30])]})
    with pytest.raises(layout_vq.StageError, match="32×30 cannot be downsampled"):
        _run(tmp_path, clips, params())


def test_frames_nobody_labelled_are_left_out(tmp_path):
    """Cityscapes labels one frame per snippet: the others carry NO_LAYOUT (255) and must neither
    train the VQ nor count as a class (K stays max label + 1 of the labelled frames)."""
    rng = np.random.default_rng(3)
    sparse = []
    for i in range(4):
        layout = scene(rng)
        layout[[0, 1, 3]] = NO_LAYOUT  # only frame 2 labelled
        sparse.append((f"s{i}_0000", layout))
    all_blank = np.full((T, S, S), NO_LAYOUT, np.uint8)
    root = write_clips(tmp_path / "clips", {"train": sparse + [("blank_0000", all_blank)],
                                            "val": [("w0_0000", scene(rng))]})
    train = layout_vq.load_layouts(root, "train")
    assert train.layouts.shape[0] == 4 and train.frames == [1, 1, 1, 1]
    assert ("blank_0000", "no labelled frame") in train.skipped
    assert int(train.layouts.max()) < 4
    _run(tmp_path, root, params(steps=5))
    config, _, _ = load_model(tmp_path / "m.pt")
    assert config["model"]["in_channels"] == 4
