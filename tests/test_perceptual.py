"""VGG features for Eq. (4) (ccvs_models.perceptual) and their weights loader (pipeline.weights)."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.error

import pytest
import torch

from ccvs_models.perceptual import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGGConfig,
    VGGFeatures,
    layer_names,
    perceptual_loss,
)
from pipeline import weights
from pipeline.weights import WeightsError, load_vgg

torch.set_num_threads(1)

# torchvision's VGG16 `features` conv indices (configuration "D"); VGG19 ("E").
VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG19_CONVS = [0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34]


def test_layout_matches_torchvision_key_names() -> None:
    vgg = VGGFeatures()
    keys = list(vgg.state_dict())
    assert keys == [f"features.{i}.{p}" for i in VGG16_CONVS for p in ("weight", "bias")]
    sd = vgg.state_dict()
    assert sd["features.0.weight"].shape == (64, 3, 3, 3)
    assert sd["features.28.weight"].shape == (512, 512, 3, 3)
    assert len(vgg.features) == 31
    vgg19 = VGGFeatures(VGGConfig(arch="vgg19", layers=("relu5_4",)))
    assert list(vgg19.state_dict()) == [
        f"features.{i}.{p}" for i in VGG19_CONVS for p in ("weight", "bias")
    ]
    assert len(vgg19.features) == 37
    names16, names19 = layer_names("vgg16"), layer_names("vgg19")
    assert [names16[n] for n in ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "pool5")] == [
        3, 8, 15, 22, 30]
    assert [names19[n] for n in ("relu3_4", "relu4_4", "relu5_4")] == [17, 26, 35]
    assert not any(p.requires_grad for p in vgg.parameters())


def test_features_shapes_normalisation_and_early_stop() -> None:
    torch.manual_seed(0)
    vgg = VGGFeatures(VGGConfig(layers=("relu1_2", "relu2_2", "relu3_3")))
    seen: dict[str, torch.Tensor] = {}

    def grab_input(module, inputs, output) -> None:
        seen["in"] = inputs[0]

    def deeper(module, inputs, output) -> None:
        seen["deeper"] = output

    vgg.features[0].register_forward_hook(grab_input)
    vgg.features[17].register_forward_hook(deeper)  # conv4_1: past relu3_3, must not run
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = vgg(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8)]
    assert all((f >= 0).all() for f in feats)  # ReLU outputs
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(seen["in"], ((x + 1) / 2 - mean) / std, atol=1e-6)
    assert "deeper" not in seen
    with pytest.raises(ValueError, match="unknown vgg16 layers"):
        VGGConfig(layers=("relu9_9",))


def test_perceptual_loss_values_and_gradients() -> None:
    torch.manual_seed(0)
    vgg = VGGFeatures(VGGConfig(layers=("relu1_2", "relu2_2")))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert float(vgg.perceptual_loss(x, x.clone())) == 0.0
    x_hat = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    loss = perceptual_loss(vgg, x, x_hat)
    manual = sum((a - b).abs().mean() for a, b in zip(vgg(x), vgg(x_hat)))
    assert torch.allclose(loss, manual)
    loss.backward()
    assert x_hat.grad is not None and x_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())
    weighted = VGGFeatures(VGGConfig(layers=("relu1_2", "relu2_2"), layer_weights=(2.0, 0.0)))
    weighted.load_state_dict(vgg.state_dict())
    only_first = 2 * (vgg(x)[0] - vgg(x_hat.detach())[0]).abs().mean()
    assert torch.allclose(weighted.perceptual_loss(x, x_hat.detach()), only_first)


# --------------------------------------------------------------------------- pipeline.weights


@pytest.fixture(scope="module")
def fake_vgg16(tmp_path_factory) -> tuple[str, dict[str, torch.Tensor]]:
    """Random weights in torchvision's VGG16 key layout, with a (small) classifier part."""
    torch.manual_seed(1)
    state = dict(VGGFeatures().state_dict())
    state["classifier.0.weight"] = torch.randn(4, 8)
    state["classifier.0.bias"] = torch.randn(4)
    path = tmp_path_factory.mktemp("weights") / "vgg16-fake.pth"
    torch.save(state, path)
    return str(path), state


