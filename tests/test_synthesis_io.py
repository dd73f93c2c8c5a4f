"""Synthesis inputs and outputs (pipeline/synthesis/models.py) and the shared token conversions
(pipeline/tokens/annotations.py): tiny models in tmp_path, every reader on files written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from ccvs_models.vq_autoencoder import VQAutoencoder, VQAutoencoderConfig
from pipeline.tokens import annotations as at
from pipeline.synthesis import models as sio
from pipeline.data.audio_features import AudioFeatureConfig
from pipeline.training.checkpoint import save_model
from pipeline.data.media_write import write_gif, write_mp4
from pipeline.data.shard_writing import ShardWriter
from pipeline.tokens.shards import TOKEN_PATTERN, StateBins, encode_token_sample
from pipeline.synthesis.readers import SynthesisInputError
from pipeline.synthesis import readers
from pipeline.synthesis import controls as ctl
from pipeline.synthesis import writers

RES, Q, GRID, FPS, RATE, N = 16, 32, 4, 10, 16000, 4
AE = dict(base_channels=8, channel_mult=(1, 2, 2), num_levels=2, latent_dim=8, codebook_size=Q,
          context_frames=0, flow_radius=1, flow_hidden=8, flow_corr_dim=4)
TCFG = dict(frame_vocab=Q, frame_height=GRID, frame_width=GRID, num_frames=N, state=True,
            state_bins=16, audio_tokens_per_frame=16, audio_vocab=16, layout_tokens_per_frame=16,
            layout_vocab=8, num_classes=2, end_frame=True, n_layer=1, n_head=2, n_embd=16)
VOCAB = {"frame": {"vocab": Q, "height": GRID, "width": GRID, "dtype": "int16"},
         "end_frame": True, "state": StateBins.for_frame(16, RES, RES).to_dict(),
         "audio": {"vocab": 16, "tokens_per_frame": 16, "null_id": 16},
         "layout": {"vocab": 8, "tokens_per_frame": 16, "null_id": 8},
         "label": {"num_classes": 2, "classes": ["push", "pull"]}, "absent": {}}


def _save_transformer(path: Path, **over) -> Path:
    torch.manual_seed(0)
    cfg = TransformerConfig(**{**TCFG, **over})
    return save_model(path, cfg, CCVSTransformer(cfg).state_dict(), vocab=VOCAB)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Random tiny models + a tokens folder (vocab.json and one token shard carrying fps)."""
    root = tmp_path_factory.mktemp("synio")
    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(**AE)
    save_model(root / "autoencoder.pt", ae_cfg, CCVSAutoencoder(ae_cfg).state_dict())
    snd = VQAutoencoderConfig(in_channels=1, out_channels=1, channels=(4, 4, 4), codebook_size=16,
                              dim=8)
    save_model(root / "sound_vq.pt", {"model": snd, "features": AudioFeatureConfig()},
               VQAutoencoder(snd).state_dict(), available=True)
    lay = VQAutoencoderConfig(in_channels=3, out_channels=3, channels=(4, 4), codebook_size=8,
                              dim=8)
    save_model(root / "layout_vq.pt", {"model": lay}, VQAutoencoder(lay).state_dict(),
               available=True)
    _save_transformer(root / "transformer.pt")
    tokens = root / "tokens"
    tokens.mkdir()
    (tokens / "vocab.json").write_text(json.dumps(VOCAB))
    with ShardWriter(tokens / "train", 100_000, pattern=TOKEN_PATTERN) as writer:
        writer.write(encode_token_sample("v0_0000", np.zeros((N, GRID, GRID)),
                                         {"fps": FPS, "label_id": 1}, frame_vocab=Q))
    return {"root": root, "transformer": root / "transformer.pt",
            "autoencoder": root / "autoencoder.pt", "sound_vq": root / "sound_vq.pt",
            "layout_vq": root / "layout_vq.pt", "tokens": tokens}


@pytest.fixture(scope="module")
def models(world) -> sio.SynthesisModels:
    return sio.load_models(world["transformer"], world["autoencoder"], world["tokens"],
                           world["sound_vq"], world["layout_vq"])


