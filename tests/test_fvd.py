"""FVD (§4, [66]): Fréchet distance maths, the I3D key layout and loader, the protocol."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ccvs_models.i3d import I3DConfig, I3DOutput, InceptionI3d
from pipeline.metrics import fvd
from pipeline.weights import WeightsError
from pipeline.metrics.fvd import (
    compute_fvd,
    frechet_distance,
    fvd_metric_name,
    gaussian_stats,
    load_i3d,
    preprocess,
)

torch.set_num_threads(2)
TINY = (2, 3, 4, 16, 16)  # (B, 3, T, H, W): the architecture runs on small clips


# ------------------------------------------------------------------ Fréchet distance


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_general_gaussians_match_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6))
    m1, s1 = gaussian_stats(a)
    m2, s2 = gaussian_stats(b)
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(ref, rel=1e-8)
    # symmetric in its two arguments, and accepts tensors
    swapped = frechet_distance(torch.tensor(m2), torch.tensor(s2), m1, s1)
    assert swapped == pytest.approx(ref, rel=1e-8)


def test_identical_sets_give_zero_even_when_rank_deficient():
    feats = np.random.default_rng(2).normal(size=(10, 64))  # N < D: singular covariance
    assert fvd.features_distance(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_mean_shift_increases_monotonically_and_exactly():
    feats = np.random.default_rng(3).normal(size=(200, 16))
    direction = np.ones(16) / 4.0  # ‖direction‖² = 1
    values = [fvd.features_distance(feats, feats + k * direction) for k in (0.0, 0.5, 1.0, 2.0)]
    assert values == pytest.approx([0.0, 0.25, 1.0, 4.0], abs=1e-8)  # same Σ: d² = ‖δ‖²
    assert all(a < b for a, b in zip(values, values[1:]))


def test_ill_conditioned_commuting_covariances():
    rng = np.random.default_rng(4)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # shared eigenvectors: closed form known
    l1, l2 = np.logspace(-12, 3, d), rng.permutation(np.logspace(-10, 2, d))
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    assert np.linalg.cond(s1) > 1e14
    mu = np.zeros(d)
    expected = (l1 + l2 - 2 * np.sqrt(l1 * l2)).sum()
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-7)
    assert fvd.trace_sqrt_product(s1, s2) == pytest.approx(np.sqrt(l1 * l2).sum(), rel=1e-7)


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 3)))


# ------------------------------------------------------------------ I3D layout and loading

# (key, shape) of the pytorch-i3d InceptionI3d(400, in_channels=3) state dict
KNOWN_KEYS = {
    "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1a.conv3d.weight": (96, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_3b.b2b.conv3d.weight": (32, 16, 3, 3, 3),
    "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
    "Mixed_3c.b0.bn.weight": (128,),
    "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
    "Mixed_4f.b2b.bn.running_mean": (128,),
    "Mixed_5b.b0.conv3d.weight": (256, 832, 1, 1, 1),
    "Mixed_5c.b0.conv3d.weight": (384, 832, 1, 1, 1),
    "Mixed_5c.b3b.bn.bias": (128,),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}
TOP_LEVEL = {"Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "Mixed_3b", "Mixed_3c", "Mixed_4b",
             "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c", "logits"}


def test_i3d_key_layout_matches_the_conversion():
    state = InceptionI3d().state_dict()
    for key, shape in KNOWN_KEYS.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    assert {k.split(".")[0] for k in state} == TOP_LEVEL
    convs = [k for k in state if k.endswith("conv3d.weight")]
    assert len(convs) == 3 + 9 * 6 + 1
    # only the logits conv has a bias and it has no batch norm
    assert [k for k in state if k.endswith("conv3d.bias")] == ["logits.conv3d.bias"]
    assert not any(k.startswith("logits.bn") for k in state)
    assert len(state) == (3 + 9 * 6) * 6 + 2  # conv + 5 BN entries per unit, logits w + b
    assert sum(p.numel() for p in InceptionI3d().parameters()) == 12_697_264


@pytest.fixture(scope="module")
def tiny_clips():
    g = torch.Generator().manual_seed(0)
    return torch.rand(*TINY, generator=g) * 2 - 1


def test_forward_shapes_and_head(tiny_clips):
    model = fvd.random_i3d().eval()
    with torch.no_grad():
        out = model(tiny_clips)
    assert out.logits.shape == (2, 400) and out.features.shape == (2, 1024)
    # the 1×1×1 logits conv is affine, so logits = W · pooled features + b
    w = model.logits.conv3d.weight.flatten(1)
    expected = out.features @ w.T + model.logits.conv3d.bias
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    assert out.logits.std() > 0 and not torch.allclose(out.logits[0], out.logits[1])
    with pytest.raises(ValueError, match="expects"):
        model(tiny_clips[:, :2])


def test_saved_state_dict_loads_with_identical_logits(tmp_path, tiny_clips):
    source = fvd.random_i3d(seed=5).eval()
    path = tmp_path / "i3d_pretrained_400.pt"
    torch.save(source.state_dict(), path)
    loaded, info = load_i3d(path, offline=True)
    assert info.pretrained and info.source == "path" and info.location == str(path)
    assert info.ident.startswith("sha256:") and fvd_metric_name(info) == "fvd"
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        torch.testing.assert_close(loaded(tiny_clips).logits, source(tiny_clips).logits)


def test_old_state_dict_without_num_batches_tracked_loads(tmp_path):
    state = {k: v for k, v in fvd.random_i3d(seed=6).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model, info = load_i3d(str(path), offline=True)
    assert info.pretrained
    key = "Mixed_4c.b1b.conv3d.weight"
    torch.testing.assert_close(model.get_parameter(key), state[key])


@pytest.mark.parametrize("kind", ["missing", "shape", "garbage"])
def test_mismatched_file_gives_one_line_error_naming_it(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "missing":
        state = InceptionI3d().state_dict()
        del state["Mixed_4d.b0.conv3d.weight"]
        torch.save(state, path)
    elif kind == "shape":
        torch.save(InceptionI3d(I3DConfig(num_classes=101)).state_dict(), path)
    else:
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as err:
        load_i3d(path, offline=True)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    expected = {"missing": "Mixed_4d.b0.conv3d.weight", "shape": "logits.conv3d.weight",
                "garbage": "cannot read"}[kind]
    assert expected in message


def test_offline_without_weights_is_flagged_untrained(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # empty cache
    rng_before = torch.get_rng_state()
    model, info = load_i3d(None, None, offline=True)
    assert torch.equal(torch.get_rng_state(), rng_before)  # fixed seed, global RNG untouched
    assert info.pretrained is False and info.source == "random" and info.location == "random-init"
    assert fvd_metric_name(info) == "fvd_untrained_i3d"
    assert "fvd_untrained_i3d" in caplog.text and "unavailable" in caplog.text
    again, _ = load_i3d(str(tmp_path / "absent.pt"), None, offline=True)
    torch.testing.assert_close(model.Conv3d_1a_7x7.conv3d.weight, again.Conv3d_1a_7x7.conv3d.weight)


def test_hub_cache_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save(fvd.random_i3d(seed=7).state_dict(), tmp_path / "checkpoints" / fvd.I3D_FILE)
    _, info = load_i3d(None, None, offline=True)
    assert info.pretrained and info.source == "cache"


# ------------------------------------------------------------------ protocol


def test_preprocess_layout_range_and_dtypes():
    g = torch.Generator().manual_seed(1)
    u8 = torch.randint(0, 256, (2, 3, 3, 20, 30), generator=g, dtype=torch.uint8)
    as_float = u8.float() / 127.5 - 1
    a, b = preprocess(u8, resolution=40), preprocess(as_float.numpy(), resolution=40)
    assert a.shape == (2, 3, 3, 40, 40) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
    assert a.min() >= -1 and a.max() <= 1
    const = torch.full((1, 2, 3, 16, 16), 0.25)
    # a constant stays constant (up to float rounding of the resize, which varies with threads)
    assert (preprocess(const) - 0.25).abs().max() < 1e-6
    assert preprocess(const).shape == (1, 3, 2, 224, 224)
    # at the target size only the layout changes: (N, T, 3, H, W) → (N, 3, T, H, W)
    torch.testing.assert_close(preprocess(as_float[..., :20], resolution=20),
                               as_float[..., :20].permute(0, 2, 1, 3, 4))
    with pytest.raises(ValueError, match="N, T, 3, H, W"):
        preprocess(torch.zeros(2, 3, 20, 20, 3))


def _videos(n: int, seed: int, t: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, 3, 8, 8, generator=g) * 1.6 - 0.8  # smooth, upsampled by preprocess
    return (base + 0.1 * torch.randn(n, t, 3, 8, 8, generator=g)).clamp(-1, 1)


class _PooledColours(torch.nn.Module):
    """A fast stand-in feature network: per-frame mean colours (B, 3·T), I3D's output type."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))  # gives the model a device

    def forward(self, x: torch.Tensor) -> I3DOutput:
        f = x.mean(dim=(3, 4)).flatten(1) * self.scale
        return I3DOutput(logits=f, features=f)


