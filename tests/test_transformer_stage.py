"""The transformer stage and its training pieces (stages/transformer.py, pipeline/training/transformer.py)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ccvs_models.sequence_layout import TokenKind
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from pipeline.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from pipeline.params import TransformerParams
from pipeline.data.shard_writing import ShardWriter
from pipeline.tokens.shards import TOKEN_PATTERN, StateBins, encode_token_sample, load_token_split
from pipeline.tracking import RecordingLogger
from pipeline.training.config import LoopConfig
from pipeline.training.transformer import (
    Conditioning,
    TransformerArch,
    conditioning_dropout,
    evaluate_batches,
    fixed_windows,
    model_config,
    unigram_baseline,
    window_batch,
)
from stages import transformer as stage

T, H, W, Q = 6, 2, 2, 8
VOCAB = {"frame": {"vocab": Q, "height": H, "width": W, "dtype": "int16"}, "end_frame": True,
         "state": StateBins.for_frame(8, 16, 16).to_dict(),
         "audio": {"vocab": 4, "tokens_per_frame": 2, "null_id": 4}, "layout": None,
         "label": {"num_classes": 2, "classes": ["a", "b"]}, "absent": {"layout": "none"}}


def make_tokens(root: Path, max_bytes: int = 10_000) -> Path:
    """Token shards of a predictable world: frame t's codes are (t + offset) mod q."""
    rng = np.random.default_rng(0)
    (root / "vocab.json").write_text(json.dumps(VOCAB))
    for split, n in (("train", 10), ("val", 3)):
        with ShardWriter(root / split, max_bytes, pattern=TOKEN_PATTERN) as writer:
            for i in range(n):
                off = rng.integers(0, Q, (H, W))
                frames = (np.arange(T)[:, None, None] + off[None]) % Q
                writer.write(encode_token_sample(
                    f"{split}{i}_0000", frames, {"label_id": i % 2}, frame_vocab=Q,
                    state=rng.integers(0, 9, (T, 2)), audio=rng.integers(0, 5, (T, 2))))
    return root


def params(steps: int = 6, **loop) -> TransformerParams:
    arch = TransformerArch(num_frames=4, n_layer=1, n_head=2, n_embd=16, mlp_ratio=2, dropout=0.0,
                           attn_dropout=0.0, bias=True, pos_embedding="decomposed", max_end_gap=8)
    cond = Conditioning(state=True, audio=True, layout=True, label=True, end_frame=True,
                        drop_state=0.5, drop_audio=0.5, drop_layout=0.5, drop_label=0.5,
                        drop_end_frame=0.5)
    lp = dict(steps=steps, log_every=2, eval_every=3, ckpt_every=3, keep_checkpoints=2,
              ema_decay=0.0, bf16=False, device="cpu", seed=0, grad_clip=1.0)
    return TransformerParams(model=arch, conditioning=cond, batch_size=4, lr=3e-3, min_lr=3e-4,
                             warmup_steps=2, weight_decay=0.01, betas=(0.9, 0.95), val_clips=0,
                             loop=LoopConfig(**{**lp, **loop}))


def run(tokens: Path, out: Path, p: TransformerParams) -> dict:
    return stage.run(p, tokens, out / "model.pt", out / "metrics.json", out / "plots",
                     out / "ckpt", RecordingLogger())


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    return make_tokens(tmp_path_factory.mktemp("tokens"))


def test_stage_writes_model_metrics_curves_and_model_reloads(tokens, tmp_path):
    torch.manual_seed(0)
    m = run(tokens, tmp_path, params())
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["steps"] == 6 and saved["val_source"] == "val"
    assert math.isclose(saved["val/perplexity"], math.exp(saved["val/loss"]), rel_tol=1e-6)
    assert saved["baseline/unigram_perplexity"] > 1
    # one control gain per annotation kind T reads (this world's layout is absent)
    assert {k for k in saved if k.startswith("val/gain/")} == {
        "val/gain/state", "val/gain/audio", "val/gain/label", "val/gain/end_frame"}
    rows = list(csv.reader(open(tmp_path / "plots" / "val.csv")))
    assert rows[0] == ["step", "perplexity", "loss", "accuracy"]
    assert [r[0] for r in rows[1:]] == ["3", "6"]
    assert [r[0] for r in list(csv.reader(open(tmp_path / "plots" / "train.csv")))[1:]] == ["2", "4", "6"]

    model = stage.load_transformer(tmp_path / "model.pt")
    cfg = model.config
    assert cfg.state and cfg.audio_tokens_per_frame == 2 and cfg.num_classes == 2 and cfg.end_frame
    assert cfg.layout_tokens_per_frame == 0  # asked for, but the data has none
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    ref = CCVSTransformer(TransformerConfig(**ckpt["config"]["model"]))
    ref.load_state_dict(ckpt["state"]["transformer"])
    ref.eval()
    val = load_token_split(tokens, "val", VOCAB)
    batch = fixed_windows(val, cfg.sequence_layout, 3)[0]
    with torch.no_grad():
        a = model(batch.tokens, batch.end_gap).logits
        b = ref(batch.tokens, batch.end_gap).logits
    assert torch.equal(a, b)
    ev = evaluate_batches(model, fixed_windows(val, cfg.sequence_layout, 4), torch.device("cpu"))
    assert math.isclose(ev["val/perplexity"], m["val/perplexity"], rel_tol=1e-5)


