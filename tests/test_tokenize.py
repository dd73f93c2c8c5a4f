"""The tokenize stage and the token-shard format (stages/tokenize.py, pipeline/tokens/shards.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.vq_autoencoder import VQAutoencoder, VQAutoencoderConfig
from pipeline.data.audio_features import AudioFeatureConfig
from pipeline.training.checkpoint import save_model
from pipeline.params import TokenizeParams
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.data.shards import NO_LAYOUT
from pipeline.tokens.shards import (
    StateBins,
    encode_token_sample,
    iter_token_samples,
    load_token_split,
    read_vocab,
)
from pipeline.tracking import RecordingLogger
from stages import tokenize

T, RES, FPS, RATE = 4, 16, 10, 16000
AE = dict(base_channels=8, channel_mult=(1, 2, 2), num_levels=2, latent_dim=8, codebook_size=32,
          context_frames=0, flow_radius=1, flow_hidden=8, flow_corr_dim=4)


def params(**kw) -> TokenizeParams:
    base = dict(state_bins=16, state=True, audio=True, layout=True, batch_size=3,
                shard_max_bytes=6000, device="cpu")
    return TokenizeParams(**{**base, **kw})


def make_world(root: Path, layouts: bool = True, unlabelled: tuple = ()) -> dict[str, Path]:
    """Tiny clips (2 splits, 16×16, T = 4, audio, positions, layouts) and random upstream models;
    ``unlabelled``: (clip key, frame) pairs whose layout is NO_LAYOUT."""
    rng = np.random.default_rng(0)
    clips = root / "clips"
    json.dump(["a", "b"], open(_mk(clips) / "classes.json", "w"))
    pos_dir = _mk(root / "positions")
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split, n_videos in (("train", 3), ("val", 1)):
        rows = {"key": [], "t": [], "x": [], "y": []}
        with ShardWriter(clips / split, 40_000) as writer:
            for v in range(n_videos):
                for c in range(2):
                    key = f"{split}{v}_{c:04d}"
                    frames = rng.integers(0, 256, (T, RES, RES, 3), dtype=np.uint8)
                    t_axis = np.arange(int(T / FPS * RATE)) / RATE
                    audio = (0.3 * np.sin(2 * np.pi * (300 + 100 * v) * t_axis)).astype(np.float32)
                    layout = rng.integers(0, 3, (T, RES, RES), dtype=np.uint8) if layouts else None
                    for t in [t for k, t in unlabelled if k == key]:
                        layout[t] = NO_LAYOUT
                    meta = {"video_id": f"{split}{v}", "label": "ab"[v % 2], "label_id": v % 2,
                            "fps": FPS, "audio_rate": RATE, "first_frame": 4 * c, "frame_step": 1}
                    writer.write(encode_sample(key, frames, meta, audio=audio, layout=layout))
                    xy = rng.uniform(0, RES - 1, (T, 2))
                    for t in range(T):
                        if (split, v, c, t) == ("train", 0, 1, 2):
                            continue  # one frame without a trajectory row → null state
                        rows["key"].append(key)
                        rows["t"].append(t)
                        rows["x"].append(float(xy[t, 0]))
                        rows["y"].append(float(xy[t, 1]))
        pq.write_table(pa.table(rows), pos_dir / f"{split}.parquet")

    torch.manual_seed(0)
    models = _mk(root / "models")
    ae_cfg = AutoencoderConfig(**AE)
    save_model(models / "autoencoder.pt", ae_cfg, CCVSAutoencoder(ae_cfg).state_dict())
    snd = VQAutoencoderConfig(in_channels=1, out_channels=1, channels=(4, 4, 4), codebook_size=16, dim=8)
    save_model(models / "sound_vq.pt", {"model": snd, "features": AudioFeatureConfig()},
               VQAutoencoder(snd).state_dict(), available=True)
    if layouts:
        lay = VQAutoencoderConfig(in_channels=3, out_channels=3, channels=(4, 4), codebook_size=8, dim=8)
        save_model(models / "layout_vq.pt", {"model": lay}, VQAutoencoder(lay).state_dict(),
                   available=True)
    else:
        save_model(models / "layout_vq.pt", {}, {}, available=False, reason="no layouts in the data")
    return {"clips": clips, "autoencoder": models / "autoencoder.pt",
            "sound_vq": models / "sound_vq.pt", "layout_vq": models / "layout_vq.pt",
            "positions": pos_dir}


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def tokenize_to(world: dict[str, Path], out: Path, p: TokenizeParams | None = None) -> dict:
    return tokenize.run(p or params(), world["clips"], world["autoencoder"], out, RecordingLogger(),
                        sound_vq=world["sound_vq"], layout_vq=world["layout_vq"],
                        positions=world["positions"])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("tok"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tokenize_twice_gives_identical_files(world, tmp_path):
    m = tokenize_to(world, tmp_path / "a")
    tokenize_to(world, tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys() and a == b
    shards = [k for k in a if k.endswith(".tar")]
    assert len([s for s in shards if s.startswith("train/")]) >= 2  # the size cap split shards
    assert m["train_clips"] == 6 and m["val_clips"] == 2 and m["test_clips"] == 0


def test_tokens_are_the_autoencoders_own(world, tmp_path):
    tokenize_to(world, tmp_path / "tok")
    vocab = read_vocab(tmp_path / "tok")
    assert vocab["frame"] == {"vocab": 32, "height": 4, "width": 4, "dtype": "int16"}
    assert vocab["audio"]["tokens_per_frame"] == 16 and vocab["layout"]["tokens_per_frame"] == 16
    assert vocab["label"] == {"num_classes": 2, "classes": ["a", "b"]} and vocab["absent"] == {}
    from pipeline.training.checkpoint import load_model
    from pipeline.data.shards import iter_clips

    cfg, state, _ = load_model(world["autoencoder"])
    ae = CCVSAutoencoder(AutoencoderConfig(**{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in cfg.items()}))
    ae.load_state_dict(state)
    ae.eval()
    clip = next(iter_clips(world["clips"], "val"))
    tok = next(iter_token_samples(tmp_path / "tok", "val"))
    assert tok["key"] == clip["key"] and tok["frames"].dtype == np.int16
    x = torch.from_numpy(clip["frames"][2:3]).movedim(-1, -3).float() / 127.5 - 1
    with torch.no_grad():
        own = ae.tokenize(x)[0].numpy()
    np.testing.assert_array_equal(tok["frames"][2], own)
    np.testing.assert_array_equal(tok["end_frame"], tok["frames"][-1])
    assert tok["meta"]["label_id"] == 0 and tok["audio"].shape == (T, 16)
    assert tok["layout"].shape == (T, 16) and tok["state"].shape == (T, 2)


def test_missing_annotations_are_null_or_absent(tmp_path):
    world = make_world(tmp_path / "w", layouts=False)
    world["sound_vq"] = tmp_path / "nope.pt"
    tokenize_to(world, tmp_path / "tok")
    vocab = read_vocab(tmp_path / "tok")
    assert vocab["layout"] is None and vocab["absent"]["layout"] == "no layouts in the data"
    assert vocab["audio"] is None and "no model file" in vocab["absent"]["audio"]
    split = load_token_split(tmp_path / "tok", "train", vocab)
    assert split.layout is None and split.audio is None
    k = split.keys.index("train0_0001")
    assert list(split.state[k, 2]) == [16, 16]  # the frame without a trajectory row → null id B
    assert (split.state[np.arange(len(split)) != k] < 16).all()


def test_frames_nobody_labelled_get_null_layout_tokens(tmp_path):
    """A layout frame of NO_LAYOUT (Cityscapes: one labelled frame per snippet) → null ids for that
    frame only; the clip's labelled frames keep their codes (the same as with every frame labelled)."""
    full = make_world(tmp_path / "full")
    sparse = make_world(tmp_path / "sparse", unlabelled=(("train1_0000", 0), ("train1_0000", 3)))
    tokenize_to(full, tmp_path / "t_full")
    tokenize_to(sparse, tmp_path / "t_sparse")
    vocab = read_vocab(tmp_path / "t_sparse")
    a = load_token_split(tmp_path / "t_full", "train", vocab)
    b = load_token_split(tmp_path / "t_sparse", "train", vocab)
    k = b.keys.index("train1_0000")
    null = vocab["layout"]["null_id"]
    assert (b.layout[k, [0, 3]] == null).all() and (b.layout[k, [1, 2]] < null).all()
    np.testing.assert_array_equal(b.layout[k, [1, 2]], a.layout[k, [1, 2]])
    others = np.arange(len(b)) != k
    np.testing.assert_array_equal(b.layout[others], a.layout[others])