def test_compute_fvd_with_random_i3d_is_zero_on_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model, info = load_i3d(None, None, offline=True)
    real = _videos(2, 0, t=4)
    same = compute_fvd(real, real.clone(), model, info, batch_size=2, frames=4, resolution=16)
    assert same["mean"] == pytest.approx(0.0, abs=1e-6)
    assert same["metric"] == "fvd_untrained_i3d" and same["pretrained"] is False
    assert same["weights"] == "random-init" and same["num_real"] == 2 and same["frames"] == 4
    assert same["conditioning_frames_counted"] is True and same["std"] == 0.0


def test_compute_fvd_protocol_shift_repeats_and_frames():
    model = _PooledColours()
    info = fvd.I3DWeightsInfo(True, "path", "/weights/i3d.pt", "sha256:x", "test weights")
    real, other = _videos(12, 0), _videos(12, 1)
    base = compute_fvd(real, other, model, info, batch_size=5, frames=8, resolution=16)
    assert base["metric"] == "fvd" and base["weights"] == "/weights/i3d.pt"
    shifts = [compute_fvd(real, (other + k).clamp(-1, 1), model, info, frames=8,
                          resolution=16)["mean"] for k in (0.1, 0.3)]
    assert base["mean"] < shifts[0] < shifts[1]

    rep = compute_fvd(real, other, model, info, batch_size=4, frames=6, skip_frames=2, repeats=3,
                      subset_size=6, seed=1, resolution=16)
    assert len(rep["values"]) == 3 and len(set(rep["values"])) == 3  # different random subsets
    assert rep["mean"] == pytest.approx(np.mean(rep["values"]))
    assert rep["std"] == pytest.approx(np.std(rep["values"])) and rep["std"] > 0
    assert rep["skip_frames"] == 2 and rep["conditioning_frames_counted"] is False
    assert rep["subset_size"] == 6 and rep["frames"] == 6
    again = compute_fvd(real, other, model, info, frames=6, skip_frames=2, repeats=3,
                        subset_size=6, seed=1, resolution=16)
    assert again["values"] == rep["values"]  # the seed fixes the subsets
    assert compute_fvd(real, other, model, info, repeats=2, frames=8,
                       resolution=16)["subset_size"] == 6  # default: half of the clips

    # skipping the conditioning frames: identical continuations after a different first frame
    cond = other.clone()
    cond[:, :2] = real[:, :2] + 0.5
    assert compute_fvd(cond, other, model, info, frames=6, skip_frames=2,
                       resolution=16)["mean"] == pytest.approx(0.0, abs=1e-9)

    with pytest.raises(ValueError, match="cannot take frames"):
        compute_fvd(real, real, model, info, frames=8, skip_frames=1, resolution=16)
    with pytest.raises(ValueError, match="at least 2"):
        compute_fvd(real[:1], real, model, info, frames=8, resolution=16)