def smooth_frames(t: int, h: int, w: int) -> np.ndarray:
    """(t, h, w, 3) uint8 gradients that shift with t (compress well: mp4 stays close)."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = [np.stack([(xx * 255 // max(w - 1, 1) + 8 * i) % 256, yy * 255 // max(h - 1, 1),
                     np.full_like(xx, 40 * i % 256)], -1) for i in range(t)]
    return np.asarray(out, np.uint8)


# --------------------------------------------------------------------------- models


def test_load_models_reads_conditioning_vocab_and_fps(models, world):
    assert models.conditioning == frozenset(sio.CONTROL_KINDS)
    assert models.resolution == (RES, RES) and models.token_grid == (GRID, GRID)
    assert models.classes == ["push", "pull"] and models.state_bins.bins == 16
    assert models.fps == FPS  # from the token sample's meta
    assert models.sound is not None and models.layout_classes == 3
    assert not models.transformer.training
    # the vocab stored in T's meta serves when no tokens folder is given
    alone = sio.load_models(world["transformer"], world["autoencoder"], None, fps=5)
    assert alone.vocab == VOCAB and alone.fps == 5 and alone.sound is None
    assert "no model file" in alone.absent["audio"]


def test_transformer_that_does_not_match_the_autoencoder_is_refused(world, tmp_path):
    bad = _save_transformer(tmp_path / "t64.pt", frame_vocab=64)
    with pytest.raises(SynthesisInputError) as err:
        sio.load_models(bad, world["autoencoder"], world["tokens"])
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and str(world["autoencoder"]) in msg
    assert "q=64" in msg and "q=32" in msg and "4×4 tokens" in msg
    grid = _save_transformer(tmp_path / "t8.pt", frame_height=8, frame_width=8)
    with pytest.raises(SynthesisInputError, match=r"expects q=32, 8×8 tokens; .*4×4 tokens"):
        sio.load_models(grid, world["autoencoder"], world["tokens"])
    with pytest.raises(SynthesisInputError, match="transformer model not found"):
        sio.load_models(tmp_path / "none.pt", world["autoencoder"], world["tokens"])


# --------------------------------------------------------------------------- readers


def test_start_frames_from_mp4_are_resized_with_a_note(tmp_path):
    raw = smooth_frames(6, 24, 32)
    path = write_mp4(tmp_path / "start.mp4", raw, FPS)
    frames, notes = readers.read_start_frames(path, 3, (RES, RES), fps=FPS)
    assert frames.shape == (3, RES, RES, 3) and frames.dtype == np.uint8
    assert any("resized start frames 32×24 → 16×16 (short side scaled, center crop)" in n
               for n in notes)
    expected = np.stack([readers.fit_image(f, (RES, RES)) for f in raw[:3]])
    assert np.abs(frames.astype(int) - expected).mean() < 4  # the frames, in order, not others
    with pytest.raises(SynthesisInputError, match=r"start\.mp4: start frames are 32×24, the "
                                                  r"model works at 16×16 \(resizing is off\)"):
        readers.read_start_frames(path, 3, (RES, RES), resize=False)
    with pytest.raises(SynthesisInputError, match=r"start\.mp4: has 6 frames, 8 start frames"):
        readers.read_start_frames(path, 8, (RES, RES))
    _, notes = readers.read_start_frames(path, 1, (RES, RES), fps=25)
    assert any("10 fps, the model's data 25 fps" in n for n in notes)


def test_start_frames_from_gif_and_image_folder(tmp_path):
    colours = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200], [90, 90, 90]], np.uint8)
    frames = np.broadcast_to(colours[:, None, None], (4, RES, RES, 3)).copy()
    gif = write_gif(tmp_path / "start.gif", frames, FPS)
    got, notes = readers.read_start_frames(gif, 3, (RES, RES))
    assert got.shape == (3, RES, RES, 3) and notes == []
    np.testing.assert_array_equal(got, frames[:3])
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, c in zip(("c.png", "a.png", "b.jpg"), colours):  # sorted: a, b, c
        Image.fromarray(np.broadcast_to(c, (8, 8, 3)).copy()).save(folder / name)
    (folder / "notes.txt").write_text("ignored")
    got, notes = readers.read_start_frames(folder, 2, (RES, RES))
    assert got.shape == (2, RES, RES, 3)
    np.testing.assert_array_equal(got[0], np.broadcast_to(colours[1], (RES, RES, 3)))
    assert np.abs(got[1].astype(int) - colours[2]).max() <= 3  # jpg
    assert any("a.png … b.jpg" in n for n in notes) and any("8×8 → 16×16" in n for n in notes)
    with pytest.raises(SynthesisInputError, match=r"imgs: 3 png/jpg images, 5 start frames"):
        readers.read_start_frames(folder, 5, (RES, RES))


def test_end_frame_png_resize_and_size_error(tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 180, 255
    Image.fromarray(rgba).save(tmp_path / "end.png")
    img, notes = readers.read_image(tmp_path / "end.png", (RES, RES))
    assert img.shape == (RES, RES, 3) and (img[..., 0] == 180).all() and (img[..., 1] == 0).all()
    assert notes == [f"{tmp_path / 'end.png'}: resized end frame 32×32 → 16×16 (scaled)"]
    with pytest.raises(SynthesisInputError, match=r"end\.png: end frame is 32×32, the model "
                                                  r"works at 16×16 \(resizing is off\)"):
        readers.read_image(tmp_path / "end.png", (RES, RES), resize=False)


def test_trajectory_round_trips_within_half_a_bin(tmp_path):
    bins = StateBins.for_frame(16, RES, RES)
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.5, RES - 0.501, (N, 2))
    path = tmp_path / "traj.csv"
    path.write_text("t,x,y\n" + "".join(f"{i},{float(x)!r},{float(y)!r}\n"
                                         for i, (x, y) in enumerate(xy)))
    got, notes = readers.read_trajectory(path, N, bins)
    assert got.shape == (N, 2) and notes == []
    half = RES / 16 / 2
    assert np.abs(bins.dequantize(got) - xy).max() <= half + 1e-5
    path.write_text("x,y\n1,2\n,\n100,3\n-9,4\n")
    got, notes = readers.read_trajectory(path, N, bins)
    assert list(got[1]) == [16, 16] and list(got[2]) == [15, 3] and got[3, 0] == 0
    assert any("1 rows without a position" in n for n in notes)
    assert any("2 positions outside the frame" in n for n in notes)


@pytest.mark.parametrize("text, message", [
    ("x,y\n1,2\n3,4\n5,6\n", r"traj\.csv: 3 trajectory rows, expected 4"),
    ("a,b\n1,2\n", r"traj\.csv: needs a header with columns x,y \(got a,b\)"),
    ("x,y\n1,2\n3,oops\n1,1\n1,1\n", r"traj\.csv: line 3: y='oops' is not a number"),
])
def test_bad_trajectory_is_one_line_naming_the_file(tmp_path, text, message):
    (tmp_path / "traj.csv").write_text(text)
    with pytest.raises(SynthesisInputError, match=message):
        readers.read_trajectory(tmp_path / "traj.csv", N, StateBins.for_frame(16, RES, RES))


def test_class_name_to_id():
    assert readers.class_id("pull", ["push", "pull"], 2) == 1
    assert readers.class_id(0, ["push", "pull"], 2) == 0 and readers.class_id("1", [], 2) == 1
    with pytest.raises(SynthesisInputError, match=r"class 'jump': unknown; the model knows: "
                                                  r"push, pull"):
        readers.class_id("jump", ["push", "pull"], 2)
    with pytest.raises(SynthesisInputError, match="knows: ids 0..1"):
        readers.class_id(2, [], 2)


def test_sound_from_wav_and_mp4(tmp_path):
    t = np.arange(int(0.55 * 22050)) / 22050
    sf.write(tmp_path / "s.wav", np.stack([np.sin(2 * np.pi * 440 * t)] * 2, 1) * 0.5, 22050)
    audio, notes = readers.read_sound(tmp_path / "s.wav", N, FPS, RATE)
    assert audio.shape == (int(N / FPS * RATE),) and audio.dtype == np.float32
    assert any("22050 Hz → 16000 Hz" in n for n in notes)
    assert any("first 0.40 s of the 0.55 s" in n for n in notes)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * RATE / len(audio) - 440) < 5  # the tone survived resampling
    sf.write(tmp_path / "short.wav", np.zeros(int(0.2 * RATE)), RATE)
    with pytest.raises(SynthesisInputError, match=r"short\.wav: the audio track lasts 0\.20 s, "
                                                  r"shorter than the requested video \(4 frames "
                                                  r"at 10 fps = 0\.40 s\)"):
        readers.read_sound(tmp_path / "short.wav", N, FPS, RATE)
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(int(0.6 * RATE)) / RATE)).astype(np.float32)
    mp4 = write_mp4(tmp_path / "v.mp4", smooth_frames(6, RES, RES), FPS, tone, RATE)
    audio, _ = readers.read_sound(mp4, N, FPS, RATE)
    assert audio.shape == (int(N / FPS * RATE),) and np.abs(audio).max() > 0.1
    silent = write_mp4(tmp_path / "silent.mp4", smooth_frames(6, RES, RES), FPS)
    with pytest.raises(SynthesisInputError, match=r"silent\.mp4: has no audio track"):
        readers.read_sound(silent, N, FPS, RATE)


def test_layouts_from_npz(tmp_path):
    maps = np.zeros((6, 32, 32), np.uint8)
    maps[:, 8:24, 8:24] = 2
    np.savez(tmp_path / "lay.npz", layout=maps)
    got, notes = readers.read_layouts(tmp_path / "lay.npz", N, (RES, RES), 3)
    assert got.shape == (N, RES, RES) and set(np.unique(got)) == {0, 2}  # nearest: no new labels
    assert (got[:, 4:12, 4:12] == 2).all() and got[0, 0, 0] == 0
    assert any("first 4 of 6" in n for n in notes) and any("32×32 → 16×16" in n for n in notes)
    with pytest.raises(SynthesisInputError, match=r"lay\.npz: layout labels span 0\.\.2, the "
                                                  r"layout model knows 0\.\.1"):
        readers.read_layouts(tmp_path / "lay.npz", N, (RES, RES), 2)
    with pytest.raises(SynthesisInputError, match=r"lay\.npz: 6 layout frames, the video has 8"):
        readers.read_layouts(tmp_path / "lay.npz", 8, (RES, RES), 3)
    np.savez(tmp_path / "two.npz", a=maps, b=maps)
    with pytest.raises(SynthesisInputError, match=r"two\.npz: needs an array named 'layout'"):
        readers.read_layouts(tmp_path / "two.npz", N, (RES, RES), 3)


@pytest.mark.parametrize("name, reader", [
    ("bad.png", lambda p: readers.read_image(p, (RES, RES))),
    ("bad.wav", lambda p: readers.read_sound(p, N, FPS, RATE)),
    ("bad.npz", lambda p: readers.read_layouts(p, N, (RES, RES), 3)),
    ("bad.mp4", lambda p: readers.read_start_frames(p, 1, (RES, RES))),
    ("bad.gif", lambda p: readers.read_start_frames(p, 1, (RES, RES))),
])
def test_unreadable_files_are_one_line_errors(tmp_path, name, reader):
    path = tmp_path / name
    path.write_bytes(b"this is not what the name says" * 10)
    with pytest.raises(SynthesisInputError) as err:
        reader(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SynthesisInputError, match="not found"):
        reader(tmp_path / f"missing-{name}")


# --------------------------------------------------------------------------- controls


@pytest.fixture(scope="module")
def user_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user")
    Image.fromarray(smooth_frames(1, 32, 32)[0]).save(root / "end.png")
    (root / "traj.csv").write_text("x,y\n" + "".join(f"{i},{2 * i}\n" for i in range(N)))
    t = np.arange(int(N / FPS * RATE)) / RATE
    sf.write(root / "sound.wav", 0.4 * np.sin(2 * np.pi * 500 * t), RATE)
    maps = np.zeros((N, RES, RES), np.uint8)
    maps[:, :8] = 1
    np.savez(root / "lay.npz", layout=maps)
    return {"end": root / "end.png", "traj": root / "traj.csv", "sound": root / "sound.wav",
            "layouts": root / "lay.npz"}


def test_control_tokens_are_the_models_own(models, user_files):
    tok, notes = ctl.control_tokens(models, N, end_frame=user_files["end"], label="pull",
                                    trajectory=user_files["traj"], sound=user_files["sound"],
                                    layouts=user_files["layouts"])
    assert tok.label == 1 and tok.end_time is None
    end, _ = readers.read_image(user_files["end"], (RES, RES))
    np.testing.assert_array_equal(tok.end_frame, at.frame_tokens(models.autoencoder, end[None], 1,
                                                                 "cpu")[0])
    assert tok.end_frame.shape == (GRID, GRID) and tok.state.shape == (N, 2)
    np.testing.assert_array_equal(tok.state, models.state_bins.quantize(
        np.stack([np.arange(N), 2 * np.arange(N)], 1)))
    assert tok.audio.shape == (N, 16) and 0 <= tok.audio.min() and tok.audio.max() < 16
    audio, _ = readers.read_sound(user_files["sound"], N, FPS, RATE)
    np.testing.assert_array_equal(tok.audio, at.sound_codes(
        models.sound, models.sound_features, audio, RATE, FPS, N, 8, "cpu"))
    assert tok.layout.shape == (N, 16) and tok.layout.max() < 8
    assert any("resized end frame" in n for n in notes)


def test_inputs_are_checked_before_any_model_runs(models, user_files, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model ran before the inputs were checked")

    monkeypatch.setattr(ctl, "frame_tokens", boom)
    monkeypatch.setattr(ctl, "sound_codes", boom)
    (tmp_path / "short.csv").write_text("x,y\n1,1\n")
    with pytest.raises(SynthesisInputError, match=r"short\.csv: 1 trajectory rows, expected 4"):
        ctl.control_tokens(models, N, end_frame=user_files["end"], sound=user_files["sound"],
                           trajectory=tmp_path / "short.csv")
    with pytest.raises(SynthesisInputError, match=r"class 'jump': unknown"):
        ctl.control_tokens(models, N, end_frame=user_files["end"], label="jump")
    with pytest.raises(SynthesisInputError, match=r"sound\.wav: the audio track lasts 0\.40 s"):
        ctl.control_tokens(models, 8, end_frame=user_files["end"], sound=user_files["sound"])
    with pytest.raises(SynthesisInputError, match=r"end\.png: end frame is 32×32"):
        ctl.control_tokens(models, N, end_frame=user_files["end"], resize=False)


def test_a_control_the_transformer_was_not_trained_with_is_refused(world, user_files, tmp_path):
    plain = _save_transformer(tmp_path / "plain.pt", state=False, audio_tokens_per_frame=0,
                              layout_tokens_per_frame=0, num_classes=0, end_frame=False)
    bare = sio.load_models(plain, world["autoencoder"], world["tokens"], world["sound_vq"])
    assert bare.conditioning == frozenset() and bare.sound is None  # not loaded: T has no audio
    for kw, what in ((dict(trajectory=user_files["traj"]),
                      r"traj\.csv: .*plain\.pt has no state tokens \(trained without "
                      r"transformer\.conditioning\.state\)"),
                     (dict(sound=user_files["sound"]), r"sound\.wav: .*has no audio tokens"),
                     (dict(label="push"), r"class 'push': .*has no class token"),
                     (dict(end_frame=user_files["end"]), r"end\.png: .*has no end-frame tokens"),
                     (dict(layouts=user_files["layouts"]), r"lay\.npz: .*has no layout tokens")):
        with pytest.raises(SynthesisInputError, match=what):
            ctl.control_tokens(bare, N, **kw)
    # T has audio tokens, but no sound model was loaded to encode a file
    nosound = sio.load_models(world["transformer"], world["autoencoder"], world["tokens"])
    with pytest.raises(SynthesisInputError, match=r"sound\.wav: the sound VQ model is needed"):
        ctl.control_tokens(nosound, N, sound=user_files["sound"])


def test_build_controls_gives_token_controls(models, user_files):
    pytest.importorskip("ccvs_models.sampler")
    controls, _ = ctl.build_controls(models, N, trajectory=user_files["traj"], label="push")
    assert controls.state.shape == (1, N, 2) and controls.state.dtype == torch.long
    assert controls.label.tolist() == [0] and controls.audio is None and controls.end_frame is None


def _token_sample(key: str, label: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, Q, (6, GRID, GRID))
    return {"key": key, "frames": frames, "end_frame": frames[-1],
            "state": rng.integers(0, 17, (6, 2)), "audio": rng.integers(0, 17, (6, 16)),
            "layout": rng.integers(0, 9, (6, 16)), "meta": {"label_id": label, "missing": []}}


def test_clip_controls_fill_only_the_asked_kinds(models):
    s = _token_sample("v0_0000", 1, 0)
    tok = ctl.clip_control_tokens(models, s, kinds={"state"})
    np.testing.assert_array_equal(tok.state, s["state"])
    assert tok.audio is None and tok.layout is None and tok.label is None and tok.end_frame is None
    full = ctl.clip_control_tokens(models, s, num_frames=N)
    np.testing.assert_array_equal(full.end_frame, s["frames"][N - 1])  # the output's last frame
    np.testing.assert_array_equal(full.audio, s["audio"][:N])
    assert full.label == 1 and full.layout.shape == (N, 16)
    assert ctl.clip_control_tokens(models, s, {"end_frame"}).end_frame.tolist() == \
        s["end_frame"].tolist()
    del s["state"]
    with pytest.raises(SynthesisInputError, match="clip v0_0000: no state.npy"):
        ctl.clip_control_tokens(models, s, kinds={"state"})


def test_clip_controls_batch(models):
    pytest.importorskip("ccvs_models.sampler")
    samples = [_token_sample(f"v{i}_0000", i % 2, i) for i in range(3)]
    controls = ctl.clip_controls(models, samples, kinds={"state", "label"}, num_frames=N)
    assert controls.state.shape == (3, N, 2) and controls.label.tolist() == [0, 1, 0]
    assert controls.audio is None and controls.layout is None


# --------------------------------------------------------------------------- writers


def test_write_samples_writes_readable_videos_and_sheets(tmp_path):
    from pipeline.data.media import read_video

    b, s, n = 2, 3, 5
    raw = np.stack([np.stack([smooth_frames(n, RES, RES) // (1 + j + i)
                              for j in range(s)]) for i in range(b)])  # (B, S, n, H, W, 3)
    frames = torch.from_numpy(raw).permute(0, 1, 2, 5, 3, 4).float() / 127.5 - 1
    paths = writers.write_samples(tmp_path / "out", frames, FPS, ["clipA", "clipB"])
    assert len(paths) == b * s * 2 + b and all(p.exists() for p in paths)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temps
    video = read_video(tmp_path / "out" / "clipB_sample02.mp4", audio=False)
    assert video.frames.shape == (n, RES, RES, 3)
    assert np.abs(video.frames.astype(int) - raw[1, 2]).mean() < 4
    with Image.open(tmp_path / "out" / "clipA_sample01.gif") as gif:
        assert gif.n_frames == n and gif.size == (RES, RES)
    sheet = np.asarray(Image.open(tmp_path / "out" / "clipA_sheet.png"))
    assert sheet.shape == (s * RES + (s - 1) * 2, n * RES + (n - 1) * 2, 3)
    row, col = 2, 3  # sample 2, time 3
    y, x = row * (RES + 2), col * (RES + 2)
    np.testing.assert_array_equal(sheet[y:y + RES, x:x + RES], raw[0, row, col])
    with pytest.raises(ValueError, match="distinct names"):
        writers.write_samples(tmp_path / "o2", frames, FPS, ["same", "same"])


# --------------------------------------------------------------------------- annotation tokens


def test_annotation_token_conversions(models):
    bins = models.state_bins
    state = at.trajectory_state(np.array([[1.0, 2.0], [np.nan, 3.0]]), 4, bins)
    assert state.shape == (4, 2) and (state[0] < 16).all() and state[1, 0] == bins.null_id
    assert state[1, 1] == 3 and (state[2:] == bins.null_id).all()  # rows past T' are unknown
    with pytest.raises(ValueError, match=r"layout labels must be in \[0, 3\)"):
        at.layout_codes(models.layout, np.full((1, RES, RES), 3, np.uint8), 4, "cpu")
    assert at.sound_tokens_per_frame(models.sound, models.sound_features) == 16
    assert at.layout_tokens_per_frame(models.layout, RES, RES) == 16
    with pytest.raises(at.UpstreamError, match="autoencoder model not found"):
        at.load_upstream(Path("/nonexistent/ae.pt"))
