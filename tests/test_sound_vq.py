"""The plain VQ autoencoder (ccvs_models/vq_autoencoder.py) and the sound_vq stage."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ccvs_models.vq_autoencoder import VQAutoencoder, VQAutoencoderConfig
from pipeline.data.audio_features import AudioFeatureConfig
from pipeline.training.checkpoint import load_model
from pipeline.params import SoundVQParams
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.tracking import RecordingLogger
from pipeline.training.config import LoopConfig
from pipeline.data.splits import holdout_keys
from pipeline.training.vq import VQTask, codebook_usage
from stages import sound_vq
from pipeline.errors import StageError


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs: one thread is as fast, and immune to OpenMP spinning on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = VQAutoencoderConfig(in_channels=1, out_channels=1, channels=(8, 16, 16), mid_blocks=0,
                           codebook_size=32, dim=16)

# --------------------------------------------------------------------------- model


def test_shapes_sound_and_layout():
    model = VQAutoencoder(TINY)
    out = model(torch.randn(3, 1, 64, 16))
    assert out.recon.shape == (3, 1, 64, 16)
    assert out.tokens.shape == (3, 8, 2)  # 16 tokens per frame (App. A)
    assert out.z.shape == (3, 16, 8, 2) and out.counts.sum() == 3 * 16
    lay = VQAutoencoder(VQAutoencoderConfig(in_channels=5, out_channels=5, channels=(8, 8, 8),
                                            codebook_size=16, dim=8))
    out = lay(torch.randn(2, 5, 64, 64))
    assert out.recon.shape == (2, 5, 64, 64) and out.tokens.shape == (2, 8, 8)


def test_encode_then_decode_tokens_is_the_forward_pass():
    torch.manual_seed(0)
    model = VQAutoencoder(TINY).eval()
    x = torch.randn(4, 1, 64, 16)
    with torch.no_grad():
        out = model(x)
        tokens = model.encode(x)
        assert torch.equal(tokens, out.tokens)
        assert torch.allclose(model.decode_tokens(tokens), out.recon, atol=1e-5)


def test_bad_inputs_and_configs():
    model = VQAutoencoder(TINY)
    with pytest.raises(ValueError, match="divisible by 2\\^3 = 8"):
        model(torch.randn(1, 1, 60, 16))
    with pytest.raises(ValueError, match="expected x of shape"):
        model(torch.randn(1, 2, 64, 16))
    with pytest.raises(ValueError, match="must be set"):
        VQAutoencoder(VQAutoencoderConfig(in_channels=0))
    with pytest.raises(ValueError, match="channels"):
        VQAutoencoderConfig(channels=())


def test_tiny_overfit():
    """Four spectrogram-like patches come back far better than their mean would (E, Q, D learn)."""
    torch.manual_seed(0)
    x = -torch.ones(4, 1, 64, 16)
    for i, band in enumerate((5, 17, 30, 45)):  # a "harmonic" line per patch, at its own band
        x[i, 0, band : band + 3] = 0.6
        x[i, 0, 2 * band % 60 : 2 * band % 60 + 2, : 8] = 0.2
    cfg = VQAutoencoderConfig(in_channels=1, out_channels=1, channels=(8, 8, 16), mid_blocks=0,
                              codebook_size=16, dim=8)
    model = VQAutoencoder(cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for step in range(250):
        out = model(x)
        loss = F.mse_loss(out.recon, x) + out.q_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            model.quantizer.reinit_dead_codes(out.z.detach(), out.counts)
    final = F.mse_loss(model(x).recon, x).item()
    mean_baseline = F.mse_loss(x.mean(0, keepdim=True).expand_as(x), x).item()
    assert final < 0.25 * mean_baseline, (mean_baseline, final)


def test_codebook_usage():
    u = codebook_usage(np.array([0, 0, 1, 1]), 4)
    assert u["perplexity"] == pytest.approx(2.0) and u["dead_codes"] == 2 and u["used_codes"] == 2


def test_holdout_takes_whole_videos():
    keys = [f"v{i:02d}_{c:04d}" for i in range(10) for c in range(3)]
    held = holdout_keys(keys, 0.1, seed=0)
    videos = {k.rsplit("_", 1)[0] for k in held}
    assert len(videos) == 1 and held == {f"{v}_{c:04d}" for v in videos for c in range(3)}
    assert holdout_keys(keys, 0.1, seed=0) == held  # deterministic
    assert holdout_keys(["a_0000", "a_0001"]) == set()  # one video is never split
    assert len(holdout_keys(keys, 0.99, seed=1)) < len(keys)  # one video always stays


# --------------------------------------------------------------------------- stage

SR, FPS, T = 16000, 10, 8


def clip_audio(rng: np.random.Generator) -> np.ndarray:
    """A hum whose pitch drifts, plus a click (like the demo world's sound)."""
    n = T * SR // FPS
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 400) + 100 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t)
    audio = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR)
    start = int(rng.integers(0, n - 400))
    audio[start : start + 320] += 0.5 * np.sin(2 * np.pi * 3000 * np.arange(320) / SR)
    return audio.astype(np.float32)


