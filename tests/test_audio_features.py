"""Per-frame STFT patches (pipeline/data/audio_features.py): alignment, scale, inverse, bad audio."""

import numpy as np
import pytest

from pipeline.data.audio_features import (
    AudioConfigError,
    AudioError,
    AudioFeatureConfig,
    frame_patches,
    hop_length,
    patches_to_audio,
    spectral_metrics,
)

SR, FPS, T = 16000, 10, 8
CFG = AudioFeatureConfig()


def tone(freq: float, seconds: float = T / FPS, rate: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def click_at(frame: int, rate: int = SR) -> np.ndarray:
    """Silence with a 5 ms 4 kHz burst in the middle of ``frame``."""
    audio = np.zeros(int(T / FPS * rate), np.float32)
    start = int((frame + 0.5) / FPS * rate)
    n = int(0.005 * rate)
    audio[start : start + n] = 0.8 * np.sin(2 * np.pi * 4000 * np.arange(n) / rate)
    return audio


def test_hop_is_tied_to_the_frame_rate():
    assert hop_length(10, CFG) == 100  # 16000 / (10 · 16)
    assert hop_length(25, CFG) == 40
    with pytest.raises(AudioConfigError, match="not a whole number"):
        hop_length(30, CFG)  # 16000 / 480 = 33.3


def test_shape_dtype_and_range():
    p = frame_patches(tone(440), SR, FPS, T, CFG)
    assert p.shape == (T, 1, 64, 16) and p.dtype == np.float32
    assert p.min() >= -1 and p.max() <= 1
    # a steady tone: every frame's patch looks the same (the representation is time-invariant)
    assert np.abs(p[1:-1] - p[2]).max() < 0.05
    # the 440 Hz band is loud, the top bands silent
    band = p[2, 0].mean(axis=1)
    assert band.argmax() < 20 and band[-10:].max() == pytest.approx(-1.0)


@pytest.mark.parametrize("frame", [0, 3, T - 1])
def test_a_click_lands_in_its_frame(frame):
    p = frame_patches(click_at(frame), SR, FPS, T, CFG)
    energy = (p[:, 0, 40:] + 1).sum(axis=(1, 2))  # high bands, above the silence floor
    assert energy.argmax() == frame
    others = np.delete(energy, frame)
    assert energy[frame] > 20 * max(others.max(), 1e-6)


def test_alignment_with_time_resampling():
    cfg = AudioFeatureConfig(cols_per_frame=20)  # hop 80, 20 columns resampled to 16
    assert hop_length(FPS, cfg) == 80
    p = frame_patches(click_at(5), SR, FPS, T, cfg)
    assert p.shape == (T, 1, 64, 16)
    assert (p[:, 0, 40:] + 1).sum(axis=(1, 2)).argmax() == 5


def test_silence_is_minus_one_and_finite():
    p = frame_patches(np.zeros(T * SR // FPS, np.float32), SR, FPS, T, CFG)
    assert np.isfinite(p).all() and np.all(p == -1.0)


def test_clipped_audio_is_fine():
    loud = np.clip(tone(300, amp=4.0), -1, 1)  # hard-clipped square-ish wave
    p = frame_patches(loud, SR, FPS, T, CFG)
    assert np.isfinite(p).all() and p.min() >= -1 and p.max() <= 1
    assert p.max() > 0.8  # loud bands saturate near +1


def test_nan_and_inf_are_rejected_or_zeroed():
    audio = tone(440)
    audio[100] = np.nan
    audio[200] = np.inf
    with pytest.raises(AudioError, match="2 NaN/Inf samples"):
        frame_patches(audio, SR, FPS, T, CFG)
    p = frame_patches(audio, SR, FPS, T, AudioFeatureConfig(nonfinite="zero"))
    assert np.isfinite(p).all()


def test_other_sample_rate_is_resampled():
    ref = frame_patches(tone(1000), SR, FPS, T, CFG)
    low = frame_patches(tone(1000, rate=8000), 8000, FPS, T, CFG)
    assert low.shape == ref.shape
    # same loudest band; the bands below 4 kHz agree closely
    assert low[3, 0].mean(1).argmax() == ref[3, 0].mean(1).argmax()
    assert np.abs(low[1:-1] - ref[1:-1]).mean() < 0.05


@pytest.mark.parametrize("audio, match", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((2, 12800), np.float32), "1-D"),
    (np.zeros(6000, np.float32), "frames at 10 fps last 0.800 s"),  # 0.375 s of audio
    (np.zeros(12800, np.int16), "float"),
])
def test_bad_audio_gives_a_reason(audio, match):
    with pytest.raises(AudioError, match=match):
        frame_patches(audio, SR, FPS, T, CFG)


def test_length_within_one_frame_is_padded_or_trimmed():
    n = T * SR // FPS
    for length in (n - 500, n + 500):
        assert frame_patches(tone(440)[:length] if length < n else
                             np.pad(tone(440), (0, 500)), SR, FPS, T, CFG).shape[0] == T


def test_griffin_lim_inverse_sounds_like_the_original():
    audio = tone(300) + tone(1200, amp=0.2)
    p = frame_patches(audio, SR, FPS, T, CFG)
    back = patches_to_audio(p, FPS, CFG, n_iter=16)
    assert back.shape == (T * SR // FPS,) and back.dtype == np.float32 and np.isfinite(back).all()
    again = frame_patches(back, SR, FPS, T, CFG)
    # interior frames (the edges lack context for the phase estimate)
    assert spectral_metrics(p[1:-1], again[1:-1], CFG)["lsd_db"] < 6.0
    silent = patches_to_audio(-np.ones_like(p), FPS, CFG, n_iter=4)
    assert np.abs(silent).max() < 1e-3


def test_spectral_metrics():
    p = frame_patches(tone(440), SR, FPS, T, CFG)
    zero = spectral_metrics(p, p, CFG)
    assert zero["lsd_db"] == 0 and zero["spectral_convergence"] == 0
    off = spectral_metrics(p, np.clip(p + 0.1, -1, 1), CFG)
    assert off["lsd_db"] > 1 and off["spectral_convergence"] > 0.1