def test_resume_matches_an_uninterrupted_run(tokens, tmp_path):
    run(tokens, tmp_path / "a", params(steps=9))
    run(tokens, tmp_path / "b", params(steps=9))
    steps = [s for s, _ in list_checkpoints(tmp_path / "b" / "ckpt")]
    assert steps == [6, 9]
    (tmp_path / "b" / "ckpt" / list_checkpoints(tmp_path / "b" / "ckpt")[-1][1].name).unlink()
    m = run(tokens, tmp_path / "b", params(steps=9))  # "killed" after step 6: resumes
    assert m["resumed_from"] == 6 and m["steps"] == 9
    sa = stage.load_transformer(tmp_path / "a" / "model.pt").state_dict()
    sb = stage.load_transformer(tmp_path / "b" / "model.pt").state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    rows = list(csv.reader(open(tmp_path / "b" / "plots" / "train.csv")))[1:]
    assert [r[0] for r in rows] == ["2", "4", "6", "8", "9"]


def test_conditioning_dropout_replaces_only_the_chosen_kind(tokens):
    cfg = model_config(params().model, params().conditioning, VOCAB, T)
    lay = cfg.sequence_layout
    split = load_token_split(tokens, "train", VOCAB)
    batch = window_batch(split, lay, np.arange(4), np.array([0, 1, 2, 0]))
    kinds = lay.kinds()
    for kind in (TokenKind.STATE, TokenKind.AUDIO, TokenKind.LABEL, TokenKind.END_FRAME):
        probs = {k: 0.0 for k in TokenKind if k != TokenKind.FRAME}
        probs[kind] = 1.0
        out = conditioning_dropout(batch.tokens, lay, probs)
        changed = kinds == kind
        assert (out[:, changed] == lay.null_id(kind)).all()
        assert torch.equal(out[:, ~changed], batch.tokens[:, ~changed])
    same = conditioning_dropout(batch.tokens, lay, {k: 0.0 for k in TokenKind if k != TokenKind.FRAME})
    assert torch.equal(same, batch.tokens)


def test_window_batch_places_frames_and_end_gap(tokens):
    cfg = model_config(params().model, params().conditioning, VOCAB, T)
    lay = cfg.sequence_layout
    split = load_token_split(tokens, "train", VOCAB)
    starts = np.array([0, 2, 1])
    batch = window_batch(split, lay, np.array([3, 3, 5]), starts)
    assert batch.tokens.shape == (3, lay.length)
    np.testing.assert_array_equal(lay.frames_of(batch.tokens).numpy()[1], split.frames[3, 2:6])
    assert batch.end_gap.tolist() == [5, 3, 4]  # clip end (T − 1) − window start
    end = batch.tokens[:, lay.end_frame_slice].reshape(3, H, W).numpy()
    np.testing.assert_array_equal(end[2], split.frames[5, -1])
    assert batch.tokens[:, lay.label_position].tolist() == [1, 1, 1]


def test_unigram_baseline_is_exp_entropy():
    codes = np.repeat(np.arange(4), 25)
    b = unigram_baseline(codes, codes, 8)
    assert math.isclose(b["unigram_perplexity"], 4.0, rel_tol=1e-9) and b["used_codes"] == 4
    assert 4.0 < b["unigram_val_perplexity"] < 4.5  # add-½ smoothing costs a little


def test_no_train_tokens_is_one_line_error(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(VOCAB))
    with pytest.raises(stage.StageError, match="no train token samples"):
        run(tmp_path, tmp_path / "out", params())


def test_copy_baseline_scores_repetition():
    """Static clips: the copy baseline predicts every later frame exactly, so its accuracy is the
    later frames' share and its perplexity is far below the unigram's; clips with fresh codes
    each frame get copy_rate 0 and no better than unigram."""
    from pipeline.training.transformer import copy_baseline

    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 64, (6, 1, 4, 4)), 8, axis=1)  # (6, 8, 4, 4)
    b = copy_baseline(still, still, 64, window=8)
    assert b["copy_rate"] == 1.0
    assert b["copy_val_accuracy"] >= 7 / 8
    uni = unigram_baseline(still, still, 64)["unigram_val_perplexity"]
    assert b["copy_val_perplexity"] < uni / 4
    noisy = rng.integers(0, 64, (6, 8, 4, 4))
    n = copy_baseline(noisy, noisy, 64, window=8)
    assert n["copy_rate"] < 0.05
    assert n["copy_val_perplexity"] > 0.9 * unigram_baseline(noisy, noisy, 64)["unigram_val_perplexity"]