@pytest.fixture(autouse=True)
def isolated_hub(tmp_path, monkeypatch) -> None:
    """No test reads the user's torch hub cache or reaches the network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("CCVS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)


def test_loads_a_local_state_dict_and_gives_its_features(fake_vgg16) -> None:
    path, state = fake_vgg16
    module, info = load_vgg(path, arch="vgg16")
    assert module is not None and info.source == "path"
    with open(path, "rb") as fh:
        assert info.ident == "sha256:" + hashlib.sha256(fh.read()).hexdigest()
    assert path in info.message
    reference = VGGFeatures()
    reference.load_state_dict({k: v for k, v in state.items() if k.startswith("features.")})
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    for a, b in zip(module(x), reference(x)):
        assert torch.equal(a, b)
    assert not any(p.requires_grad for p in module.parameters())


def test_classifier_keys_absent_and_wrapped_dicts_load(tmp_path, fake_vgg16) -> None:
    _, state = fake_vgg16
    feats = {k: v for k, v in state.items() if k.startswith("features.")}
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(feats, plain)
    torch.save({"state_dict": {f"module.{k}": v for k, v in feats.items()}}, wrapped)
    for p in (plain, wrapped):
        module, info = load_vgg(str(p), layers=("relu1_2",))
        assert module is not None and info.source == "path"
        assert torch.equal(module.features[0].weight, feats["features.0.weight"])


def test_corrupt_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(WeightsError, match=r"broken\.pth: cannot read VGG weights"):
        load_vgg(str(bad))
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, other)
    with pytest.raises(WeightsError, match=r"resnet\.pth: no 'features\.\*' keys"):
        load_vgg(str(other))


def test_mismatched_architecture_or_shape_is_a_clear_error(tmp_path, fake_vgg16) -> None:
    keys19 = [f"features.{i}.{p}" for i in VGG19_CONVS for p in ("weight", "bias")]
    vgg19_like = {k: torch.zeros(1) for k in keys19}
    f19 = tmp_path / "vgg19.pth"
    torch.save(vgg19_like, f19)
    with pytest.raises(WeightsError, match=r"vgg19\.pth: does not match vgg16.*set arch: vgg19"):
        load_vgg(str(f19), arch="vgg16")
    _, state = fake_vgg16
    wrong = dict(state)
    wrong["features.2.weight"] = torch.zeros(64, 64, 5, 5)
    f = tmp_path / "wrong.pth"
    torch.save(wrong, f)
    with pytest.raises(WeightsError, match=r"features\.2\.weight has shape \(64, 64, 5, 5\)"):
        load_vgg(str(f))


def test_missing_weights_offline_give_none_with_a_message(tmp_path) -> None:
    module, info = load_vgg(str(tmp_path / "nope.pth"))
    assert module is None and info.source == "none" and info.ident == ""
    assert info.message.startswith("VGG weights unavailable: ")
    assert "nope.pth not found" in info.message and "offline" in info.message
    assert info.message.endswith("training without the perceptual term")
    module, info = load_vgg(None, offline=True)
    assert module is None and "offline" in info.message


def test_download_failure_and_success_are_handled(monkeypatch, fake_vgg16) -> None:
    monkeypatch.setenv("CCVS_OFFLINE", "0")

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    module, info = load_vgg(None)
    assert module is None
    assert f"download of {weights.VGG_URLS['vgg16']} failed" in info.message
    assert "no route to host" in info.message

    _, state = fake_vgg16
    calls = []

    def serve(url, **kwargs):
        calls.append((url, kwargs))
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", serve)
    module, info = load_vgg(None, arch="vgg16")
    assert module is not None and info.source == "url"
    assert calls[0][1]["weights_only"] is True and calls[0][1]["check_hash"] is True


def test_torch_hub_cache_is_used_offline(fake_vgg16) -> None:
    path, _ = fake_vgg16
    cache = torch.hub.get_dir() + "/checkpoints"
    os.makedirs(cache, exist_ok=True)
    shutil.copy(path, os.path.join(cache, "vgg16-397923af.pth"))
    module, info = load_vgg(None)
    assert module is not None and info.source == "cache"
    assert weights.is_offline() is True
