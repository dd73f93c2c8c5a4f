"""pipeline.training.checkpoint: atomic writes, weights_only loads, model files, RNG capture, pruning."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.training import checkpoint as ck

torch.set_num_threads(1)


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    channels: int = 4  # conv width
    kernel: tuple[int, int] = (3, 3)


class ToyNet(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.conv = nn.Conv2d(3, cfg.channels, cfg.kernel, padding=1)
        self.norm = nn.BatchNorm2d(cfg.channels)

    def forward(self, x):
        return self.norm(self.conv(x)).relu()


def _trained_net(seed: int = 0) -> ToyNet:
    torch.manual_seed(seed)
    net = ToyNet(ToyConfig())
    net(torch.randn(4, 3, 8, 8))  # moves BatchNorm running stats away from their init
    return net.eval()


def test_save_load_gives_identical_outputs_and_loads_weights_only(tmp_path):
    net = _trained_net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    payload = {"config": ck.to_plain(ToyConfig()), "state": {"net": net.state_dict()},
               "optimizers": {"opt": opt.state_dict()}, "step": 7, "rng": ck.rng_state(),
               "extra": {"note": "x", "inf": float("inf")}}
    path = ck.save_checkpoint(tmp_path / "step-00000007.pt", payload)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # the contract, literally
    assert raw["step"] == 7 and raw["config"] == {"channels": 4, "kernel": (3, 3)}

    loaded = ck.load_checkpoint(path)
    net2 = ToyNet(ToyConfig(**loaded["config"])).eval()
    assert not torch.equal(net2.conv.weight, net.conv.weight)  # fresh init differs ...
    net2.load_state_dict(loaded["state"]["net"])
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(net(x), net2(x))  # ... and the checkpoint makes it identical
    opt2 = torch.optim.Adam(net2.parameters(), 1e-3)
    opt2.load_state_dict(loaded["optimizers"]["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_model_file_round_trip(tmp_path):
    net = _trained_net(seed=3)
    ck.save_model(tmp_path / "m.pt", ToyConfig(channels=4), net.state_dict(), step=12, weights="ema")
    config, state, meta = ck.load_model(tmp_path / "m.pt")
    assert config == {"channels": 4, "kernel": (3, 3)}
    assert meta == {"step": 12, "weights": "ema"}
    net2 = ToyNet(ToyConfig(**config)).eval()
    net2.load_state_dict(state)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(net(x), net2(x))
    ck.save_checkpoint(tmp_path / "not_model.pt", {"step": 1})
    with pytest.raises(ck.CheckpointError, match=r"not_model\.pt: not a model file"):
        ck.load_model(tmp_path / "not_model.pt")


def test_crash_during_save_keeps_previous_file_and_leaves_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "step-00000010.pt"
    ck.save_checkpoint(path, {"step": 10, "w": torch.arange(1000.0)})
    before = path.read_bytes()

    def torch_save_that_dies(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torch_save_that_dies)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(path, {"step": 11, "w": torch.zeros(1000)})
    new_path = tmp_path / "step-00000020.pt"
    with pytest.raises(OSError):
        ck.save_checkpoint(new_path, {"step": 20})
    monkeypatch.undo()

    assert path.read_bytes() == before  # the previous checkpoint is untouched
    assert ck.load_checkpoint(path)["step"] == 10
    assert not new_path.exists()  # nothing under the final name
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # and no temp debris
    assert ck.latest_checkpoint(tmp_path) == path


def test_killed_writer_debris_is_ignored_and_pruned(tmp_path):
    ck.save_checkpoint(ck.checkpoint_path(tmp_path, 5), {"step": 5})
    stray = tmp_path / "step-00000009.pt.tmp-4242"  # what a SIGKILL between write and rename leaves
    stray.write_bytes(b"partial")
    assert ck.latest_checkpoint(tmp_path) == ck.checkpoint_path(tmp_path, 5)
    ck.prune_checkpoints(tmp_path, keep=3)
    assert not stray.exists()


def test_corrupt_or_missing_file_gives_one_line_error_naming_it(tmp_path):
    good = ck.save_checkpoint(tmp_path / "good.pt", {"w": torch.randn(100, 100)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for bad in (truncated, garbage, tmp_path / "missing.pt"):
        with pytest.raises(ck.CheckpointError) as err:
            ck.load_checkpoint(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_file_that_needs_unsafe_unpickling_is_refused(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"arr": np.arange(3)}, path)  # numpy arrays need weights_only=False
    with pytest.raises(ck.CheckpointError, match=r"unsafe\.pt: not a readable checkpoint"):
        ck.load_checkpoint(path)


@pytest.mark.parametrize("bad, where", [
    (np.arange(3), "payload.extra.bad"),
    (Path("x"), "payload.extra.bad"),
    (np.float32(1.0), "payload.extra.bad"),
    ([1, ToyConfig()], "payload.extra.bad[1]"),
])
def test_unsafe_payload_is_rejected_at_save_naming_the_key(tmp_path, bad, where):
    path = tmp_path / "c.pt"
    with pytest.raises(ck.CheckpointError) as err:
        ck.save_checkpoint(path, {"extra": {"bad": bad}})
    assert where in str(err.value) and str(path) in str(err.value)
    assert not path.exists()


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    ck.seed_all(123)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    random.gauss(0, 1)  # and in Python's
    ck.save_checkpoint(tmp_path / "r.pt", {"rng": ck.rng_state()})

    def draw():
        return (torch.rand(5).tolist(), np.random.normal(size=3).tolist(), np.random.rand(2).tolist(),
                [random.random(), random.gauss(0, 1)])

    first = draw()
    ck.seed_all(999)  # scramble
    assert draw() != first
    ck.set_rng_state(ck.load_checkpoint(tmp_path / "r.pt")["rng"])
    assert draw() == first


def test_latest_and_prune_keep_the_newest(tmp_path):
    assert ck.latest_checkpoint(tmp_path / "absent") is None
    for step in (5, 10, 100, 20):
        ck.save_checkpoint(ck.checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert ck.latest_checkpoint(tmp_path).name == "step-00000100.pt"
    ck.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [20, 100]
    assert (tmp_path / "notes.txt").exists()
    ck.prune_checkpoints(tmp_path, keep=0)  # 0 keeps all
    assert len(ck.list_checkpoints(tmp_path)) == 2