def write_clips(root, specs, fps=FPS):
    """specs: {split: [(key, audio or None, meta extra)]} → shards under root."""
    for split, items in specs.items():
        with ShardWriter(root / split, 10**8) as writer:
            for key, audio, extra in items:
                frames = np.zeros((T, 16, 16, 3), np.uint8)
                meta = {"fps": fps, "audio_rate": SR, "split": split, **extra}
                writer.write(encode_sample(key, frames, meta, audio=audio))
    return root


def params(steps=30, **over) -> SoundVQParams:
    loop = LoopConfig(steps=steps, log_every=10, ckpt_every=15, device="cpu", seed=0)
    base = dict(features=AudioFeatureConfig(), model=TINY, batch_size=16, lr=3e-3, loss="mse",
                q_weight=1.0, dead_code_every=10, griffin_lim_iters=4, loop=loop)
    base.update(over)
    return SoundVQParams(**base)


@pytest.fixture
def clips(tmp_path):
    rng = np.random.default_rng(0)
    bad = clip_audio(rng)
    bad[10] = np.nan
    specs = {
        "train": [(f"v{i}_0000", clip_audio(rng), {}) for i in range(6)]
        + [("mute_0000", None, {}), ("nan_0000", bad, {})],
        "val": [("w0_0000", clip_audio(rng), {}), ("w1_0000", clip_audio(rng), {})],
    }
    return write_clips(tmp_path / "clips", specs)


def _run(tmp_path, clips, p, logger=None):
    logger = logger or RecordingLogger()
    metrics = sound_vq.run(p, clips, tmp_path / "m.pt", tmp_path / "m.json", tmp_path / "ckpt",
                           logger, artifacts_dir=tmp_path / "art")
    return metrics, logger


def test_stage_trains_writes_and_resumes(tmp_path, clips):
    metrics, logger = _run(tmp_path, clips, params())
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved == pytest.approx(metrics)
    assert metrics["available"] == 1 and metrics["steps"] == 30 and metrics["resumed_from"] == -1
    assert metrics["train_clips"] == 6 and metrics["val_clips"] == 2
    assert metrics["skipped_clips"] == 2  # no audio + NaN, each with a reason
    assert metrics["tokens_per_frame"] == 16
    for key in ("val/lsd_db", "baseline/lsd_db", "val/spectral_convergence",
                "codebook/perplexity", "codebook/dead_codes"):
        assert np.isfinite(metrics[key])
    assert all(np.isfinite(v) for _, v in logger.metrics["loss"])
    # the model file rebuilds the model and the features tokenize needs
    config, state, meta = load_model(tmp_path / "m.pt")
    assert meta["available"] and meta["token_grid"] == [8, 2]
    assert AudioFeatureConfig(**config["features"]) == AudioFeatureConfig()
    model = VQAutoencoder(VQAutoencoderConfig(**config["model"]))
    model.load_state_dict(state)
    reasons = dict(meta["skipped"])
    assert reasons["mute_0000"] == "no audio track" and "NaN" in reasons["nan_0000"]
    names = {p.name for p in (tmp_path / "art").iterdir()}
    assert {"sound_vq_spectrograms.png", "w0_0000_original.wav",
            "w0_0000_griffinlim_decoded.wav"} <= names
    # a second run resumes from the final checkpoint: no new step, same metrics
    again, _ = _run(tmp_path, clips, params())
    assert again["resumed_from"] == 30 and again["val/lsd_db"] == pytest.approx(metrics["val/lsd_db"])
    # a longer run continues from there
    longer, _ = _run(tmp_path, clips, params(steps=40))
    assert longer["resumed_from"] == 30 and longer["steps"] == 40


