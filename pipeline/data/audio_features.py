"""Per-frame sound patches: a log-magnitude STFT aligned to the video frames, and its inverse.

App. A "Sound autoencoder": the raw audio is turned into a time-frequency representation by a
short-time Fourier transform (STFT); every video frame then owns one patch of it, which the sound
VQ autoencoder (``ccvs_models/vq_autoencoder.py``) encodes into the frame's audio tokens. The
paper's patches are 64 (frequency) × 16 (time), scaled to [−1, 1]; this module builds exactly
that, and the ``tokenize`` stage reuses it so training and tokenization see the same patches.

Alignment. The STFT hop is tied to the frame rate so that every frame owns ``cols_per_frame``
whole STFT columns::

    hop = sample_rate / (fps · cols_per_frame)      (must be an integer; an error says otherwise)

With a centred STFT (column j is centred on sample j·hop), the columns
``k·cols_per_frame … (k+1)·cols_per_frame − 1`` are centred inside frame k's time span
[k / fps, (k+1) / fps): they form frame k's patch. (At 16 kHz, 10 fps, 16 columns: hop = 100.)

Frequency axis. The ``n_fft // 2 + 1`` linear bins are resized to ``freq_bins`` rows with a mel
filterbank (triangles of peak 1, ``fmin``…``fmax``): a perceptual resize that keeps the low
frequencies (where pitch lives) sharper than a uniform one would. Row 0 is the lowest band.
Time axis: when ``cols_per_frame != time_bins`` the columns are linearly resampled to
``time_bins`` (the default makes them equal: no resampling).

Scale (fixed, so a patch is invertible without per-clip statistics): magnitudes are divided by
half the window's sum, so a full-scale sine (amplitude 1) gives 1.0 = 0 dB in its band; they are
then expressed in dB and the range [``db_min``, ``db_max``] is mapped linearly onto [−1, 1]
(values outside are clipped: −1 is silence, "−80 dB or quieter" by default).

Inverse (listening only): dB → magnitude → linear-frequency magnitude by non-negative least
squares against the filterbank (``librosa.util.nnls``) → waveform by Griffin-Lim.

Bad audio (``AudioError``, one line with the reason; the caller rejects the clip): NaN/Inf
samples (or, with ``nonfinite="zero"``, they are replaced by 0), an audio track whose length does
not match the clip's frames by more than one frame, an empty or non-1-D array. Silence and
clipped audio are fine (silence maps to −1, loud bands saturate at +1). Audio at another sample
rate is resampled to ``sample_rate`` (librosa/soxr). A frame rate for which the hop is not an
integer is a configuration problem (``AudioConfigError``), not a bad clip.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import numpy as np
from pipeline.errors import UserError


class AudioError(UserError, ValueError):
    """A clip's audio cannot be turned into patches; the message is the reason (for rejects)."""


class AudioConfigError(UserError, ValueError):
    """The feature config does not fit the data (e.g. the hop is not an integer number of samples)."""


@dataclasses.dataclass(frozen=True)
class AudioFeatureConfig:
    """How audio becomes per-frame patches (stored in the sound VQ model file for ``tokenize``)."""

    sample_rate: int = 16000  # audio is resampled to this rate before the STFT
    n_fft: int = 512  # STFT window length (samples) and FFT size: 32 ms at 16 kHz
    cols_per_frame: int = 16  # STFT columns per video frame (sets the hop, see module doc)
    freq_bins: int = 64  # patch height: mel bands (paper: 64)
    time_bins: int = 16  # patch width per frame (paper: 16)
    fmin: float = 0.0  # lowest mel band edge (Hz)
    fmax: float = 0.0  # highest mel band edge (Hz); 0 = sample_rate / 2
    db_min: float = -80.0  # dB mapped to −1 (and everything quieter: silence)
    db_max: float = 0.0  # dB mapped to +1 (0 dB = a full-scale sine in its band)
    nonfinite: Literal["reject", "zero"] = "reject"  # NaN/Inf samples: reject the clip or zero them

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "cols_per_frame", "freq_bins", "time_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.db_min < self.db_max:
            raise ValueError(f"db_min must be < db_max, got {self.db_min} >= {self.db_max}")
        if self.fmax and not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"need fmin < fmax <= sample_rate / 2, got {self.fmin}, {self.fmax}")
        if self.nonfinite not in ("reject", "zero"):
            raise ValueError(f"nonfinite must be 'reject' or 'zero', got {self.nonfinite!r}")


# --------------------------------------------------------------------------- helpers


