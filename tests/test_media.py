"""pipeline.data.media: decoding frames and audio with decord, the PyAV fallback, and bad files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from conftest_media import (
    good_video,
    grayscale_video,
    hd_video,
    moving_square,
    six_channel_video,
    tone,
    truncated_copy,
)
from pipeline.data import media
from pipeline.data.media import MediaError, iter_frames, probe, read_audio, read_video
from pipeline.data.media_write import write_mp4

needs_decord = pytest.mark.skipif("decord" not in media.available_backends(), reason="no decord")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("media")
    impulse = np.zeros(32000, np.float32)
    impulse[8000:8040] = 0.9  # a click at 0.5 s
    return {
        "good": good_video(root / "good.mp4", num_frames=24, size=(48, 64)),
        "silent": good_video(root / "silent.mp4", num_frames=12, audio=False),
        "click": write_mp4(root / "click.mp4", moving_square(20, 32, 32), 10, impulse, 16000),
        "gray": grayscale_video(root / "gray.mp4", size=(32, 64)),
        "six": six_channel_video(root / "six.mp4", size=(32, 32)),
        "hd": hd_video(root / "hd.mp4", num_frames=3),
        "w48": good_video(root / "w48.mp4", num_frames=6, size=(48, 48)),
    }


def test_read_video_gives_the_written_frames_and_audio(videos):
    written = moving_square(24, 48, 64)
    clip = read_video(videos["good"], audio=True, audio_rate=16000)
    assert clip.frames.shape == (24, 48, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(10.0)
    assert np.abs(clip.frames.astype(int) - written).mean() < 3  # crf 15 on smooth content
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert 2.4 * 16000 <= len(clip.audio) <= 2.4 * 16000 + 2048  # AAC pads the last frame
    reference = tone(2.4, 16000)
    core = slice(2000, 30000)  # away from the encoder's start/end transients
    assert np.corrcoef(clip.audio[core], reference[core])[0, 1] > 0.99


def test_audio_is_aligned_and_resampled(videos):
    for rate in (16000, 8000, 22050):
        audio = read_audio(videos["click"], audio_rate=rate)
        energy = audio.astype(np.float64) ** 2
        centre = (energy * np.arange(len(audio))).sum() / energy.sum() / rate
        assert centre == pytest.approx(0.50125, abs=0.001)  # the click spans 0.5 s .. 0.5025 s
        assert len(audio) >= 2 * rate


@needs_decord
@pytest.mark.parametrize("name", ["good", "click", "gray", "six", "hd"])
def test_pyav_fallback_matches_decord(videos, name):
    a = read_video(videos[name], audio=True, audio_rate=16000, backend="decord")
    b = read_video(videos[name], audio=True, audio_rate=16000, backend="av")
    assert a.frames.shape == b.frames.shape
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 0.5
    assert a.fps == b.fps
    assert a.audio.shape == b.audio.shape
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-4)


@needs_decord
def test_auto_falls_back_to_pyav_where_decord_misreads(videos):
    # decord 0.6 returns (H, W, 4) frames for 48-pixel-wide videos; auto must not pass them on
    auto = read_video(videos["w48"], audio=False, backend="auto")
    ref = read_video(videos["w48"], audio=False, backend="av")
    assert auto.frames.shape == (6, 48, 48, 3)
    np.testing.assert_array_equal(auto.frames, ref.frames)


@pytest.mark.parametrize("backend", media.available_backends())
def test_chunks_and_frame_step(videos, backend):
    full = read_video(videos["good"], audio=False, backend=backend).frames
    chunks = list(iter_frames(videos["good"], frame_step=3, chunk_size=5, backend=backend))
    assert [len(c) for c in chunks] == [5, 3]  # 24 frames, every 3rd → 8
    np.testing.assert_array_equal(np.concatenate(chunks), full[::3])
    assert read_video(videos["good"], audio=False, frame_step=3, backend=backend).fps == pytest.approx(10 / 3)


def test_grayscale_becomes_three_equal_channels(videos):
    frames = read_video(videos["gray"], audio=False).frames
    assert frames.shape == (20, 32, 64, 3)
    assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1], frames[..., 2])
    assert frames.std() > 10  # not a blank image


def test_six_channel_audio_becomes_mono_at_the_asked_rate(videos):
    info = probe(videos["six"])
    assert info.audio_rate == 44100
    audio = read_audio(videos["six"], audio_rate=16000)
    assert audio.ndim == 1 and abs(len(audio) - 2.0 * 16000) < 0.05 * 16000
    spectrum = np.abs(np.fft.rfft(audio[4000:20000]))
    freqs = np.fft.rfftfreq(16000, 1 / 16000)
    peak = freqs[np.argmax(spectrum)]
    assert peak in {440.0 * k for k in range(1, 7)}  # one of the channels' tones, not noise


def test_one_frame_video(tmp_path):
    clip = read_video(good_video(tmp_path / "one.mp4", num_frames=1), audio=True, audio_rate=16000)
    assert clip.frames.shape == (1, 48, 64, 3) and clip.audio.ndim == 1


def test_hd_video_keeps_its_size(videos):
    clip = read_video(videos["hd"], audio=True, audio_rate=16000)
    assert clip.frames.shape == (3, 720, 1280, 3)


def test_video_without_audio_gives_none(videos):
    assert read_video(videos["silent"], audio=True, audio_rate=16000).audio is None
    assert probe(videos["silent"]).has_audio is False


@pytest.mark.parametrize("name", ["click", "six", "silent"])
def test_probe_with_audio_is_probe_plus_the_pyav_track(videos, name):
    info, audio = media.probe_with_audio(videos[name], audio_rate=22050)
    assert info == probe(videos[name])
    expected = read_audio(videos[name], audio_rate=22050, backend="av")
    if expected is None:
        assert audio is None
    else:
        np.testing.assert_array_equal(audio, expected)  # resampled, aligned, mono: the same samples


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone(0.5, 16000)[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda d, v: _write(d / "empty.mp4", b""), "empty file"),
        (lambda d, v: _write(d / "note.mp4", b"not a video\n"), "not a video"),
        (lambda d, v: truncated_copy(v["good"], d / "cut.mp4", 0.6), "truncated"),
        (lambda d, v: _audio_only(d / "sound.mp4"), "no video stream"),
        (lambda d, v: d / "missing.mp4", "not found"),
    ],
    ids=["zero-bytes", "text-named-mp4", "truncated", "audio-only", "missing"],
)
@pytest.mark.parametrize("backend", media.available_backends())
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, videos, make, words, backend):
    path = make(tmp_path, videos)
    with pytest.raises(MediaError) as caught:
        read_video(path, audio=True, audio_rate=16000, backend=backend)
    message = str(caught.value)
    assert message.startswith(str(path)) and words in message
    assert "\n" not in message and len(message) < 300