def test_state_bins_round_trip_within_half_a_bin():
    bins = StateBins.for_frame(128, 64, 64)
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.5, 63.4999, (1000, 2))
    q = bins.quantize(xy)
    assert q.min() >= 0 and q.max() <= 127
    half = (64.0 / 128) / 2
    assert np.abs(bins.dequantize(q) - xy).max() <= half + 1e-6
    assert list(bins.quantize(np.array([[np.nan, 1e9]]))[0]) == [128, 127]  # NaN → null, clamp
    assert np.isnan(bins.dequantize(np.array([[128, 0]]))[0, 0])


def test_malformed_token_sample_is_refused():
    with pytest.raises(ValueError, match="frame codes must be in"):
        encode_token_sample("k_0000", np.full((2, 2, 2), 40), {}, frame_vocab=32)
    with pytest.raises(ValueError, match="state must be"):
        encode_token_sample("k_0000", np.zeros((2, 2, 2)), {}, frame_vocab=32,
                            state=np.zeros((3, 2)))


def test_missing_autoencoder_is_one_line_error(world, tmp_path):
    with pytest.raises(tokenize.StageError, match="autoencoder model not found"):
        tokenize.run(params(), world["clips"], tmp_path / "none.pt", tmp_path / "tok",
                     RecordingLogger())


def test_refuses_to_replace_a_foreign_folder(world, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("x")
    with pytest.raises(tokenize.StageError, match="not a tokenize output"):
        tokenize_to(world, tmp_path / "out")
    assert (tmp_path / "out" / "precious.txt").exists()


def test_unlabelled_clips_read_back_with_the_label_null_id(tmp_path):
    from pipeline.tokens.shards import TOKEN_PATTERN, encode_token_sample, load_token_split

    vocab = {"frame": {"vocab": 8, "height": 2, "width": 2, "dtype": "int16"}, "end_frame": True,
             "label": {"num_classes": 2, "classes": ["cats", "dogs"]}, "absent": {}}
    with ShardWriter(tmp_path / "test", 10**7, pattern=TOKEN_PATTERN) as writer:
        for i, label in enumerate([1, -1, 0]):  # -1: a video at the top of a folder source
            codes = np.full((3, 2, 2), i, np.int16)
            writer.write(encode_token_sample(f"v{i}_0000", codes, {"label_id": label},
                                             frame_vocab=8))
    split = load_token_split(tmp_path, "test", vocab)
    assert split.label.tolist() == [1, 2, 0]  # 2 = num_classes: "no class" to T
