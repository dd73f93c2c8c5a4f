"""Q / U (ccvs_models/quantizer.py): lookup invariants, Eq. (3), straight-through, dead codes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ccvs_models.quantizer import QuantizerConfig, VectorQuantizer

torch.set_num_threads(1)


def make(q: int = 16, dim: int = 4, beta: float = 0.25, normalize: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    config = QuantizerConfig(codebook_size=q, dim=dim, beta=beta, normalize=normalize)
    return VectorQuantizer(config)


def test_tokens_are_the_nearest_codes_and_decode_gives_z_q():
    vq = make()
    z = torch.randn(2, 4, 5, 3)
    out = vq(z)
    assert out.tokens.shape == (2, 5, 3) and out.tokens.dtype == torch.long
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, vq.codebook.weight).argmin(1).reshape(2, 5, 3)
    assert torch.equal(out.tokens, expected)
    # U(Q(z)) == z_q, encode == the tokens of forward, z_q rows are codebook rows.
    assert torch.allclose(vq.decode(out.tokens), out.z_q, atol=1e-6)
    assert torch.equal(vq.encode(z), out.tokens)
    assert torch.allclose(out.z_q[0, :, 1, 2], vq.codebook.weight[out.tokens[0, 1, 2]], atol=1e-6)


def test_quantizing_a_code_returns_it():
    vq = make(q=8, dim=3)
    codes = vq.codebook.weight.detach()
    z = codes[torch.tensor([3, 5, 0, 7])].t().reshape(1, 3, 2, 2)
    out = vq(z)
    assert out.tokens.flatten().tolist() == [3, 5, 0, 7]
    assert torch.allclose(out.z_q, z) and out.loss.item() < 1e-10


def test_loss_matches_eq3_and_its_gradients_split_as_written():
    beta = 0.25
    vq = make(beta=beta)
    z = torch.randn(3, 4, 4, 4, requires_grad=True)
    out = vq(z)
    zq = vq.decode(out.tokens).detach()
    expected = F.mse_loss(zq, z.detach()) * (1 + beta)
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    out.loss.backward()
    # The encoder only gets the commitment term β‖sg(z_q) − z‖² ...
    assert torch.allclose(z.grad, beta * 2 * (z.detach() - zq) / z.numel(), atol=1e-7)
    # ... and the codebook only the first term ‖sg(z) − z_q‖²: zero gradient for unused codes.
    used = torch.zeros(16, dtype=torch.bool)
    used[out.tokens.unique()] = True
    assert vq.codebook.weight.grad[~used].abs().max() == 0
    assert vq.codebook.weight.grad[used].abs().sum(1).min() > 0


def test_straight_through_copies_the_gradient_of_z_q_onto_z():
    vq = make()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    (vq(z).z_q * g).sum().backward()
    assert torch.allclose(z.grad, g)
    assert vq.codebook.weight.grad is None or vq.codebook.weight.grad.abs().max() == 0


def test_counts_and_perplexity():
    vq = make(q=4, dim=2)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0], [10, 0], [0, 10], [10, 10]]))
    same = torch.zeros(1, 2, 2, 4)  # every vector is code 0
    out = vq(same)
    assert out.counts.tolist() == [8, 0, 0, 0]
    assert torch.allclose(out.perplexity, torch.tensor(1.0))
    each = torch.tensor([[0.0, 10, 0, 10], [0, 0, 10, 10]]).reshape(1, 2, 1, 4)
    out = vq(each)
    assert out.counts.tolist() == [1, 1, 1, 1]
    assert torch.allclose(out.perplexity, torch.tensor(4.0))


def test_decode_rejects_bad_tokens():
    vq = make(q=8)
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vq.decode(torch.tensor([[[8]]]))
    with pytest.raises(ValueError, match="integers"):
        vq.decode(torch.zeros(1, 1, 1))
    with pytest.raises(ValueError, match="expected z"):
        vq(torch.randn(1, 5, 2, 2))


def test_reinit_dead_codes_reseeds_only_unused_codes_from_the_samples():
    vq = make(q=8, dim=3)
    before = vq.codebook.weight.detach().clone()
    counts = torch.tensor([5, 0, 2, 0, 1, 0, 0, 9])
    z = torch.randn(2, 3, 4, 4) + 100.0  # far from every code: easy to tell apart
    n = vq.reinit_dead_codes(z, counts, generator=torch.Generator().manual_seed(0))
    after = vq.codebook.weight.detach()
    dead = counts == 0
    assert n == int(dead.sum())
    assert torch.equal(after[~dead], before[~dead])
    samples = z.permute(0, 2, 3, 1).reshape(-1, 3)
    for row in after[dead]:
        assert (samples - row).abs().sum(1).min() < 1e-5  # each new code is one of the samples
    assert vq.reinit_dead_codes(z, torch.ones(8, dtype=torch.long)) == 0
    with pytest.raises(ValueError, match="counts"):
        vq.reinit_dead_codes(z, torch.ones(7))


def test_bf16_autocast_keeps_fp32_matching():
    vq = make(q=64, dim=8)
    z = torch.randn(2, 8, 4, 4)
    ref = vq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z.bfloat16())
    assert out.z_q.dtype == torch.float32 and torch.isfinite(out.loss)
    # bf16 inputs are rounded, so compare with the fp32 quantizer on the same rounded inputs.
    assert torch.equal(out.tokens, vq(z.bfloat16().float()).tokens)
    assert (out.tokens == ref.tokens).float().mean() > 0.9


def test_normalized_codes_are_unit_vectors():
    vq = make(q=8, dim=4, normalize=True)
    z = torch.randn(1, 4, 3, 3) * 7
    out = vq(z)
    assert torch.allclose(out.z_q.norm(dim=1), torch.ones(1, 3, 3), atol=1e-5)
    assert torch.allclose(vq.decode(out.tokens), out.z_q, atol=1e-6)


@pytest.mark.parametrize("field,value", [("codebook_size", 0), ("dim", 0), ("beta", -1.0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        QuantizerConfig(**{field: value})


def test_ema_update_moves_used_codes_to_their_assigned_mean_and_leaves_unused_ones():
    vq = make(q=8, dim=3, seed=1)
    codes = vq.codebook.weight.detach().clone()
    # Six vectors near code 2, two near code 5; the other codes are unused.
    near = torch.cat([codes[2] + 0.1 * torch.randn(6, 3), codes[5] + 0.1 * torch.randn(2, 3)])
    z = near.t().reshape(1, 3, 2, 4)
    tokens = vq.encode(z)
    assert sorted(set(tokens.flatten().tolist())) == [2, 5]
    size, embed = vq.ema_init()
    assert torch.equal(size, torch.ones(8)) and torch.equal(embed, codes)
    counts, sums = vq.ema_batch_stats(z, tokens)
    assert counts.tolist() == [0, 0, 6, 0, 0, 2, 0, 0]
    assert torch.allclose(sums[2], near[:6].sum(0)) and sums[0].abs().sum() == 0
    for _ in range(40):
        vq.ema_update(size, embed, counts, sums, decay=0.9)
    new = vq.codebook.weight.detach()
    # Used codes converge to the mean of their assigned vectors (up to the small smoothing).
    assert torch.allclose(new[2], near[:6].mean(0), atol=1e-3)
    assert torch.allclose(new[5], near[6:].mean(0), atol=1e-3)
    # Unused codes: only their statistics decayed; e = m / N is unchanged but for the smoothing
    # (which shrinks e once N decays to ~ε: long-dead codes need re-seeding, as the stage does).
    unused = [0, 1, 3, 4, 6, 7]
    assert torch.allclose(new[unused], codes[unused], rtol=2e-3, atol=1e-4)
    assert not torch.equal(new[unused], codes[unused])
    assert size[unused].max() < 0.02 and abs(size[2].item() - 6.0) < 0.1


def test_ema_update_one_step_is_the_vqvae_formula():
    vq = make(q=4, dim=2, seed=2)
    size, embed = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.randn(4, 2)
    counts, sums = torch.tensor([2.0, 0.0, 1.0, 0.0]), torch.randn(4, 2)
    g, eps = 0.8, 0.1
    n = g * torch.tensor([1.0, 2.0, 3.0, 4.0]) + (1 - g) * counts
    m = g * embed + (1 - g) * sums
    smooth = (n + eps) / (n.sum() + 4 * eps) * n.sum()
    vq.ema_update(size, embed, counts, sums, decay=g, eps=eps)
    assert torch.allclose(size, n) and torch.allclose(embed, m)
    assert torch.allclose(vq.codebook.weight, m / smooth[:, None], atol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        vq.ema_update(size, embed, counts, sums, decay=1.0)


def test_with_an_ema_codebook_the_straight_through_gradient_still_reaches_the_encoder():
    vq = make(q=8, dim=4)
    vq.codebook.weight.requires_grad_(False)  # the EMA caller takes the codebook out of Adam
    enc = torch.nn.Conv2d(3, 4, 1)
    x = torch.randn(2, 3, 3, 3)
    out = vq(enc(x))
    (out.z_q.square().sum() + out.loss).backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    assert vq.codebook.weight.grad is None
