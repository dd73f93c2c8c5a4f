"""E, D, F composed (ccvs_models/autoencoder.py) and the shared ResBlock (ccvs_models/blocks.py)."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.blocks import ResBlock

torch.set_num_threads(1)


def tiny(**overrides) -> AutoencoderConfig:
    """K = 2: 16×16 frames → 4×4 tokens; levels 0, 1, 2 at 4, 8, 16 pixels."""
    base = dict(
        base_channels=8,
        channel_mult=(1, 2, 2),
        num_levels=2,
        latent_dim=8,
        codebook_size=32,
        context_frames=1,
        flow_radius=1,
        flow_hidden=8,
        flow_corr_dim=4,
    )
    base.update(overrides)
    return AutoencoderConfig(**base)


def build(config: AutoencoderConfig, seed: int = 0) -> CCVSAutoencoder:
    torch.manual_seed(seed)
    return CCVSAutoencoder(config)


def frames(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------- ResBlock


@pytest.mark.parametrize("resample,size", [("down", 4), ("up", 16), ("none", 8)])
def test_resblock_resamples(resample, size):
    torch.manual_seed(0)
    block = ResBlock(3, 5, resample)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 5, size, size)
    y.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in block.parameters())


def test_resblock_rejects_bad_arguments():
    with pytest.raises(ValueError, match="resample"):
        ResBlock(3, 3, "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="odd spatial size"):
        ResBlock(3, 3, "down")(torch.zeros(1, 3, 7, 8))


# --------------------------------------------------------------------------- shapes and methods


def test_round_trip_shapes_and_level_order():
    cfg = tiny()
    model = build(cfg)
    x = frames(2, 3, 16, 16)
    enc = model.encode(x)
    assert enc.z.shape == (2, 8, 4, 4)
    # e^k coarse → fine, with the channels of the matching decoder level.
    assert [tuple(f.shape) for f in enc.features] == [(2, 16, 4, 4), (2, 16, 8, 8), (2, 8, 16, 16)]
    quant = model.quantize(enc.z)
    assert quant.tokens.shape == (2, 4, 4) and quant.z_q.shape == enc.z.shape
    dec = model.decode(quant.z_q)
    assert dec.x_hat.shape == x.shape
    assert dec.x_hat.abs().max() < 1  # tanh output
    assert dec.levels == () and dec.flows == []  # no context, no F
    # decode_tokens is D(U(tokens)); tokenize is Q(E(x)).
    assert torch.allclose(model.decode_tokens(quant.tokens).x_hat, dec.x_hat, atol=1e-6)
    assert torch.equal(model.tokenize(x), quant.tokens)


def test_reconstruct_exposes_flows_and_masks_per_level_for_lc():
    cfg = tiny(context_frames=2)
    model = build(cfg)
    out = model.reconstruct(frames(2, 3, 16, 16), frames(2, 2, 3, 16, 16, seed=2))
    dec = out.decoder
    assert dec.levels == (1, 2)  # paper default: F after every decoding block
    assert [tuple(f.shape) for f in dec.flows] == [(2, 2, 2, 8, 8), (2, 2, 2, 16, 16)]
    assert [tuple(m.shape) for m in dec.masks] == [(2, 2, 1, 8, 8), (2, 2, 1, 16, 16)]
    assert [tuple(m.shape) for m in dec.fused_masks] == [(2, 1, 8, 8), (2, 1, 16, 16)]
    for s in dec.confidences:
        assert torch.allclose(s.sum(1), torch.ones_like(s[:, 0]), atol=1e-6)
    assert out.quant.loss.ndim == 0 and out.z.shape == (2, 8, 4, 4)


def test_context_forms_agree_and_any_context_size_works():
    cfg = tiny(context_frames=1, flow_levels=(0, 1, 2))
    model = build(cfg)
    ctx = frames(2, 3, 3, 16, 16, seed=3)
    z_q = model.quantize(model.encode(frames(2, 3, 16, 16)).z).z_q
    stacked = model.decode(z_q, model.encode_context(ctx))
    per_frame = model.decode(z_q, [model.encode(ctx[:, i]).features for i in range(3)])
    assert torch.allclose(stacked.x_hat, per_frame.x_hat, atol=1e-5)
    assert stacked.levels == (0, 1, 2) and stacked.flows[0].shape == (2, 3, 2, 4, 4)


def test_no_flow_model_has_no_f_parameters_and_ignores_context():
    with_f = build(tiny(context_frames=1))
    without = build(tiny(context_frames=0))
    assert not without.has_flow and with_f.has_flow
    assert not any(".flow." in n for n, _ in without.named_parameters())
    assert any(".flow." in n for n, _ in with_f.named_parameters())
    n_with = sum(p.numel() for p in with_f.parameters())
    n_without = sum(p.numel() for p in without.parameters())
    assert n_without < n_with
    x = frames(2, 3, 16, 16)
    plain = without.reconstruct(x).x_hat
    assert torch.equal(without.reconstruct(x, frames(2, 1, 3, 16, 16, seed=4)).x_hat, plain)
    z_q = without.quantize(without.encode(x).z).z_q
    context = [without.encode(x).features]
    assert torch.equal(without.decode(z_q, context).x_hat, without.decode(z_q).x_hat)


def test_context_changes_the_output_when_f_is_on():
    model = build(tiny(context_frames=1))
    x = frames(1, 3, 16, 16)
    a = model.reconstruct(x, frames(1, 1, 3, 16, 16, seed=5)).x_hat
    b = model.reconstruct(x, frames(1, 1, 3, 16, 16, seed=6)).x_hat
    assert (a - b).abs().max() > 1e-3


# --------------------------------------------------------------------------- gradients


def test_straight_through_gradient_reaches_the_encoder():
    model = build(tiny(context_frames=0))  # the quantizer is the only path from D to E
    x = frames(2, 3, 16, 16).requires_grad_()
    out = model.reconstruct(x)
    F.l1_loss(out.x_hat, x.detach()).backward()
    assert x.grad.abs().sum() > 0
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradients_reach_the_encoder_through_f_from_the_context():
    model = build(tiny(context_frames=2, flow_levels=(0, 1, 2)))
    x = frames(2, 3, 16, 16)
    ctx = frames(2, 2, 3, 16, 16, seed=7).requires_grad_()
    z_q = model.quantize(model.encode(x).z).z_q.detach()  # cut the direct path E → Q → D
    out = model.decode(z_q, model.encode_context(ctx))
    F.l1_loss(out.x_hat, x).backward()
    assert ctx.grad[:, 0].abs().sum() > 0 and ctx.grad[:, 1].abs().sum() > 0
    # Only the context path remains, yet E's parameters (stem → every level) get gradients.
    for name, p in model.encoder.blocks.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.encoder.stem.weight.grad.abs().sum() > 0
    assert model.encoder.to_latent.weight.grad is None  # z is not on the context path


def test_levels_without_f_take_no_gradient_from_the_context():
    model = build(tiny(context_frames=1, flow_levels=(2,)))  # F only at the image resolution
    ctx = frames(1, 1, 3, 16, 16, seed=7)
    z_q = model.quantize(model.encode(frames(1, 3, 16, 16)).z).z_q.detach()
    model.decode(z_q, model.encode_context(ctx)).x_hat.square().sum().backward()
    assert model.encoder.stem.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.encoder.blocks.parameters())


# --------------------------------------------------------------------------- config, checkpoint


def test_state_dict_round_trip_through_asdict_config():
    cfg = tiny(context_frames=2, flow_levels=[1, 2])  # a list, as YAML would give
    model = build(cfg, seed=0)
    buf = io.BytesIO()
    torch.save({"config": dataclasses.asdict(cfg), "state": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    rebuilt = build(AutoencoderConfig(**ckpt["config"]), seed=123)
    rebuilt.load_state_dict(ckpt["state"])
    assert rebuilt.config == cfg
    model.eval()
    rebuilt.eval()
    x, ctx = frames(2, 3, 16, 16), frames(2, 2, 3, 16, 16, seed=8)
    a, b = model.reconstruct(x, ctx), rebuilt.reconstruct(x, ctx)
    assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.quant.tokens, b.quant.tokens)
    assert all(torch.equal(f, g) for f, g in zip(a.decoder.flows, b.decoder.flows))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(channel_mult=(1, 2)), "channel_mult"),
        (dict(flow_levels=(3,)), "flow_levels"),
        (dict(context_frames=-1), "context_frames"),
        (dict(num_levels=0, channel_mult=(1,)), "num_levels"),
    ],
)
def test_config_rejects_bad_values(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(**overrides)


def test_encoder_rejects_bad_frames():
    model = build(tiny())
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 18, 16))
    with pytest.raises(ValueError, match="expected x"):
        model.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="context"):
        model.reconstruct(torch.zeros(1, 3, 16, 16), torch.zeros(2, 1, 3, 16, 16))


def test_default_config_is_the_demo_scale():
    cfg = AutoencoderConfig()
    assert cfg.downsampling == 8 and cfg.beta == 0.25
    enc = CCVSAutoencoder(cfg).encode(torch.zeros(1, 3, 64, 64))
    assert enc.z.shape == (1, cfg.latent_dim, 8, 8)  # 64 tokens per frame, as in the paper


def test_bf16_autocast_runs():
    model = build(tiny(context_frames=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.reconstruct(frames(1, 3, 16, 16), frames(1, 1, 3, 16, 16, seed=9))
    assert torch.isfinite(out.x_hat.float()).all() and torch.isfinite(out.quant.loss)


# --------------------------------------------------------------------------- learning


def smooth_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Random low-frequency colour images in [−1, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    up = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    return up.clamp(-1, 1)


@pytest.mark.parametrize("context_frames", [0, 1])
def test_tiny_overfit(context_frames):
    cfg = tiny(
        base_channels=8, channel_mult=(1, 2, 4), latent_dim=16, codebook_size=64,
        context_frames=context_frames,
    )
    model = build(cfg, seed=0)
    x = smooth_images(2, 32, seed=0)
    # Context: the same images shifted by 2 pixels (F has to find the shift to use them).
    ctx = torch.roll(x, shifts=(2, -2), dims=(2, 3))[:, None] if context_frames else None
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(100):
        out = model.reconstruct(x, ctx)
        rec = F.l1_loss(out.x_hat, x)
        (rec + out.quant.loss).backward()
        opt.step()
        opt.zero_grad()
        losses.append(rec.item())
        if step % 20 == 10:
            model.quantizer.reinit_dead_codes(out.z.detach(), out.quant.counts)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.4 * first, (first, last)
    if context_frames:
        # x[y, x] = ctx[y + 2, x − 2]: backward flow (dx, dy) = (−2, +2) at the image level.
        flow = out.decoder.flows[-1][:, 0, :, 4:-4, 4:-4]
        median = flow.flatten(2).median(dim=2).values.mean(0)
        assert torch.allclose(median, torch.tensor([-2.0, 2.0]), atol=0.75), median


# --------------------------------------------------------------------------- the context rule


@pytest.mark.parametrize("c, anchor, expected", [
    (1, 0, [[], [0], [1], [2], [3]]),  # the paper's sliding window
    (2, 0, [[], [0], [0, 1], [1, 2], [2, 3]]),
    (2, 1, [[], [0], [0, 1], [0, 2], [0, 3]]),  # ours: x_0 stays, plus the latest frame
    (1, 1, [[], [0], [0], [0], [0]]),  # x_0 only: decoded frames never feed back
    (3, 2, [[], [0], [0, 1], [0, 1, 2], [0, 1, 3]]),
])
def test_context_indices_follow_the_rule(c, anchor, expected):
    from ccvs_models.autoencoder import context_indices

    assert [context_indices(t, c, anchor) for t in range(5)] == expected


def test_context_buffer_keeps_the_anchor_and_detaches_older_frames():
    from ccvs_models.autoencoder import ContextBuffer

    buf = ContextBuffer(2, anchor=1, detach_older=True)
    w = torch.ones(1, requires_grad=True)
    feats = [[w * t] for t in range(4)]  # one "level", the value says which frame it is
    assert buf.context() is None
    for t in range(4):
        buf.push(feats[t])
        ctx = buf.context()
        assert [f[0].item() for f in ctx] == [0.0, float(t)][: len(ctx)]
        assert ctx[0][0].requires_grad  # the anchor keeps its graph (real x_0)
    assert ctx[-1][0].requires_grad  # the newest keeps it too …
    assert sorted(buf.frames) == [0, 3]  # … and frames no rule reads again are gone
    assert not buf.reads(7) or buf.context_frames > buf.anchor
    only_anchor = ContextBuffer(1, anchor=1)
    assert only_anchor.reads(0) and not only_anchor.reads(1)  # decoders skip encoding x̂_t
    with pytest.raises(ValueError, match="pushed without features"):
        skipped = ContextBuffer(1)
        skipped.push(None)
        skipped.context()
    with pytest.raises(ValueError, match="anchor"):
        tiny(context_frames=1, context_anchor=2)


def test_anchor_context_is_what_d_reads_in_the_recursion():
    from pipeline.training.autoencoder.forward import decode_recursively

    model = build(tiny(context_frames=2, context_anchor=1)).eval()
    seen = []
    original = model.decode

    def spy(z_q, context=None):
        seen.append([frame[-1] for frame in context])  # finest-level features, oldest first
        return original(z_q, context)

    model.decode = spy
    first = frames(1, 3, 16, 16)
    z_q = model.quantize(model.encode(frames(4, 3, 16, 16, seed=2)).z).z_q[None]
    with torch.no_grad():
        out = decode_recursively(model, z_q, first, 2)
        e0 = model.encoder(first).features[-1]
        e3 = model.encoder(out[:, 2]).features[-1]  # x̂_3 (out[:, t] is frame t + 1)
    assert [len(s) for s in seen] == [1, 2, 2, 2]
    assert all(torch.equal(s[0], e0) for s in seen)  # E(x_0) of the real frame, every time
    assert torch.allclose(seen[3][1], e3)  # frame 4 also reads the latest decoded frame, x̂_3


def test_an_anchor_beyond_c_is_an_error_unless_there_is_no_f():
    # Table 1's "F off" row of the anchored recipe is one key: context_frames 0 (the anchor unused)
    assert AutoencoderConfig(context_frames=0, context_anchor=1).context_problem(0) is None
    assert "no F" in AutoencoderConfig(context_frames=0, context_anchor=1).context_problem(1)
    with pytest.raises(ValueError, match=r"context_anchor must be in \[0, context_frames=1\]"):
        AutoencoderConfig(context_frames=1, context_anchor=2)
    with pytest.raises(ValueError, match="context_anchor"):
        AutoencoderConfig(context_frames=2, context_anchor=-1)
