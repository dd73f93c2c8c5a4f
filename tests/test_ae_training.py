"""Autoencoder training procedure (pipeline/training/autoencoder/task.py): steps, switches, recursion, eval."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import pipeline.training.autoencoder.forward as aef
import pipeline.training.autoencoder.task as aet
from ccvs_models.augment import AugmentConfig
from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.discriminators import DiscriminatorConfig
from ccvs_models.perceptual import VGGConfig, VGGFeatures
from pipeline.training.autoencoder.task import AutoencoderTask
from pipeline.training.autoencoder.batches import ImageBatch, VideoBatch, make_batch_stream
from pipeline.training.autoencoder.forward import decode_recursively, reconstruct_clips
from pipeline.params import AutoencoderParams
from pipeline.tracking import RecordingLogger
from pipeline.training.config import LoopConfig
from pipeline.training.loop import fit

torch.set_num_threads(1)

MODEL = AutoencoderConfig(base_channels=4, channel_mult=(1, 2, 2), num_levels=2, latent_dim=8,
                          codebook_size=16, context_frames=1, flow_radius=(1,), flow_hidden=(8,),
                          flow_corr_dim=4)
DISC = DiscriminatorConfig(resolution=16, channels=4, max_channels=8, final_resolution=4,
                           mbstd_group=2)


def tiny_params(**kw) -> AutoencoderParams:
    model = kw.pop("model", MODEL)
    base = dict(
        model=model, augment=AugmentConfig(), image_disc=DISC, temporal_disc=DISC,
        vgg=VGGConfig(layers=("relu1_2",)), vgg_weights="", vgg_url="",
        use_rgb=True, use_vgg=True, use_image_disc=True, use_temporal_disc=True,
        self_supervision=True, lambda_q=1.0, lambda_r=10.0, lambda_a=1.0, lambda_c=1.0,
        lambda_free=0.0, r1_gamma=1.0, lr=1e-3, disc_lr=1e-3,
        betas=(0.5, 0.9), batch_size=2,
        video_batch_size=2, video_frames=3, video_every=2, val_clips=2, val_frames=0,
        gif_clips=1, dead_code_every=1,
        loop=LoopConfig(steps=2, log_every=1, eval_every=0, ckpt_every=0, device="cpu", seed=0),
    )
    base.update(kw)
    return AutoencoderParams(**base)


def clips(n=3, t=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, t, 16, 16, 3), dtype=np.uint8)


class CountingVGG(VGGFeatures):
    calls = 0

    def forward(self, x):
        CountingVGG.calls += 1
        return super().forward(x)


def run_two_steps(params, tmp_path, vgg=None, data=None):
    torch.manual_seed(0)
    task = AutoencoderTask(params, vgg=vgg, val_clips=None)
    log = RecordingLogger()
    data = clips() if data is None else data
    fit(task, make_batch_stream(data, params, 0), params.loop, tmp_path, log, resume=False)
    return task, {k: v[-1][1] for k, v in log.metrics.items()}


@pytest.mark.parametrize("c", [1, 2, 0])
def test_image_and_video_steps_with_every_switch(tmp_path, c):
    params = tiny_params(model=dataclasses.replace(MODEL, context_frames=c))
    CountingVGG.calls = 0
    task, m = run_two_steps(params, tmp_path, vgg=CountingVGG(params.vgg))
    expected = ["img/q", "img/rgb", "img/vgg", "img/adv_i", "img/disc_i/loss", "img/disc_i/r1",
                "vid/q", "vid/rgb", "vid/vgg", "vid/adv_i", "vid/adv_t", "vid/disc_t/loss",
                "vid/disc_i/loss"]
    if c > 0:
        expected.append("img/ctx")
    for key in expected:
        assert key in m, key
        assert np.isfinite(m[key]), key
    assert ("img/ctx" in m) == (c > 0)
    assert CountingVGG.calls > 0
    assert set(task.modules()) == {"ae", "disc_i", "disc_t"}
    assert task.model.has_flow == (c > 0)


def test_feature_matching_term_pulls_dis_features_of_x_hat_to_those_of_x(tmp_path):
    from ccvs_models.discriminators import ImageDiscriminator, feature_matching_loss

    params = tiny_params(lambda_fm=2.0, use_vgg=False)
    _, m = run_two_steps(params, tmp_path)
    assert np.isfinite(m["img/fm"]) and np.isfinite(m["vid/fm"]) and m["img/fm"] > 0
    _, off = run_two_steps(tiny_params(use_vgg=False), tmp_path / "off")
    assert "img/fm" not in off and "vid/fm" not in off
    torch.manual_seed(0)
    disc = ImageDiscriminator(DISC)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    logits, feats = disc.forward_features(x)
    assert torch.equal(logits, disc(x)) and len(feats) == DISC.num_blocks
    assert feature_matching_loss(feats, feats) == 0


def test_disabling_switches_removes_terms(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(aet, "make_context", lambda *a, **k: made.append(1))
    params = tiny_params(use_rgb=False, use_vgg=False, use_image_disc=False,
                         use_temporal_disc=False, self_supervision=False, r1_gamma=0.0)
    CountingVGG.calls = 0
    task, m = run_two_steps(params, tmp_path, vgg=CountingVGG(params.vgg))
    assert CountingVGG.calls == 0 and task.vgg is None  # vgg off: VGG never called
    assert set(task.modules()) == {"ae"} and set(task.optimizers()) == {"g"}  # no Δi, no Δt
    assert not made  # no self-supervised context
    assert not [k for k in m if k.split("/")[-1] in ("rgb", "vgg", "ctx") or "adv" in k or "disc" in k]
    assert np.isfinite(m["loss"])


def test_context_free_term_adds_lambda_weighted_recovery_of_plain_decoding(tmp_path, monkeypatch):
    """λ_free > 0: the image step also decodes z_q without context and adds λ_free·L_r of it."""
    params = tiny_params(lambda_free=0.5, use_vgg=False, use_image_disc=False,
                         use_temporal_disc=False, video_every=0)
    torch.manual_seed(0)
    task = AutoencoderTask(params, val_clips=None)
    totals, recoveries = [], []
    original_total, original_rec = task._generator_total, task.recovery_loss

    def spy_total(q_loss, rec, adv, ctx_loss):
        totals.append({k: v.detach().clone() for k, v in rec.items()})
        return original_total(q_loss, rec, adv, ctx_loss)

    def spy_rec(x, x_hat):
        out = original_rec(x, x_hat)
        recoveries.append({k: v.detach().clone() for k, v in out.items()})
        return out

    monkeypatch.setattr(task, "_generator_total", spy_total)
    monkeypatch.setattr(task, "recovery_loss", spy_rec)
    log = RecordingLogger()
    fit(task, make_batch_stream(clips(), params, 0), dataclasses.replace(params.loop, steps=1),
        tmp_path, log, resume=False)
    assert set(totals[0]) == {"rgb", "free_rgb"} and len(recoveries) == 2
    assert torch.allclose(totals[0]["free_rgb"], 0.5 * recoveries[1]["rgb"])
    assert not torch.allclose(recoveries[0]["rgb"], recoveries[1]["rgb"])
    assert "img/free_rgb" in log.metrics

    # The wrapper: x_free is D(z_q) of the same z_q without context; absent when off or without F.
    model = CCVSAutoencoder(MODEL)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    out = aet.AutoencoderForward(model)(aet.ImageInputs(x, x.flip(-1)[:, None], True))
    assert torch.allclose(out.x_free, model.decode(out.recon.quant.z_q, None).x_hat)
    assert not torch.allclose(out.x_free, out.recon.x_hat)  # F does change the decoding
    assert aet.AutoencoderForward(model)(aet.ImageInputs(x, x[:, None])).x_free is None
    no_f = CCVSAutoencoder(dataclasses.replace(MODEL, context_frames=0))
    assert aet.AutoencoderForward(no_f)(aet.ImageInputs(x, None, True)).x_free is None


def test_image_step_context_without_self_supervision_is_previous_frames():
    params = tiny_params(self_supervision=False, model=dataclasses.replace(MODEL, context_frames=2))
    data = clips(2, 6)
    batch = next(make_batch_stream(data, params, 0)(0))
    assert isinstance(batch, ImageBatch) and batch.frames.shape == (2, 3, 16, 16, 3)
    f = batch.frames.numpy()
    for b in range(2):  # rows are x_t, x_{t−1}, x_{t−2} of one clip
        hits = [(i, t) for i in range(2) for t in range(2, 6) if np.array_equal(data[i, t], f[b, 0])]
        i, t = hits[0]
        assert np.array_equal(f[b, 1], data[i, t - 1]) and np.array_equal(f[b, 2], data[i, t - 2])


def test_batches_are_deterministic_and_resumable():
    params = tiny_params()
    stream = make_batch_stream(clips(), params, 7)
    full = stream(0)
    seq = [next(full) for _ in range(5)]
    assert [type(b) for b in seq] == [ImageBatch, VideoBatch] * 2 + [ImageBatch]  # video_every=2
    assert seq[1].clips.shape == (2, 3, 16, 16, 3)
    resumed = stream(2)  # what a run resumed at step 2 sees
    assert torch.equal(next(resumed).frames, seq[2].frames)
    assert torch.equal(next(resumed).clips, seq[3].clips)
    assert not torch.equal(seq[0].frames, seq[2].frames)
    other_seed = next(make_batch_stream(clips(), params, 8)(0))
    assert not torch.equal(other_seed.frames, seq[0].frames)


def test_video_step_keeps_gradient_only_through_previous_frame(monkeypatch):
    torch.manual_seed(0)
    model = CCVSAutoencoder(dataclasses.replace(MODEL, context_frames=3))
    seen = []
    original = model.decode

    def spy(z_q, context=None):
        seen.append([[f.requires_grad for f in frame] for frame in context])
        return original(z_q, context)

    monkeypatch.setattr(model, "decode", spy)
    clip = torch.rand(2, 5, 3, 16, 16) * 2 - 1
    z = model.quantize(model.encode(clip[:, 1:].flatten(0, 1)).z).z_q.view(2, 4, 8, 4, 4)
    out = decode_recursively(model, z, clip[:, 0], 3)
    assert out.shape == (2, 4, 3, 16, 16)
    # frame t's context: up to 3 previous frames, only the newest attached to the graph
    assert [len(s) for s in seen] == [1, 2, 3, 3]
    for frames in seen:
        assert all(frames[-1])  # the immediately preceding frame: gradient kept
        assert not any(any(f) for f in frames[:-1])  # older frames: detached
    # and the gradient really flows from x̂_2 into x̂_1 through the re-encoded context
    loss = out[:, 2].sum()
    (g,) = torch.autograd.grad(loss, z, retain_graph=True)
    assert g[:, 1].abs().sum() > 0 and g[:, 2].abs().sum() > 0


def test_video_warmup_decodes_first_frames_without_graph_and_same_values():
    torch.manual_seed(0)
    model = CCVSAutoencoder(dataclasses.replace(MODEL, context_frames=2))
    clip = torch.rand(2, 6, 3, 16, 16) * 2 - 1
    z = model.quantize(model.encode(clip[:, 1:].flatten(0, 1)).z).z_q.view(2, 5, 8, 4, 4)
    plain = decode_recursively(model, z, clip[:, 0], 2)
    warm = decode_recursively(model, z, clip[:, 0], 2, warmup=3)
    torch.testing.assert_close(warm, plain)  # the same recursion, only the graph differs
    # no gradient reaches the warm-up frames' latents; the graded frames' own latents get one,
    # and the first graded frame's context (x̂_3, a warm-up frame) is no path back
    (g,) = torch.autograd.grad(warm[:, 3:].sum(), z, retain_graph=True)
    assert g[:, :3].abs().sum() == 0
    assert g[:, 3].abs().sum() > 0 and g[:, 4].abs().sum() > 0
    (g_last,) = torch.autograd.grad(warm[:, 4].sum(), z)
    assert g_last[:, 3].abs().sum() > 0  # x̂_5 still reaches x̂_4 through its re-encoding (App. A)


def test_video_warmup_steps_train_on_longer_windows(tmp_path):
    params = tiny_params(video_warmup=2, video_frames=3, use_vgg=False,
                         loop=LoopConfig(steps=2, log_every=1, device="cpu"))
    batches = make_batch_stream(clips(t=6), params, 0)(0)
    next(batches)
    assert next(batches).clips.shape[1] == 5  # x_0, 2 warm-up frames, 2 graded frames
    task, m = run_two_steps(params, tmp_path, data=clips(t=6))
    for key in ("vid/rgb", "vid/adv_t", "vid/disc_t/loss", "vid/q"):
        assert np.isfinite(m[key]), key
    with pytest.raises(ValueError, match="video_warmup"):
        make_batch_stream(clips(t=4), params, 0)  # 5 frames needed


def test_eval_protocol_uses_reconstructed_frames_as_context(monkeypatch):
    torch.manual_seed(0)
    model = CCVSAutoencoder(MODEL)
    data = clips(1, 4)
    encoded = []
    original = model.encode

    def spy(x):
        encoded.append(x.detach().clone())
        return original(x)

    monkeypatch.setattr(model, "encode", spy)
    res = reconstruct_clips(model, data, "cpu")
    assert res.psnr.shape == (1, 3) and res.ssim.shape == (1, 3)
    assert res.recon.shape == data.shape and np.array_equal(res.recon[:, 0], data[:, 0])
    real = aet.to_model_range(torch.from_numpy(data))[0]
    # context encodings: E(x_0) of the real first frame, then E(x̂_1), E(x̂_2)
    contexts = encoded
    assert len(contexts) == 3
    assert torch.allclose(contexts[0][0], real[0])
    for t, ctx in enumerate(contexts[1:], start=1):
        assert not torch.allclose(ctx[0], real[t], atol=1e-2)  # not the real frame …
        recon = aet.to_model_range(torch.from_numpy(res.recon[0, t]))
        assert (ctx[0].clamp(-1, 1) - recon).abs().max() < 2 / 255 + 1e-6  # … the decoded one


def test_dead_codes_are_reseeded_in_model_and_ema(tmp_path):
    params = tiny_params(dead_code_every=1, video_every=0,
                         loop=LoopConfig(steps=2, log_every=1, device="cpu", ema_decay=0.9))
    torch.manual_seed(0)
    task = AutoencoderTask(params)
    before = task.model.quantizer.codebook.weight.detach().clone()
    res = fit(task, make_batch_stream(clips(), params, 0), params.loop, tmp_path, None, resume=False)
    assert task.reseeded_total >= params.model.codebook_size  # step 0: data-dependent init of all
    after = res.state["ae"]["model.quantizer.codebook.weight"]
    assert not torch.allclose(after, before)


def test_ema_codebook_is_updated_by_moving_averages_not_adam(tmp_path):
    params = tiny_params(codebook_ema=0.5, dead_code_every=0, video_every=0, use_vgg=False,
                         loop=LoopConfig(steps=1, log_every=1, device="cpu"))
    torch.manual_seed(0)
    task = AutoencoderTask(params)
    weight = task.model.quantizer.codebook.weight
    assert not weight.requires_grad
    assert all(p is not weight for g in task.opt_g.param_groups for p in g["params"])
    before = weight.detach().clone()
    enc_before = [p.detach().clone() for p in task.model.encoder.parameters()]
    fit(task, make_batch_stream(clips(), params, 0), params.loop, tmp_path, None, resume=False)
    size, embed = task.ema_stats
    used = size > 0.5 + 1e-6  # N = 0.5·1 + 0.5·n: above 0.5 exactly for the codes picked
    assert used.any() and (~used).any()
    after = weight.detach()
    assert not torch.allclose(after[used], before[used])  # moved towards their assigned z
    assert torch.allclose(after[~used], before[~used], rtol=1e-3, atol=1e-5)  # only decayed
    assert torch.allclose(after, embed / embed.new_tensor(1.0).mul(size[:, None]), rtol=1e-3,
                          atol=1e-5)  # e = m / N (smoothing ε negligible here)
    # The straight-through (commitment + L_r) gradient still trained E.
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, task.model.encoder.parameters()))
    assert "codebook_ema" in task.extra_state()


def test_context_warmup_bypasses_f_before_step_w(tmp_path, monkeypatch):
    params = tiny_params(context_warmup=2, video_every=2, use_vgg=False,
                         loop=LoopConfig(steps=4, log_every=1, device="cpu"))
    seen = []  # (num_context of each recursive decoding)
    original = aef.decode_recursively
    monkeypatch.setattr(aef, "decode_recursively",
                        lambda model, z_q, first, c, warmup=0: seen.append(c) or original(
                            model, z_q, first, c, warmup))
    contexts = []  # per image step: was there a context?
    task = AutoencoderTask(params)
    original_ctx = task.context_for
    monkeypatch.setattr(task, "context_for", lambda x, prev, step, dev: contexts.append(
        (step, original_ctx(x, prev, step, dev)[0] is not None)) or original_ctx(x, prev, step, dev))
    log = RecordingLogger()
    fit(task, make_batch_stream(clips(), params, 0), params.loop, tmp_path, log, resume=False)
    assert contexts == [(0, False), (2, True)]  # image steps 0 and 2; W = 2
    assert seen == [0, 1]  # video step 1 decodes without context, video step 3 with c = 1
    assert len(log.metrics["img/ctx"]) == 1  # L_c only once F runs (image step 2)
    assert task.ddp_options() == {"find_unused_parameters": True}
