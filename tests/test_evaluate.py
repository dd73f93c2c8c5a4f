"""The evaluate stage (stages/evaluate.py, pipeline/evaluation/tasks.py) on a tiny world: random tiny
models, a few test clips of moving squares, their tokens; the stand-in I3D is shrunk for speed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from pipeline.evaluation import tasks as ev
from pipeline.metrics import fvd as fvd_lib
from pipeline.training.checkpoint import save_model
from pipeline.params import EvaluateParams, FVDParams, ParamsError, build
from pipeline.data.shard_writing import ShardWriter, encode_sample
from pipeline.tokens.shards import TOKEN_PATTERN, StateBins, encode_token_sample
from pipeline.tracking import RecordingLogger
from stages import evaluate as stage
from pipeline.errors import StageError

RES, Q, GRID, T, N, CLIPS = 16, 32, 4, 6, 4, 3
AE = dict(base_channels=8, channel_mult=(1, 2, 2), num_levels=2, latent_dim=8, codebook_size=Q,
          context_frames=1, flow_radius=1, flow_hidden=8, flow_corr_dim=4)
TCFG = dict(frame_vocab=Q, frame_height=GRID, frame_width=GRID, num_frames=N, state=True,
            state_bins=16, num_classes=2, end_frame=True, n_layer=1, n_head=2, n_embd=16)
VOCAB = {"frame": {"vocab": Q, "height": GRID, "width": GRID, "dtype": "int16"},
         "end_frame": True, "state": StateBins.for_frame(16, RES, RES).to_dict(),
         "label": {"num_classes": 2, "classes": ["left", "right"]}, "absent": {}}


def _clip(i: int) -> np.ndarray:
    """A bright square moving over a textured background, T×RES×RES×3 uint8."""
    rng = np.random.default_rng(i)
    bg = rng.integers(40, 120, (RES, RES, 3), dtype=np.uint8)
    out = np.repeat(bg[None], T, 0)
    for t in range(T):
        x = (2 + 2 * t + i) % (RES - 4)
        out[t, 5:9, x:x + 4] = 250
    return out


def _layout(i: int) -> np.ndarray:
    """The square of ``_clip(i)`` as an object label (2) on background (0), T×RES×RES uint8."""
    lay = np.zeros((T, RES, RES), np.uint8)
    for t in range(T):
        x = (2 + 2 * t + i) % (RES - 4)
        lay[t, 5:9, x:x + 4] = 2
    return lay


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalworld")
    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(**AE)
    ae = CCVSAutoencoder(ae_cfg).eval()
    save_model(root / "autoencoder.pt", ae_cfg, ae.state_dict())
    cfg = TransformerConfig(**TCFG)
    save_model(root / "transformer.pt", cfg, CCVSTransformer(cfg).state_dict(), vocab=VOCAB)
    tokens, clips = root / "tokens", root / "clips"
    tokens.mkdir()
    (tokens / "vocab.json").write_text(json.dumps(VOCAB))
    with ShardWriter(clips / "test", 10_000_000) as cw, \
            ShardWriter(tokens / "test", 10_000_000, pattern=TOKEN_PATTERN) as tw:
        for i in range(CLIPS):
            frames = _clip(i)
            key = f"v{i}_0000"
            meta = {"fps": 10, "label_id": i % 2, "video_id": f"v{i}", "split": "test"}
            cw.write(encode_sample(key, frames, meta, layout=_layout(i)))
            x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
            with torch.no_grad():
                codes = ae.tokenize(x).numpy()
            state = np.stack([np.arange(T) % 16, np.full(T, 7)], 1)
            tw.write(encode_token_sample(key, codes, meta, frame_vocab=Q, state=state))
    return {"root": root, "clips": clips, "tokens": tokens,
            "transformer": root / "transformer.pt", "autoencoder": root / "autoencoder.pt"}


def _params(**over) -> EvaluateParams:
    base = dict(split="test", num_videos=0, num_frames=0, samples=3, top_k=8, temperature=1.0,
                context_frames=None, timesteps=(2, 5), tasks=tuple(ev.TASKS), batch_size=2,
                gif_videos=2, seed=0, device="cpu",
                fvd=FVDParams(weights="", url="", frames=T, videos=0, repeats=1, batch_size=4,
                              count_conditioning=True))
    return EvaluateParams(**{**base, **over})


@pytest.fixture(scope="module")
def evaluated(world, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CCVS_OFFLINE", "1")
    real_compute, real_feats = fvd_lib.compute_fvd, fvd_lib.i3d_features
    mp.setattr(fvd_lib, "compute_fvd", lambda *a, **k: real_compute(*a, **{**k, "resolution": 64}))
    mp.setattr(fvd_lib, "i3d_features", lambda *a, **k: real_feats(*a, **{**k, "resolution": 64}))
    out = tmp_path_factory.mktemp("evalout")
    log = RecordingLogger()
    try:
        doc = stage.run(_params(), world["clips"], world["tokens"], world["transformer"],
                        world["autoencoder"], out / "evaluate.json", out / "plots", out / "samples",
                        log)
    finally:
        mp.undo()
    return doc, log, out


def test_every_task_runs_or_says_why_not(evaluated):
    doc, _, out = evaluated
    assert set(doc["tasks"]) == set(ev.TASKS) - {"sound"}
    assert "audio" in doc["skipped"]["sound"]  # T has no sound tokens: skipped, with the reason
    assert doc["start"]["unconditional"] == "sampled"  # T has a class token: frame 0 is sampled
    assert doc["start"]["prediction"] == "given"
    assert json.loads((out / "evaluate.json").read_text())["inputs"] == CLIPS


def test_fvd_is_never_reported_under_its_name_with_stand_in_weights(evaluated):
    doc, log, _ = evaluated
    assert doc["fvd"]["metric"] == "fvd_untrained_i3d" and doc["fvd"]["pretrained"] is False
    for task, row in doc["tasks"].items():
        assert "fvd" not in row and row["fvd_untrained_i3d"] >= 0
    assert not any(name.endswith("/fvd") for name in log.metrics)
    assert log.tags["evaluate.fvd_metric"] == "fvd_untrained_i3d"


def test_metrics_obey_their_invariants(evaluated):
    tasks = evaluated[0]["tasks"]
    # reconstruction decodes the clip's own tokens: every "sample" is the same video
    assert tasks["reconstruction"]["div"] == pytest.approx(0.0, abs=1e-7)
    assert tasks["prediction_greedy"]["div"] == pytest.approx(0.0, abs=1e-7)  # k = 1: no randomness
    assert tasks["prediction"]["div"] > 1e-5  # top-k samples differ (random decoder: a little)
    for name in ("prediction", "point_to_point", "state", "class"):
        row = tasks[name]
        assert row["best/ssim@5"] >= row["ssim@5"] - 1e-6  # best of S ≥ mean of S
        assert -1 <= row["ssim"] <= 1 and row["psnr"] > 0
    assert "end/ssim" in tasks["point_to_point"]
    assert "ssim" not in tasks["unconditional"]  # a sampled frame 0 has no real counterpart
    assert "div" in tasks["unconditional"]


def test_outputs_for_people_and_plots(evaluated):
    _, log, out = evaluated
    for name in ("reconstruction", "prediction", "point_to_point"):
        assert (out / "samples" / f"{name}.gif").stat().st_size > 0
        assert (out / "samples" / f"{name}.png").stat().st_size > 0
        rows = (out / "plots" / f"{name}.csv").read_text().splitlines()
        assert rows[0] == "t,ssim,psnr" and len(rows) == 1 + T - 1  # t = 1 … T−1
    assert "prediction/ssim@5" in log.metrics and "reconstruction/psnr" in log.metrics


def test_object_region_metrics_with_layouts_and_absent_without(world, evaluated, tmp_path):
    doc, log, _ = evaluated
    objects = ("psnr_objects", "ssim_objects", "edge_ratio_objects")
    for name in ("reconstruction", "prediction", "point_to_point"):
        row = doc["tasks"][name]
        assert all(row[k] is not None for k in objects), name
        assert row["psnr_objects"] > 0 and -1 <= row["ssim_objects"] <= 1 and row["edge_ratio_objects"] > 0
        assert f"{name}/edge_ratio_objects" in log.metrics
    assert not any(k in doc["tasks"]["unconditional"] for k in objects)  # no real frame 0
    copy_first = doc["baseline"]["copy_first"]
    assert copy_first["psnr_objects"] < copy_first["psnr"]  # the static background scores high
    assert log.metrics["baseline/copy_first/psnr_objects"][-1][1] == pytest.approx(copy_first["psnr_objects"])
    # the same clips without layout.npy: no masks, so the keys are absent (not zero)
    bare = tmp_path / "clips"
    with ShardWriter(bare / "test", 10_000_000) as cw:
        for i in range(CLIPS):
            meta = {"fps": 10, "label_id": i % 2, "video_id": f"v{i}", "split": "test"}
            cw.write(encode_sample(f"v{i}_0000", _clip(i), meta))
    assert stage.load_eval_data(bare, world["tokens"], "test", 0, VOCAB).layouts is None
    assert stage.load_eval_data(world["clips"], world["tokens"], "test", 0, VOCAB).layouts.shape == (
        CLIPS, T, RES, RES)


def test_reconstruction_matches_decoding_the_tokens_directly(world, evaluated):
    from pipeline.synthesis.models import load_models

    models = load_models(world["transformer"], world["autoencoder"], world["tokens"])
    data = stage.load_eval_data(world["clips"], world["tokens"], "test", 0, VOCAB)
    video = ev.decode_video(models.autoencoder, data.codes, data.frames[:, :1], 1)
    assert torch.equal(video[:, 0], data.frames[:, 0])  # the given frame is kept as is
    ssim_v, psnr_v = ev.frame_scores(video[:, None], data.frames)
    assert evaluated[0]["tasks"]["reconstruction"]["psnr"] == pytest.approx(
        float(psnr_v[:, :, 1:].mean()), rel=1e-5)


def test_decode_video_keeps_at_most_c_context_frames(world):
    from pipeline.synthesis.models import load_models

    ae = load_models(world["transformer"], world["autoencoder"], world["tokens"]).autoencoder
    seen = []
    original = ae.decode_tokens

    def spy(codes, context=None):
        seen.append(None if context is None else len(context))  # frames (ContextBuffer form)
        return original(codes, context)

    ae.decode_tokens = spy
    codes = torch.zeros(1, 5, GRID, GRID, dtype=torch.long)
    ev.decode_video(ae, codes, None, 2)
    assert seen == [None, 1, 2, 2, 2]  # frame 0 without context, then up to c = 2 frames


def test_a_context_size_the_autoencoder_cannot_use_names_the_file(world, tmp_path):
    # the world's autoencoder is anchor-free with F; one without F asked for context stops
    from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
    from pipeline.training.checkpoint import load_model, save_model

    config, state, _ = load_model(world["autoencoder"])
    no_f = CCVSAutoencoder(AutoencoderConfig(**{**config, "context_frames": 0}))
    no_f.load_state_dict({k: v for k, v in state.items() if ".flow." not in k})
    path = tmp_path / "ae_no_f.pt"
    save_model(path, dataclasses.asdict(no_f.config), no_f.state_dict(), step=0)
    with pytest.raises(StageError, match=r"ae_no_f\.pt: this autoencoder has no F"):
        stage.run(_params(context_frames=2), world["clips"], world["tokens"], world["transformer"],
                  path, tmp_path / "e.json", tmp_path / "plots", tmp_path / "samples",
                  RecordingLogger())


def test_bad_params_and_missing_clips_are_one_line_errors(world, tmp_path):
    with pytest.raises(ParamsError, match="tasks: unknown"):
        build(EvaluateParams, {**dataclasses.asdict(_params()), "tasks": ["dance"]}, "evaluate")
    empty = tmp_path / "clips"
    (empty / "test").mkdir(parents=True)
    with pytest.raises(stage.StageError, match="missing"):
        stage.load_eval_data(empty, world["tokens"], "test", 0, VOCAB)
    with pytest.raises(stage.StageError, match="no val token samples"):
        stage.load_eval_data(world["clips"], world["tokens"], "val", 0, VOCAB)


# --------------------------------------------------------------------------- ccvs synthesize


def _cli(world, out: Path, *extra: str) -> int:
    from pipeline.cli import main

    return main(["synthesize", "--transformer", str(world["transformer"]), "--autoencoder",
                 str(world["autoencoder"]), "--tokens", str(world["tokens"]), "--out", str(out),
                 "--device", "cpu", "--frames", "6", "--samples", "2", "--top-k", "8", *extra])


def test_synthesize_command_writes_videos_and_a_sheet(world, tmp_path, capsys):
    from pipeline.data.media_write import write_mp4

    start = write_mp4(tmp_path / "start.mp4", np.repeat(_clip(0), 2, axis=1)[:, :, ::2], 10)
    traj = tmp_path / "xy.csv"
    traj.write_text("x,y\n" + "".join(f"{2 + t},{7}\n" for t in range(6)))
    assert _cli(world, tmp_path / "out", "--start", str(start), "--class", "right",
                "--trajectory", str(traj)) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["start_sample00.gif", "start_sample00.mp4", "start_sample01.gif",
                     "start_sample01.mp4", "start_sheet.png"]
    assert "wrote" in printed and "resized start frames" in printed  # 32×16 → 16×16, said so


def test_synthesize_command_without_start_frame_samples_frame_zero(world, tmp_path, capsys):
    assert _cli(world, tmp_path / "u", "--class", "left", "--weights", "int8") == 0
    assert "T samples frame 0" in capsys.readouterr().out
    assert (tmp_path / "u" / "unconditional_sheet.png").exists()


def test_synthesize_command_refuses_bad_controls_before_any_work(world, tmp_path, capsys):
    traj = tmp_path / "short.csv"
    traj.write_text("x,y\n1,2\n")
    assert _cli(world, tmp_path / "x", "--class", "jump") == 2
    err = capsys.readouterr().err
    assert "jump" in err and "left" in err and "\n" == err[-1] and err.count("\n") == 1
    assert _cli(world, tmp_path / "x", "--class", "left", "--trajectory", str(traj)) == 2
    assert "short.csv" in capsys.readouterr().err
    assert _cli(world, tmp_path / "x", "--class", "left", "--sound", str(traj)) == 2
    assert "no audio tokens" in capsys.readouterr().err  # T was trained without sound
    assert not (tmp_path / "x").exists()  # nothing written


def test_frame_motion_measures_change_between_frames():
    still = torch.zeros(2, 3, 5, 3, 4, 4)
    assert ev.frame_motion(still) == 0.0
    flicker = still.clone()
    flicker[:, :, 1::2] = 1.0  # frames alternate between 0 and 1 ([−1, 1] units): |Δ| = 1 → 0.5
    assert ev.frame_motion(flicker) == pytest.approx(0.5)
    assert ev.frame_motion(flicker, first=4) != ev.frame_motion(flicker)  # one frame: NaN