def hop_length(fps: float, cfg: AudioFeatureConfig) -> int:
    """STFT hop in samples: sample_rate / (fps · cols_per_frame), which must be an integer."""
    if not fps > 0:
        raise AudioConfigError(f"fps must be positive, got {fps}")
    hop = cfg.sample_rate / (fps * cfg.cols_per_frame)
    if abs(hop - round(hop)) > 1e-6 or round(hop) < 1:
        step = fps * cfg.cols_per_frame
        rates = sorted({int(round(step * k)) for k in (max(1, int(hop)), int(hop) + 1)
                        if abs(step * k - round(step * k)) < 1e-6})
        fix = (f"set sound_vq.features.sample_rate to {' or '.join(map(str, rates))} "
               f"(a multiple of fps · cols_per_frame), or " if rates else "set ")
        good = [f for f in range(5, 61) if cfg.sample_rate % (f * cfg.cols_per_frame) == 0]
        raise AudioConfigError(
            f"audio hop = sample_rate / (fps · cols_per_frame) = {cfg.sample_rate} / ({fps:g} · "
            f"{cfg.cols_per_frame}) = {hop:.4f} samples is not a whole number: {fix}"
            f"prepare.fps to one of {', '.join(map(str, good))}"
        )
    return int(round(hop))


@functools.lru_cache(maxsize=8)
def _mel_basis(cfg: AudioFeatureConfig) -> np.ndarray:
    """(freq_bins, n_fft // 2 + 1) mel filterbank, triangles of peak 1 (no area normalisation)."""
    import librosa

    fmax = cfg.fmax or cfg.sample_rate / 2
    return librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.freq_bins,
                               fmin=cfg.fmin, fmax=fmax, norm=None, dtype=np.float64)


def _magnitude_scale(cfg: AudioFeatureConfig) -> float:
    """|STFT| of a unit-amplitude sine at its peak bin (half the Hann window's sum)."""
    import scipy.signal

    return float(scipy.signal.get_window("hann", cfg.n_fft, fftbins=True).sum() / 2)


def _time_resampler(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) matrix: linear interpolation of n_in samples onto n_out (cell centres)."""
    if n_in == n_out:
        return np.eye(n_in)
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5  # output centres in input coordinates
    pos = np.clip(pos, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_in, n_out))
    m[lo, np.arange(n_out)] += 1 - frac
    m[hi, np.arange(n_out)] += frac
    return m


def prepare_audio(
    audio: np.ndarray, audio_rate: float, fps: float, num_frames: int, cfg: AudioFeatureConfig
) -> np.ndarray:
    """Checked mono float64 audio at ``cfg.sample_rate``, exactly ``num_frames / fps`` s long.

    Raises ``AudioError`` (the reason) for NaN/Inf samples (unless ``nonfinite="zero"``), an
    empty / non-1-D array, or a length off by more than one frame; resamples another rate.
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise AudioError(f"audio must be a 1-D mono array, got shape {audio.shape}")
    if audio.size == 0:
        raise AudioError("audio track is empty")
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}")
    audio = audio.astype(np.float64)
    bad = ~np.isfinite(audio)
    if bad.any():
        if cfg.nonfinite == "reject":
            raise AudioError(f"audio has {int(bad.sum())} NaN/Inf samples of {audio.size}")
        audio = np.where(bad, 0.0, audio)
    if not audio_rate or audio_rate <= 0:
        raise AudioError(f"audio sample rate must be positive, got {audio_rate}")
    expected_in = num_frames / fps * audio_rate
    per_frame_in = audio_rate / fps
    if abs(audio.size - expected_in) > per_frame_in:
        raise AudioError(
            f"audio has {audio.size} samples ({audio.size / audio_rate:.3f} s) but the clip's "
            f"{num_frames} frames at {fps:g} fps last {num_frames / fps:.3f} s"
        )
    if audio_rate != cfg.sample_rate:
        import librosa

        audio = librosa.resample(audio, orig_sr=float(audio_rate), target_sr=float(cfg.sample_rate))
    hop = hop_length(fps, cfg)
    n = num_frames * cfg.cols_per_frame * hop
    if audio.size < n:
        audio = np.pad(audio, (0, n - audio.size))
    return audio[:n]


# --------------------------------------------------------------------------- forward / inverse


def db_to_patch(db: np.ndarray, cfg: AudioFeatureConfig) -> np.ndarray:
    """dB → [−1, 1] (clipped to [db_min, db_max])."""
    x = (np.asarray(db) - cfg.db_min) / (cfg.db_max - cfg.db_min) * 2.0 - 1.0
    return np.clip(x, -1.0, 1.0)