def test_dead_codes_are_reseeded(tmp_path, clips):
    task_metrics, logger = _run(tmp_path, clips, params(steps=20, dead_code_every=5))
    assert task_metrics["codebook/reseeded_total"] > 0
    assert sum(v for _, v in logger.metrics["reseeded_codes"]) > 0


def test_vq_task_refuses_a_nan_loss():
    task = VQTask(TINY, 1e-3, 1.0, 0, F.l1_loss, lambda b: (b, b), {})

    class Ctx:
        modules = {"vq": task.model}
        device = torch.device("cpu")

        @staticmethod
        def to_device(b):
            return b

        @staticmethod
        def autocast():
            return torch.autocast("cpu", enabled=False)

    x = torch.zeros(2, 1, 64, 16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        task.train_step(x, 0, Ctx())


def test_no_audio_writes_a_placeholder(tmp_path):
    clips = write_clips(tmp_path / "clips", {"train": [("v0_0000", None, {})],
                                             "val": [("w0_0000", None, {})]})
    metrics, logger = _run(tmp_path, clips, params())
    assert metrics["available"] == 0
    config, state, meta = load_model(tmp_path / "m.pt")
    assert meta == {"available": False, "reason": "no audio in the data"} and state == {}
    assert json.loads((tmp_path / "m.json").read_text())["reason"] == "no audio in the data"


def test_silence_filled_clips_count_as_no_audio(tmp_path):
    silent = np.zeros(T * SR // FPS, np.float32)
    clips = write_clips(tmp_path / "clips", {"train": [("v0_0000", silent, {"audio_silent": True})]})
    metrics, _ = _run(tmp_path, clips, params())
    assert metrics["available"] == 0 and metrics["skipped_clips"] == 1


def test_all_audio_bad_is_an_error(tmp_path):
    bad = np.full(T * SR // FPS, np.inf, np.float32)
    clips = write_clips(tmp_path / "clips", {"train": [("v0_0000", bad, {})]})
    with pytest.raises(StageError, match="all 1 train clips with audio were rejected"):
        _run(tmp_path, clips, params())


def test_frame_rate_without_a_whole_hop_names_the_clip(tmp_path):
    rng = np.random.default_rng(0)
    n = int(T / 30 * SR)
    clips = write_clips(tmp_path / "clips", {"train": [("v0_0000", clip_audio(rng)[:n], {})]},
                        fps=30)
    with pytest.raises(StageError, match="v0_0000: .*not a whole number"):
        _run(tmp_path, clips, params())


def test_no_val_split_holds_out_train_videos(tmp_path):
    rng = np.random.default_rng(1)
    specs = {"train": [(f"v{i}_{c:04d}", clip_audio(rng), {}) for i in range(4) for c in range(2)]}
    clips = write_clips(tmp_path / "clips", specs)
    logger = RecordingLogger()
    metrics, _ = _run(tmp_path, clips, params(steps=5), logger)
    assert metrics["val_clips"] == 2 and metrics["train_clips"] == 6
    assert logger.tags["sound_vq.val_source"] == "train_holdout"
