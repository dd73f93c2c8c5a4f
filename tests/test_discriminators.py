"""Δi, Δt (App. A) and the logistic losses of Eq. (5)–(6), R1 penalty."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.discriminators import (
    DiscriminatorConfig,
    ImageDiscriminator,
    TemporalDiscriminator,
    adversarial_loss,
    discriminator_loss,
    minibatch_stddev,
    r1_penalty,
)

torch.set_num_threads(1)
TINY = dict(channels=4, max_channels=16)


def test_losses_follow_eq5_eq6_as_written() -> None:
    z = torch.zeros(3)
    assert float(discriminator_loss(z, z)) == pytest.approx(2 * math.log(2))
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    expected = (math.log1p(math.e**2) + math.log1p(math.e**-1)) / 2 + (
        math.log1p(math.e**-0.5) + math.log1p(math.e**-3)
    ) / 2
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected, rel=1e-6)
    assert float(adversarial_loss(fake)) == pytest.approx(
        (math.log1p(math.e**0.5) + math.log1p(math.e**3)) / 2, rel=1e-6
    )
    # Convention: a LOW score means real. L_d falls when real scores fall and fake scores rise.
    assert discriminator_loss(torch.tensor([-5.0]), torch.tensor([5.0])) < 0.02
    assert discriminator_loss(torch.tensor([5.0]), torch.tensor([-5.0])) > 9.9
    assert adversarial_loss(torch.tensor([-5.0])) < adversarial_loss(torch.tensor([5.0]))


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_image_discriminator_shapes(resolution: int) -> None:
    cfg = DiscriminatorConfig(resolution=resolution, **TINY)
    d = ImageDiscriminator(cfg)
    assert len(d.blocks) == int(math.log2(resolution // 4))
    out = d(torch.randn(2, 3, resolution, resolution))
    assert out.shape == (2,) and torch.isfinite(out).all()


@pytest.mark.parametrize("frames,kept", [(1, 1), (4, 2), (8, 2), (16, 2)])
def test_temporal_discriminator_shapes_and_temporal_downsampling(frames: int, kept: int) -> None:
    d = TemporalDiscriminator(DiscriminatorConfig(resolution=32, **TINY))
    seen = {}

    def hook(module, inputs, output) -> None:
        seen["shape"] = inputs[0].shape

    d.final_conv.register_forward_hook(hook)
    out = d(torch.randn(3, frames, 3, 32, 32))
    assert out.shape == (3,) and torch.isfinite(out).all()
    assert seen["shape"][2:] == (kept, 4, 4)  # T halved down to temporal_final, H = W = 4


def test_temporal_discriminator_sees_frame_order() -> None:
    torch.manual_seed(0)
    d = TemporalDiscriminator(DiscriminatorConfig(resolution=32, mbstd_group=0, **TINY))
    clip = torch.randn(2, 4, 3, 32, 32)
    assert torch.equal(d(clip), d(clip))
    assert not torch.allclose(d(clip), d(clip.flip(1)))


def test_bad_inputs_are_clear_errors() -> None:
    d = ImageDiscriminator(DiscriminatorConfig(resolution=32, **TINY))
    with pytest.raises(ValueError, match="32×32 RGB"):
        d(torch.randn(1, 3, 64, 64))
    t = TemporalDiscriminator(DiscriminatorConfig(resolution=32, **TINY))
    with pytest.raises(ValueError, match="32×32 RGB"):
        t(torch.randn(1, 3, 8, 32, 32))  # (B, 3, T, H, W) instead of (B, T, 3, H, W)
    with pytest.raises(ValueError, match=r"\(B, T, 3, H, W\)"):
        t(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="power of 2"):
        DiscriminatorConfig(resolution=48)


def test_parameter_counts_are_reasonable() -> None:
    cfg = DiscriminatorConfig()  # 64×64 defaults
    n_i = sum(p.numel() for p in ImageDiscriminator(cfg).parameters())
    n_t = sum(p.numel() for p in TemporalDiscriminator(cfg).parameters())
    assert 1e6 < n_i < 6e6
    assert 3e6 < n_t < 1.5e7 and n_t > 2 * n_i  # 3×3×3 kernels: ~3× the 2D weights
    assert cfg.block_channels() == [32, 64, 128, 256, 256]


def test_minibatch_stddev() -> None:
    same = torch.randn(1, 5, 4, 4).expand(4, 5, 4, 4)
    out = minibatch_stddev(same, 4)
    assert out.shape == (4, 6, 4, 4) and out[:, 5].abs().max() < 1e-3
    odd = minibatch_stddev(torch.randn(3, 2, 4, 4), 4)  # 3 samples, group 4 → group 3
    assert odd.shape == (3, 3, 4, 4) and torch.allclose(odd[0, 2], odd[2, 2])


def test_training_delta_i_lowers_ld_on_separable_data() -> None:
    torch.manual_seed(0)
    cfg = DiscriminatorConfig(resolution=16, channels=4, max_channels=8)
    d = ImageDiscriminator(cfg)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)

    def batch():
        noise = torch.randn(8, 3, 16, 16, generator=gen) * 0.3
        return noise + 0.5, noise.flip(0) - 0.5  # "real" bright, "fake" dark

    real, fake = batch()
    with torch.no_grad():
        start = float(discriminator_loss(d(real), d(fake)))
    for _ in range(30):
        real, fake = batch()
        loss = discriminator_loss(d(real), d(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
    real, fake = batch()
    with torch.no_grad():
        end = float(discriminator_loss(d(real), d(fake)))
        assert d(real).mean() < d(fake).mean()  # low = real, as Eq. (5) trains it
    assert end < 0.5 * start


def test_r1_penalty() -> None:
    x = torch.randn(4, 3, 8, 8)

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 8, 8))

        def forward(self, x):
            return (x * self.w).flatten(1).sum(1)

    lin = Linear()
    r1 = r1_penalty(lin, x)
    assert torch.allclose(r1, lin.w.pow(2).sum())  # ∇_x Δ(x) = w for every sample
    r1.backward()
    assert torch.allclose(lin.w.grad, 2 * lin.w.detach())  # differentiable w.r.t. Δ's params

    class Constant(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.b = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.b * (x * 0).flatten(1).sum(1) + self.b

    assert float(r1_penalty(Constant(), x).detach()) == 0.0

    torch.manual_seed(0)
    d = ImageDiscriminator(DiscriminatorConfig(resolution=16, **TINY))
    img = torch.randn(2, 3, 16, 16)
    pen = r1_penalty(d, img)
    assert float(pen.detach()) > 0 and img.grad is None  # the caller's tensor is left alone
    pen.backward()
    grads = [p.grad for p in d.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    # and it equals the squared input-gradient norm computed by hand
    x2 = img.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(d(x2).sum(), x2)
    assert torch.allclose(pen, g.pow(2).flatten(1).sum(1).mean(), rtol=1e-5)


def test_softplus_identity_used_by_the_losses() -> None:
    t = torch.linspace(-20, 20, 41)
    assert torch.allclose(F.softplus(t), torch.log1p(torch.exp(t)), atol=1e-6)


def test_one_pass_over_real_and_fake_gives_the_separate_logits() -> None:
    torch.manual_seed(0)
    cfg = DiscriminatorConfig(resolution=16, channels=4, max_channels=8, mbstd_group=2)
    di, dt = ImageDiscriminator(cfg), TemporalDiscriminator(cfg)
    real, fake = torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16) + 1
    both = di(torch.cat([real, fake]), parts=2)
    torch.testing.assert_close(both, torch.cat([di(real), di(fake)]))  # stddev within each half
    assert not torch.allclose(di(torch.cat([real, fake])), both)  # one group would mix them
    clips = torch.randn(4, 3, 3, 16, 16)
    torch.testing.assert_close(dt(clips, parts=2), torch.cat([dt(clips[:2]), dt(clips[2:])]))
    with pytest.raises(ValueError, match="parts=3"):
        di(torch.cat([real, fake]), parts=3)


def test_temporal_discriminator_trains_in_bf16_on_cpu_at_256_pixels() -> None:
    """torch's CPU bf16 Conv3d backward corrupts the heap from 160-px frames (the 256-px paper
    presets aborted): there Δt runs in fp32 under bf16 autocast, and a step completes; at the
    demo's 64 px it stays in bf16."""
    torch.manual_seed(0)
    big = TemporalDiscriminator(DiscriminatorConfig(resolution=256, channels=32, max_channels=32,
                                                    final_resolution=64))
    clip = torch.randn(1, 2, 3, 256, 256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = big(clip)
    assert out.dtype == torch.float32
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in big.parameters() if p.grad is not None)
    small = TemporalDiscriminator(DiscriminatorConfig(resolution=64, channels=8, max_channels=8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert small(torch.randn(2, 2, 3, 64, 64)).dtype == torch.bfloat16
