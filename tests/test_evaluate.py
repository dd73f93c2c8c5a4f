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
from ccvs_models.position import PositionEstimator, PositionEstimatorConfig
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
    return make_world(tmp_path_factory.mktemp("evalworld"))


def make_world(root: Path) -> dict[str, Path]:
    """Random tiny AE and T, CLIPS test clips and their tokens under ``root``."""
    torch.manual_seed(0)
    ae_cfg = AutoencoderConfig(**AE)
    ae = CCVSAutoencoder(ae_cfg).eval()
    save_model(root / "autoencoder.pt", ae_cfg, ae.state_dict())
    cfg = TransformerConfig(**TCFG)
    save_model(root / "transformer.pt", cfg, CCVSTransformer(cfg).state_dict(), vocab=VOCAB)
    pcfg = PositionEstimatorConfig(stem_channels=4, channels=(4,))  # 16 px → 4×4 heatmap
    save_model(root / "position.pt", pcfg, PositionEstimator(pcfg).state_dict())
    tokens, clips = root / "tokens", root / "clips"
    tokens.mkdir()
    (tokens / "vocab.json").write_text(json.dumps(VOCAB))
    with ShardWriter(clips / "test", 10_000_000) as cw, \
            ShardWriter(tokens / "test", 10_000_000, pattern=TOKEN_PATTERN) as tw, \
            ShardWriter(tokens / "train", 10_000_000, pattern=TOKEN_PATTERN) as train_w:
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
            # the train split: the class check's classifier learns the classes' trajectories
            train_w.write(encode_token_sample(f"t{i}_0000", codes, {**meta, "split": "train"},
                                              frame_vocab=Q, state=(state + i) % 16))
    return {"root": root, "clips": clips, "tokens": tokens,
            "transformer": root / "transformer.pt", "autoencoder": root / "autoencoder.pt",
            "positions": root / "position.pt"}


def _params(**over) -> EvaluateParams:
    base = dict(split="test", num_videos=0, num_frames=0, start_frames=1, samples=3, top_k=8,
                temperature=1.0,
                context_frames=None, timesteps=(2, 5, 6), tasks=tuple(ev.TASKS), batch_size=2,
                gif_videos=2, seed=0, device="cpu",
                fvd=FVDParams(weights="", url="", frames=T, videos=0, repeats=1, batch_size=4,
                              count_conditioning=True))
    return EvaluateParams(**{**base, **over})