def test_control_gain_is_positive_for_a_control_t_uses_and_zero_for_one_it_cannot():
    """Frames whose codes are the state's x bin: a trained T reads the state (nulling it costs
    loss), while the class label carries nothing (random) and costs nothing when nulled."""
    from pipeline.training.transformer import TokenBatch, control_gains

    cfg = TransformerConfig(frame_vocab=Q, frame_height=1, frame_width=1, num_frames=3, state=True,
                            state_bins=Q, num_classes=2, n_layer=1, n_head=2, n_embd=32)
    lay = cfg.sequence_layout
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> TokenBatch:
        state = torch.randint(0, Q, (n, 3, 2), generator=gen)
        frames = state[:, :, :1, None]  # the code is the gripper's x bin
        seq = lay.assemble(frames, state=state, label=torch.randint(0, 2, (n,), generator=gen))
        return TokenBatch(seq.tokens, None)

    torch.manual_seed(0)
    model = CCVSTransformer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        tokens = conditioning_dropout(batch(16).tokens, lay, {TokenKind.STATE: 0.3}, gen)
        loss = model(tokens, None, tokens).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    val = [batch(64)]
    loss = evaluate_batches(model.eval(), val, torch.device("cpu"))["val/loss"]
    gains = control_gains(model, val, torch.device("cpu"), loss)
    assert set(gains) == {"val/gain/state", "val/gain/label"}
    assert gains["val/gain/state"] > 1.0  # without the state: ~log(8) nats of guessing
    assert abs(gains["val/gain/label"]) < 0.05


def test_the_training_stream_gives_an_unlabelled_clip_the_null_label():
    """A folder source's top-level videos carry label id −1; the streamed windows (like the
    validation set's ``load_token_split``) read it as the label's null id, never as an error."""
    from pipeline.training.transformer import WindowBatches

    cfg = TransformerConfig(frame_vocab=Q, frame_height=1, frame_width=1, num_frames=2,
                            num_classes=2, n_layer=1, n_head=2, n_embd=32)
    lay = cfg.sequence_layout
    items = [{"frames": np.zeros((2, 1, 1), np.int16), "end_frame": np.zeros((1, 1), np.int16),
              "start": 0, "label": label} for label in (-1, 1)]
    got = WindowBatches(lay, clip_frames=2)(items, 0).tokens
    want = lay.assemble(torch.zeros(2, 2, 1, 1, dtype=torch.long),
                        label=torch.tensor([lay.null_id(TokenKind.LABEL), 1])).tokens
    assert torch.equal(got, want)


def test_random_end_frames_cover_every_gap_and_are_the_clip_s_own_frames():
    """With ``conditioning.random_end_frame`` a window's end frame is a frame of its clip at or
    after the window's last, drawn from the sample's generator: gap d = 0 (the window's last
    frame is the end frame) occurs, and the batch's end_gap is that frame's index − start."""
    from pipeline.training.transformer import TokenWindows, WindowBatches

    clip, n = 6, 2
    frames = np.arange(clip, dtype=np.int16).reshape(clip, 1, 1)  # frame i's code is i
    sample = {"key": "c", "frames": frames, "end_frame": frames[-1], "meta": {"label_id": 0}}
    windows = TokenWindows(n, clip, (1, 1), (), "tokens", random_end=True)
    rng = np.random.default_rng(0)
    items = [windows(sample, rng)[0] for _ in range(200)]
    for it in items:
        assert it["start"] + n - 1 <= it["end"] < clip
        assert int(it["end_frame"][0, 0]) == it["end"]
    gaps = {it["end"] - (it["start"] + n - 1) for it in items}
    assert gaps == set(range(clip - n + 1))  # d at the window's last frame: 0 … clip − N
    cfg = TransformerConfig(frame_vocab=Q, frame_height=1, frame_width=1, num_frames=n,
                            end_frame=True, n_layer=1, n_head=2, n_embd=32)
    batch = WindowBatches(cfg.sequence_layout, clip)(items[:4], 0)
    assert batch.end_gap.tolist() == [it["end"] - it["start"] for it in items[:4]]
    fixed = TokenWindows(n, clip, (1, 1), (), "tokens")(sample, np.random.default_rng(0))[0]
    assert fixed["end"] == clip - 1 and int(fixed["end_frame"][0, 0]) == clip - 1