def patch_to_db(x: np.ndarray, cfg: AudioFeatureConfig) -> np.ndarray:
    """[−1, 1] → dB (inputs outside [−1, 1] are clipped first)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    return (x + 1.0) / 2.0 * (cfg.db_max - cfg.db_min) + cfg.db_min


def frame_patches(
    audio: np.ndarray, audio_rate: float, fps: float, num_frames: int, cfg: AudioFeatureConfig
) -> np.ndarray:
    """Audio of a clip → its per-frame patches, float32 (T, 1, freq_bins, time_bins) in [−1, 1].

    ``audio``: mono samples of the clip (as long as its ``num_frames`` frames at ``fps``, ±1
    frame), at ``audio_rate``. Patch k holds the STFT columns centred inside frame k.
    """
    import librosa

    y = prepare_audio(audio, audio_rate, fps, num_frames, cfg)
    hop = hop_length(fps, cfg)
    spec = np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=hop, win_length=cfg.n_fft,
                               window="hann", center=True, pad_mode="constant"))
    cols = num_frames * cfg.cols_per_frame
    spec = spec[:, :cols] / _magnitude_scale(cfg)  # the last column belongs to the next frame
    mel = _mel_basis(cfg) @ spec  # (freq_bins, cols)
    amin = 10.0 ** (cfg.db_min / 20.0)
    db = 20.0 * np.log10(np.maximum(mel, amin))
    x = db_to_patch(db, cfg)  # (F, T · cols_per_frame)
    x = x.reshape(cfg.freq_bins, num_frames, cfg.cols_per_frame).transpose(1, 0, 2)
    x = x @ _time_resampler(cfg.cols_per_frame, cfg.time_bins)  # (T, F, time_bins)
    return np.ascontiguousarray(x[:, None], dtype=np.float32)


def patches_to_spectrogram(patches: np.ndarray) -> np.ndarray:
    """(T, 1, F, W) patches → (F, T · W) image, frames side by side (row 0 = lowest band)."""
    p = np.asarray(patches)
    if p.ndim != 4 or p.shape[1] != 1:
        raise ValueError(f"patches must be (T, 1, F, W), got {p.shape}")
    return p[:, 0].transpose(1, 0, 2).reshape(p.shape[2], -1)


def patches_to_audio(
    patches: np.ndarray, fps: float, cfg: AudioFeatureConfig, n_iter: int = 32, seed: int = 0
) -> np.ndarray:
    """(T, 1, freq_bins, time_bins) patches → float32 waveform at ``cfg.sample_rate`` (Griffin-Lim).

    For listening: the phase is estimated (``n_iter`` Griffin-Lim iterations, seeded), the mel
    resize is undone by non-negative least squares, so the result sounds like, but is not, the
    original. Length: T / fps seconds.
    """
    import librosa

    p = np.asarray(patches, dtype=np.float64)
    if p.ndim != 4 or p.shape[1:] != (1, cfg.freq_bins, cfg.time_bins):
        raise ValueError(
            f"patches must be (T, 1, {cfg.freq_bins}, {cfg.time_bins}), got {p.shape}")
    num_frames = p.shape[0]
    hop = hop_length(fps, cfg)
    back = np.linalg.pinv(_time_resampler(cfg.cols_per_frame, cfg.time_bins)) \
        if cfg.cols_per_frame != cfg.time_bins else np.eye(cfg.time_bins)
    cols = p[:, 0] @ back  # (T, F, cols_per_frame)
    db = patch_to_db(cols.transpose(1, 0, 2).reshape(cfg.freq_bins, -1), cfg)
    mel = 10.0 ** (db / 20.0)
    mel[db <= cfg.db_min] = 0.0  # the floor is silence, not a faint broadband hiss
    lin = librosa.util.nnls(_mel_basis(cfg), mel) * _magnitude_scale(cfg)
    lin = np.concatenate([lin, lin[:, -1:]], axis=1)  # the centred STFT's extra last column
    y = librosa.griffinlim(lin, n_iter=n_iter, hop_length=hop, win_length=cfg.n_fft,
                           n_fft=cfg.n_fft, window="hann", center=True,
                           length=num_frames * cfg.cols_per_frame * hop, random_state=seed)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def spectral_metrics(
    true: np.ndarray, pred: np.ndarray, cfg: AudioFeatureConfig
) -> dict[str, float]:
    """Reconstruction quality of patches (N, 1, F, W) vs (N, 1, F, W) in the mel-magnitude domain.

    ``lsd_db``: log-spectral distance, the RMS over bands of the dB difference, averaged over
    time columns (dB; lower is better). ``spectral_convergence``: ‖S − Ŝ‖_F / ‖S‖_F on the
    magnitudes (lower is better). Both on values clipped to the fixed dB range.
    """
    t_db = patch_to_db(true, cfg)
    p_db = patch_to_db(pred, cfg)
    # columns: move F last-but-one → (N, W, F)
    diff = (t_db - p_db)[:, 0].transpose(0, 2, 1)
    lsd = float(np.sqrt((diff ** 2).mean(axis=-1)).mean())
    t_mag, p_mag = 10.0 ** (t_db / 20.0), 10.0 ** (p_db / 20.0)
    sc = float(np.linalg.norm(t_mag - p_mag) / max(np.linalg.norm(t_mag), 1e-12))
    return {"lsd_db": lsd, "spectral_convergence": sc}