@pytest.fixture(scope="module")
def evaluated(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalout")
    log = RecordingLogger()
    return evaluate_to(world, out, log), log, out


def evaluate_to(world: dict[str, Path], out: Path, log, params: EvaluateParams | None = None,
                **run_kwargs) -> dict:
    """``stage.run`` on ``world`` into ``out`` with the stand-in I3D shrunk to 64 px (speed)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CCVS_OFFLINE", "1")
    real_compute, real_feats = fvd_lib.compute_fvd, fvd_lib.i3d_features
    mp.setattr(fvd_lib, "compute_fvd", lambda *a, **k: real_compute(*a, **{**k, "resolution": 64}))
    mp.setattr(fvd_lib, "i3d_features", lambda *a, **k: real_feats(*a, **{**k, "resolution": 64}))
    try:
        return stage.run(params or _params(), world["clips"], world["tokens"], world["transformer"],
                         world["autoencoder"], out / "evaluate.json", out / "plots",
                         out / "samples", log, **{"positions": world["positions"], **run_kwargs})
    finally:
        mp.undo()


def test_every_task_runs_or_says_why_not(evaluated):
    doc, _, out = evaluated
    assert set(doc["tasks"]) == set(ev.TASKS) - {"sound"}
    assert "audio" in doc["skipped"]["sound"]  # T has no sound tokens: skipped, with the reason
    assert doc["start"]["unconditional"] == "sampled"  # T has a class token: frame 0 is sampled
    assert doc["start"]["prediction"] == "given"
    assert json.loads((out / "evaluate.json").read_text())["inputs"] == CLIPS


def test_a_control_no_evaluated_clip_has_skips_its_task_instead_of_scoring_prediction_twice():
    torch.manual_seed(0)
    tr = CCVSTransformer(TransformerConfig(**TCFG))
    null = StateBins.for_frame(16, RES, RES).null_id
    state = torch.randint(0, 16, (2, N, 2))
    data = ev.EvalData(["a", "b"], torch.zeros(2, N, 3, RES, RES),
                       torch.zeros(2, N, GRID, GRID, dtype=torch.long),
                       torch.zeros(2, GRID, GRID, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                       state, None, None)
    spec, how = ev.resolve_task(ev.TASKS["state"], tr, data, {"state": null})
    assert spec is not None and how == "given"
    state[0] = null  # one clip without positions: the task still runs on the other
    assert ev.resolve_task(ev.TASKS["state"], tr, data, {"state": null})[0] is not None
    state[1] = null  # none has any: the "state" task would be prediction under another name
    spec, how = ev.resolve_task(ev.TASKS["state"], tr, data, {"state": null})
    assert spec is None and "none of the 2 clips" in how and "annotated position" in how
    assert ev.resolve_task(ev.TASKS["prediction"], tr, data, {"state": null})[0] is not None


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


def test_control_metrics_score_the_synthesized_frames_against_the_asked_trajectory(world, evaluated):
    from pipeline.synthesis.models import load_models

    doc = evaluated[0]
    for name in ("reconstruction", "prediction", "point_to_point", "state", "class"):
        row = doc["tasks"][name]
        assert row["trajectory_error_px"] >= 0 and 0 <= row["class_accuracy"] <= 1
        assert row["end/ssim"] == pytest.approx(row["ssim@6"])  # the end frame is the clip's last (1-based t = N)
    assert "trajectory_error_px" not in doc["tasks"]["unconditional"]  # no real counterpart
    assert "sound track" in doc["control"]["skipped"]["sound_sync"]  # these clips are silent
    assert doc["control"]["chance_class_accuracy"] == 0.5
    # reconstruction: the estimator on the decoded frames t ≥ 1 against it on the real ones
    models = load_models(world["transformer"], world["autoencoder"], world["tokens"])
    data = stage.load_eval_data(world["clips"], world["tokens"], "test", 0, VOCAB)
    video = ev.decode_video(models.autoencoder, data.codes, data.frames[:, :1], 1)
    est = stage.load_estimator(world["positions"], torch.device("cpu"))
    fake, real = stage.estimate_trajectories(est, video), stage.estimate_trajectories(est, data.frames)
    expected = np.linalg.norm(fake[:, 1:] - real[:, 1:], axis=-1).mean()
    assert doc["tasks"]["reconstruction"]["trajectory_error_px"] == pytest.approx(expected, rel=1e-4)


def test_without_an_estimator_the_control_metrics_say_why(world):
    data = stage.load_eval_data(world["clips"], world["tokens"], "test", 0, VOCAB)
    ref, why = stage.control_reference(data, None, world["clips"], world["tokens"], "test", VOCAB, T)
    assert ref.score(np.zeros((CLIPS, 1, T, 2)), 1) == {}
    assert set(why) == {"trajectory_error_px", "sound_sync", "class_accuracy"}
    assert all("position estimator" in reason for reason in why.values())


def test_outputs_for_people_and_plots(evaluated):
    _, log, out = evaluated
    for name in ("reconstruction", "prediction", "point_to_point"):
        assert (out / "samples" / f"{name}.gif").stat().st_size > 0
        assert (out / "samples" / f"{name}.png").stat().st_size > 0
        rows = (out / "plots" / f"{name}.csv").read_text().splitlines()
        # the synthesized frames only, t 1-based as the paper's: t = 2 … T (t = 1 was given)
        assert rows[0] == "t,ssim,psnr" and len(rows) == 1 + T - 1
        assert rows[1].startswith("2,") and rows[-1].startswith(f"{T},")
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


def test_timesteps_are_one_based_and_given_frames_are_never_scored():
    b, s_, n, m = 2, 3, 16, 5
    ssim_v = torch.linspace(0, 1, n).expand(b, s_, n).clone()  # frame i scores i / 15
    ssim_v[:, :, :m] = 1.0  # the given frames: identical to the real ones
    psnr_v = 10 + ssim_v
    row = ev.summarize("prediction", ssim_v, psnr_v, m, (1, 5, 6, 8, 15, 16, 17), None, None,
                       True)
    # ssim@t is the t-th frame (index t − 1): Table 3's t = 15 is the one before the last of 16
    assert row["ssim@15"] == pytest.approx(14 / 15) and row["ssim@16"] == pytest.approx(1.0)
    assert row["ssim@8"] == pytest.approx(7 / 15) and row["ssim@6"] == pytest.approx(5 / 15)
    assert not {"ssim@1", "ssim@5", "ssim@17"} & set(row)  # given (t ≤ m) or past the end
    assert row["ssim"] == pytest.approx(float(ssim_v[0, 0, m:].mean()))  # given frames left out
    assert ev.scored_timesteps((8, 15), 1, 16) == [8, 15]
    assert ev.scored_timesteps((8, 15), 8, 16) == [15]  # 8 given frames: t = 8 is not a prediction
    assert [r["t"] for r in ev.per_timestep(ssim_v, psnr_v, m)] == list(range(m + 1, n + 1))


def test_runs_give_a_std_over_runs_of_each_runs_mean():
    ssim_v = torch.zeros(4, 3, 6)
    ssim_v[:, 0], ssim_v[:, 1], ssim_v[:, 2] = 0.2, 0.4, 0.9  # run r = sample r of every input
    row = ev.summarize("prediction", ssim_v, ssim_v, 1, (4,), None, None, True, runs=2)
    assert row["ssim@4_std"] == pytest.approx(0.1)  # std of (0.2, 0.4): the first 2 samples
    assert row["ssim@4"] == pytest.approx(0.5)  # the mean keeps every sample


def test_protocol_params_start_frames_runs_and_cached_real_statistics(world, tmp_path, monkeypatch):
    monkeypatch.setenv("CCVS_OFFLINE", "1")
    real_feats = fvd_lib.i3d_features
    calls = []

    def small(model, videos, *a, **k):  # the stand-in I3D at 64 px, and count real extractions
        calls.append(k.get("desc"))
        return real_feats(model, videos, *a, **{**k, "resolution": 64})

    monkeypatch.setattr(fvd_lib, "i3d_features", small)
    params = _params(tasks=("prediction",), start_frames=2, samples=1, timesteps=(2, 3, 6),
                     fvd=dataclasses.replace(_params().fvd, repeats=2))
    docs = []
    for attempt in range(2):
        out = tmp_path / f"run{attempt}"
        docs.append(stage.run(params, world["clips"], world["tokens"], world["transformer"],
                              world["autoencoder"], out / "evaluate.json", out / "plots",
                              out / "samples", RecordingLogger(), fvd_cache=tmp_path / "cache"))
    first, second = docs
    row = first["tasks"]["prediction"]
    assert first["protocol"]["start_frames"] == 2 and first["fvd"]["runs"] == 2
    assert "ssim@2" not in row and {"ssim@3", "ssim@6", "ssim@3_std"} <= set(row)
    assert row["fvd_untrained_i3d_std"] >= 0 and "fvd_untrained_i3d" in row  # 2 runs: mean ± std
    assert "rank <= 2" in first["fvd"]["warning"]  # 3 videos: a rank-2 covariance of 400 features
    # the real clips' features: extracted once, then read back from the cache by their key
    assert calls.count("I3D real") == 1 and len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert first["fvd"]["real_features"].startswith("computed")
    assert second["fvd"]["real_features"] == "cached"
    assert second["tasks"]["prediction"] == pytest.approx(row)


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


def test_synthesize_command_speed_options(world, tmp_path, capsys):
    assert _cli(world, tmp_path / "s", "--class", "left", "--ae-precision", "bf16",
                "--overlap-decoding", "on", "--step-threads", "auto") == 0
    printed = capsys.readouterr().out
    assert "autoencoder in bf16" in printed and "T's one-token steps on" in printed
    assert (tmp_path / "s" / "unconditional_sheet.png").exists()
    with pytest.raises(SystemExit):
        _cli(world, tmp_path / "s", "--class", "left", "--step-threads", "many")
    assert "expected 'auto' or a count" in capsys.readouterr().err


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


def test_gifs_play_at_the_clips_frame_rate_from_prepare_s_manifest(tmp_path):
    import pandas as pd

    assert stage._clip_rate(tmp_path, "test") is None  # no manifest: the caller's default
    pd.DataFrame({"split": ["train", "test", "test"], "fps": [30.0, 7.5, 7.5]}).to_parquet(
        tmp_path / "manifest.parquet")
    assert stage._clip_rate(tmp_path, "test") == 7.5
    assert stage._clip_rate(tmp_path, "val") is None
