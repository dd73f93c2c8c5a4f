"""The ``autoencoder`` stage (stages/autoencoder.py): outputs, resume, model file round trip."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from pipeline.training.checkpoint import load_model
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.tracking import RecordingLogger
from pipeline.training.config import LoopConfig
from stages.autoencoder import run
from tests.test_ae_training import tiny_params
from pipeline.errors import StageError

torch.set_num_threads(1)


def make_clips(root, splits=(("train", 3), ("val", 1))):
    rng = np.random.default_rng(0)
    for split, videos in splits:
        with ShardWriter(root / split, max_bytes=10**8) as writer:
            for v in range(videos):
                frames = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
                for c in range(2):
                    meta = {"video_id": f"{split}{v}", "first_frame": c, "split": split}
                    writer.write(encode_sample(f"{split}{v}_{c:04d}", frames, meta))
    return root


def params(steps, **kw):
    loop = LoopConfig(steps=steps, log_every=1, eval_every=2, ckpt_every=2, keep_checkpoints=0,
                      device="cpu", seed=0, ema_decay=0.5)
    kw.setdefault("use_vgg", True)
    return tiny_params(loop=loop, **kw)


def outputs(tmp_path):
    return dict(out_model=tmp_path / "models" / "ae.pt", metrics_path=tmp_path / "metrics.json",
                plots_dir=tmp_path / "plots", ckpt_dir=tmp_path / "ckpt")


def test_stage_writes_outputs_resumes_and_model_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("CCVS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached VGG weights
    clips = make_clips(tmp_path / "clips")
    out = outputs(tmp_path)
    log = RecordingLogger()
    m = run(params(2), clips, logger=log, **out)
    for path in (out["out_model"], out["metrics_path"], out["plots_dir"] / "val.csv",
                 out["plots_dir"] / "reconstruction.gif"):
        assert path.exists(), path
    assert np.isfinite(m["val/psnr"]) and 0 < m["val/ssim"] <= 1 and m["steps"] == 2
    assert json.loads(out["metrics_path"].read_text())["val/psnr"] == pytest.approx(m["val/psnr"])
    assert log.tags["vgg_weights"].startswith("unavailable: ")  # said, not silent
    assert log.tags["autoencoder.val_source"] == "val"
    assert any(a[0].endswith("reconstruction.gif") for a in log.artifacts)

    # a longer run with the same params resumes from the step-2 checkpoint
    log2 = RecordingLogger()
    m2 = run(params(4), clips, logger=log2, **out)
    assert m2["resumed_from"] == 2 and m2["steps"] == 4
    assert log2.tags.get("train_loop.resumed_from") == "2"
    steps = [int(r["step"]) for r in csv.DictReader(open(out["plots_dir"] / "val.csv"))]
    assert steps == [2, 4]  # the curve carries over the resumed run

    # the model file rebuilds CCVSAutoencoder with identical outputs
    config, state, meta = load_model(out["out_model"])
    model = CCVSAutoencoder(AutoencoderConfig(**config))
    model.load_state_dict(state)
    again = CCVSAutoencoder(AutoencoderConfig(**config))
    again.load_state_dict(load_model(out["out_model"]).state)
    model.eval(), again.eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ctx = torch.rand(2, 1, 3, 16, 16) * 2 - 1
    assert torch.equal(model.reconstruct(x, ctx).x_hat, again.reconstruct(x, ctx).x_hat)
    assert meta["step"] == 4 and meta["weights"] == "ema"
    assert meta["val_metrics"]["val/psnr"] == pytest.approx(m2["val/psnr"])


def test_stage_without_val_split_holds_out_train_videos(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CCVS_OFFLINE", "1")
    clips = make_clips(tmp_path / "clips", splits=(("train", 4),))
    log = RecordingLogger()
    m = run(params(1, use_vgg=False, video_every=0), clips, logger=log, **outputs(tmp_path))
    assert log.tags["autoencoder.val_source"] == "train_holdout" and m["val_holdout"] == 1.0
    assert m["val_clips"] == 2 and m["train_clips"] == 6
    assert "held-out" in capsys.readouterr().err


def test_stage_rejects_frames_that_do_not_fit(tmp_path):
    clips = make_clips(tmp_path / "clips")
    # the discriminators take the frames' size (16 px here): a final resolution of 32 cannot fit
    bad = params(1, image_disc=dataclasses.replace(tiny_params().image_disc, resolution=32,
                                                   final_resolution=32))
    with pytest.raises(StageError, match="image_disc"):
        run(bad, clips, logger=RecordingLogger(), **outputs(tmp_path))
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(StageError, match="no train clips"):
        run(params(1), tmp_path / "empty", logger=RecordingLogger(), **outputs(tmp_path))


# --------------------------------------------------------------------------- the train stream


def marked_clips(root, videos=4, clips=3, t=6):
    """Train shards (several, small) whose frame t of clip i carries (i, t) in its first pixel."""
    rng = np.random.default_rng(1)
    with ShardWriter(root / "train", max_bytes=12_000) as writer:
        for v in range(videos):
            for c in range(clips):
                frames = rng.integers(0, 256, (t, 16, 16, 3), dtype=np.uint8)
                frames[:, 0, 0, 0] = v * clips + c
                frames[:, 0, 0, 1] = np.arange(t)
                writer.write(encode_sample(f"v{v}_{c:04d}", frames, {"video_id": f"v{v}"}))
    return root


def stream_params(seed=0, shuffle=4, workers=0):
    loop = LoopConfig(steps=1, device="cpu", seed=seed, shuffle_block=shuffle, data_workers=workers)
    return tiny_params(loop=loop, self_supervision=False, batch_size=3, video_batch_size=2,
                       video_frames=3, video_every=2,
                       model=dataclasses.replace(tiny_params().model, context_frames=2,
                                                 context_anchor=0))


def _stream(root, p, exclude=frozenset()):
    from pipeline.data.shards import list_shards
    from pipeline.training.autoencoder.batches import clip_stream

    urls = list_shards(root, "train")
    assert len(urls) >= 3  # the order mixes shards
    return clip_stream(urls, p, (6, 16, 16), str(root), exclude=exclude)


def _ids(batch):
    from pipeline.training.autoencoder.batches import ImageBatch

    x = (batch.frames if isinstance(batch, ImageBatch) else batch.clips).numpy()
    return x[:, :, 0, 0, 0].astype(int), x[:, :, 0, 0, 1].astype(int)  # (B, rows): clip id, frame index


def test_stream_steps_crop_one_clip_each_and_visit_every_clip_once_an_epoch(tmp_path):
    from pipeline.training.autoencoder.batches import ImageBatch, VideoBatch

    root = marked_clips(tmp_path / "clips")
    held = frozenset({"v1_0000", "v1_0001", "v1_0002"})  # a held-out video: never trained on
    it = _stream(root, stream_params(), exclude=held)(0)
    seen = []
    for step in range(4):  # 3 + 2 + 3 + 2 = 10 items = one epoch of the 9 train clips + 1
        batch = next(it)
        ids, ts = _ids(batch)
        if step % 2:  # video steps: 2 windows of 3 consecutive frames of one clip
            assert isinstance(batch, VideoBatch) and batch.clips.shape == (2, 3, 16, 16, 3)
            assert (np.diff(ts, axis=1) == 1).all()
        else:  # image steps: x_t, x_{t−1}, x_{t−2} of one clip (t ≥ 2 here: no repeats needed)
            assert isinstance(batch, ImageBatch) and batch.frames.shape == (3, 3, 16, 16, 3)
            assert (np.diff(ts, axis=1) == -1).all() and (ts[:, 0] >= 2).all()
        assert (ids == ids[:, :1]).all()
        seen += ids[:, 0].tolist()
    assert sorted(seen[:9]) == [0, 1, 2, 6, 7, 8, 9, 10, 11]  # every train clip once, held out none
    assert it.positions[0]["epoch"] == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_exactly_and_the_seed_fixes_it(tmp_path, workers):
    root = marked_clips(tmp_path / "clips")
    stream = _stream(root, stream_params(workers=workers))
    it = stream(0)
    batches, state = [], None
    for step in range(11):  # past an epoch
        batches.append(next(it))
        if step == 4:
            state = it.state_dict()
    resumed = stream(5, state)  # what a run resumed from the step-5 checkpoint reads
    for want in batches[5:]:
        assert torch.equal(next(resumed)[0], want[0])
    again = _stream(root, stream_params(workers=workers))(0)
    assert all(torch.equal(next(again)[0], b[0]) for b in batches)  # same seed → same batches
    other = _stream(root, stream_params(seed=1, workers=workers))(0)
    assert not all(torch.equal(next(other)[0], b[0]) for b in batches[:4])


def test_resumed_stage_ends_on_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CCVS_OFFLINE", "1")
    root = marked_clips(tmp_path / "clips", t=4)

    def p(steps):
        loop = LoopConfig(steps=steps, log_every=1, eval_every=0, ckpt_every=2,
                          keep_checkpoints=0, device="cpu", seed=0, ema_decay=0.5, shuffle_block=2)
        return tiny_params(loop=loop, use_vgg=False, val_clips=1)

    whole = outputs(tmp_path / "whole")
    run(p(5), root, logger=RecordingLogger(), **whole)
    cut = outputs(tmp_path / "cut")
    run(p(3), root, logger=RecordingLogger(), **cut)
    assert run(p(5), root, logger=RecordingLogger(), **cut)["resumed_from"] == 3  # its last checkpoint
    a = torch.load(whole["out_model"], weights_only=True)["state"]
    b = torch.load(cut["out_model"], weights_only=True)["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_train_clip_of_another_size_stops_the_stage_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CCVS_OFFLINE", "1")
    root = marked_clips(tmp_path / "clips", t=4)
    with ShardWriter(root / "train", max_bytes=10**6, pattern="odd-%05d.tar") as writer:
        writer.write(encode_sample("v9_0000", np.zeros((4, 8, 8, 3), np.uint8), {}))
    loop = LoopConfig(steps=8, log_every=1, device="cpu", seed=0, shuffle_block=0)
    with pytest.raises(StageError, match=r"clip v9_0000 has frames uint8 \(4, 8, 8, 3\)"):
        run(tiny_params(loop=loop, use_vgg=False, val_clips=1), root, logger=RecordingLogger(),
            **outputs(tmp_path))