# ------------------------------------------------------------------ the paper's runs (fvd_runs)


class _Pool(torch.nn.Module):
    """A stand-in feature net: per-clip channel means and their squares (D = 6)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):  # (B, 3, T, H, W) → logits (B, 6)
        mean = x.mean(dim=(2, 3, 4)) * self.scale
        return I3DOutput(logits=torch.cat([mean, mean ** 2], 1), features=None)


def _info(ident: str = "seed:0") -> fvd.I3DWeightsInfo:
    return fvd.I3DWeightsInfo(False, "random", "random-init", ident, "")


def test_real_features_are_cached_under_a_key_of_everything_that_sets_them(tmp_path):
    from pipeline.metrics import fvd_runs

    clips = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (5, 4, 3, 8, 8), np.uint8))
    first, key, cached = fvd_runs.real_features(_Pool(), _info(), clips, resolution=8,
                                                cache_dir=tmp_path)
    again, key2, cached2 = fvd_runs.real_features(_Pool(), _info(), clips, resolution=8,
                                                  cache_dir=tmp_path)
    assert not cached and cached2 and key == key2 and np.array_equal(first, again)
    assert list(tmp_path.iterdir()) == [tmp_path / f"i3d-real-{key}.npz"]
    touched = clips.clone()
    touched[0, 0, 0, 0, 0] ^= 1  # one pixel
    keys = {fvd_runs.features_key(clips, _info(), resolution=8),
            fvd_runs.features_key(touched, _info(), resolution=8),
            fvd_runs.features_key(clips[:, :3], _info(), resolution=8),  # other frames scored
            fvd_runs.features_key(clips, _info("sha256:abc"), resolution=8),  # other weights
            fvd_runs.features_key(clips, _info(), resolution=16)}
    assert len(keys) == 5
    (tmp_path / f"i3d-real-{key}.npz").write_bytes(b"garbage")  # unreadable: recomputed
    redo, _, cached3 = fvd_runs.real_features(_Pool(), _info(), clips, resolution=8,
                                              cache_dir=tmp_path)
    assert not cached3 and np.array_equal(redo, first)


def test_fvd_over_runs_is_the_mean_and_std_of_each_runs_distance():
    from pipeline.metrics import fvd_runs

    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 4))
    runs = [real + 0.5, real + 1.0]  # same Σ: d² = ‖δ‖² = 4 · δ²
    out = fvd_runs.fvd_over_runs(real, runs)
    assert out["values"] == pytest.approx([1.0, 4.0], abs=1e-8)
    assert out["mean"] == pytest.approx(2.5) and out["std"] == pytest.approx(1.5)
    assert fvd_runs.fvd_over_runs(real, runs[:1])["std"] == 0.0


def test_too_few_videos_for_a_full_rank_covariance_are_warned():
    from pipeline.metrics import fvd_runs

    assert "rank <= 7 < 400" in fvd_runs.covariance_warning(8, 400)
    assert "the paper: 256" in fvd_runs.covariance_warning(255, 400)
    assert fvd_runs.covariance_warning(256, 400) is None  # the protocol's own N: comparable
    assert fvd_runs.covariance_warning(9, 8) is None  # N > D: full rank
