"""pipeline.training.loop.fit on toy tasks: exact resume, interrupts, EMA, bf16, clipping, logging."""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import signal
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.training.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from pipeline.training.ema import EMA
from pipeline.training.config import LoopConfig
from pipeline.training.loop import epoch_batches, fit
from pipeline.training.task import TrainTask

torch.set_num_threads(1)


class Recorder:
    """The logger protocol of docs/CONTRACTS.md, recording calls."""

    def __init__(self):
        self.metrics = defaultdict(list)
        self.tags = {}

    def log_metrics(self, metrics, step=None):
        for k, v in metrics.items():
            self.metrics[k].append((step, v))

    def log_metric(self, name, value, step=None):
        self.metrics[name].append((step, value))

    def set_tag(self, key, value):
        self.tags[key] = value

    def curve(self, name):
        return dict(self.metrics[name])


class ToyTask(TrainTask):
    """A small MLP regressing y = x·w*; the step draws noise from torch, numpy and Python RNGs."""

    def __init__(self, init_seed=0, fail_at=None, sigint_at=None, width=8):
        torch.manual_seed(init_seed)
        self.net = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Dropout(0.2), nn.Linear(width, 1))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=0.1)
        self.fail_at, self.sigint_at, self.width = fail_at, sigint_at, width
        self.eval_calls = []

    def modules(self):
        return {"net": self.net}

    def optimizers(self):
        return {"adam": self.opt}

    def ema_modules(self):
        return ["net"]

    def config(self):
        return {"width": self.width, "layers": (4, self.width, 1)}

    def train_step(self, batch, step, ctx):
        x, y = ctx.to_device(batch)
        jitter = 0.01 * torch.randn_like(y) + 1e-3 * np.random.normal() + 1e-3 * random.random()
        with ctx.autocast():
            pred = ctx.modules["net"](x)
        loss = F.mse_loss(pred.float(), y + jitter)
        ctx.optimize(loss, "adam")
        if step == self.fail_at:
            raise RuntimeError("simulated crash")
        if step == self.sigint_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C mid-step
        return {"loss": loss.item()}

    def evaluate(self, step, ctx):
        # Consumes the RNG on purpose: fit must isolate it from the training streams.
        self.eval_calls.append((step, ctx.raw["net"].training, torch.is_grad_enabled()))
        x = torch.randn(32, 4)
        err = F.mse_loss(ctx.eval_module("net")(x), x.sum(1, keepdim=True))
        return {"val/mse": err.item(), "val/draw": float(np.random.rand() + random.random())}


W_TRUE = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def make_batches(start):
    """Batch of step s depends only on s: a resumed run sees what an uninterrupted one saw."""
    for step in itertools.count(start):
        g = torch.Generator().manual_seed(10_000 + step)
        x = torch.randn(16, 4, generator=g)
        yield x, x @ W_TRUE


LOOP = LoopConfig(steps=20, log_every=1, eval_every=5, ckpt_every=10, keep_checkpoints=3,
                  ema_decay=0.9, device="cpu", seed=7)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted 20-step run."""
    logger = Recorder()
    result = fit(ToyTask(), make_batches, LOOP, tmp_path_factory.mktemp("ref"), logger)
    return result, logger


def _assert_joins(reference, resumed_logger, resumed_result, first_step):
    ref_result, ref_logger = reference
    ref_loss, new_loss = ref_logger.curve("loss"), resumed_logger.curve("loss")
    assert sorted(new_loss) == list(range(first_step, 21))  # continues, no step relogged
    for step in range(first_step, 21):
        assert new_loss[step] == ref_loss[step], f"loss differs at step {step}"
    for step in (15, 20):
        if step >= first_step:
            assert resumed_logger.curve("val/mse")[step] == ref_logger.curve("val/mse")[step]
    for key, value in ref_result.state["net"].items():
        assert torch.equal(resumed_result.state["net"][key], value), key
    assert resumed_result.step == 20


def test_reference_run_learns_and_checkpoints(reference, tmp_path):
    result, logger = reference
    losses = logger.curve("loss")
    assert sorted(losses) == list(range(1, 21))
    assert np.mean([losses[s] for s in range(16, 21)]) < 0.5 * np.mean([losses[s] for s in range(1, 6)])
    assert sorted(logger.curve("val/mse")) == [5, 10, 15, 20]
    assert result.resumed_from is None and result.checkpoint.name == "step-00000020.pt"
    payload = load_checkpoint(result.checkpoint)
    assert payload["step"] == 20 and set(payload["ema"]) == {"net"}
    assert torch.equal(payload["ema"]["net"]["0.weight"], result.state["net"]["0.weight"])  # EMA out


def test_resume_after_crash_joins_the_uninterrupted_curve(reference, tmp_path):
    first = Recorder()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(ToyTask(fail_at=14), make_batches, LOOP, tmp_path, first)  # dies during step 15
    assert latest_checkpoint(tmp_path).name == "step-00000010.pt"  # nothing written past it

    second = Recorder()
    result = fit(ToyTask(init_seed=123), make_batches, LOOP, tmp_path, second)  # other init: unused
    assert result.resumed_from == 10 and second.tags["train_loop.resumed_from"] == "10"
    _assert_joins(reference, second, result, first_step=11)


def test_ctrl_c_checkpoints_at_the_step_boundary_and_resumes(reference, tmp_path):
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's, whatever ran before
    try:
        with pytest.raises(KeyboardInterrupt, match="stopped at step 13"):
            fit(ToyTask(sigint_at=12), make_batches, LOOP, tmp_path, Recorder())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, outer)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10, 13]
    logger = Recorder()
    result = fit(ToyTask(init_seed=5), make_batches, LOOP, tmp_path, logger)
    assert result.resumed_from == 13
    _assert_joins(reference, logger, result, first_step=14)


def test_resume_with_longer_budget_and_finished_run(tmp_path):
    short = dataclasses.replace(LOOP, steps=10)
    fit(ToyTask(), make_batches, short, tmp_path, Recorder())
    done = Recorder()
    again = fit(ToyTask(init_seed=9), make_batches, short, tmp_path, done)  # already finished
    assert again.resumed_from == 10 and again.step == 10 and done.curve("loss") == {}
    assert sorted(done.curve("val/mse")) == [10]  # the stage still gets its final evaluation


def test_checkpoint_of_another_config_is_refused(tmp_path):
    fit(ToyTask(width=8), make_batches, LoopConfig(steps=2, device="cpu"), tmp_path)
    with pytest.raises(CheckpointError, match=r"width: 8 -> 16"):
        fit(ToyTask(width=16), make_batches, LoopConfig(steps=4, device="cpu"), tmp_path)
    result = fit(ToyTask(width=16), make_batches, LoopConfig(steps=4, device="cpu"), tmp_path,
                 resume=False)
    assert result.resumed_from is None
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4]


def test_auto_resume_restarts_on_a_new_config_and_resumes_the_same(tmp_path):
    fit(ToyTask(width=8), make_batches, LoopConfig(steps=2, device="cpu"), tmp_path)
    fresh = fit(ToyTask(width=16), make_batches, LoopConfig(steps=4, device="cpu"), tmp_path,
                resume="auto")
    assert fresh.resumed_from is None  # another config: trained from scratch, no error
    again = fit(ToyTask(width=16), make_batches, LoopConfig(steps=6, device="cpu"), tmp_path,
                resume="auto")
    assert again.resumed_from == 4  # same config: a continued run
    with pytest.raises(ValueError, match="resume must be"):
        fit(ToyTask(), make_batches, LoopConfig(steps=1, device="cpu"), tmp_path, resume="yes")


def test_evaluate_runs_in_eval_mode_without_grad(tmp_path):
    task = ToyTask()
    fit(task, make_batches, LoopConfig(steps=6, eval_every=3, device="cpu"), tmp_path)
    assert task.eval_calls == [(3, False, False), (6, False, False)]
    assert task.net.training  # train mode restored


class ScriptedTask(TrainTask):
    """Sets the weight to a scripted value each step (no optimizer): EMA must follow the formula."""

    def __init__(self, values):
        self.lin = nn.Linear(3, 1, bias=False)
        self.register = nn.BatchNorm1d(3)
        with torch.no_grad():
            self.lin.weight.fill_(values[0])
        self.values = values

    def modules(self):
        return {"lin": self.lin, "bn": self.register}

    def optimizers(self):
        return {}

    def ema_modules(self):
        return ["lin"]

    def config(self):
        return {}

    def train_step(self, batch, step, ctx):
        with torch.no_grad():
            ctx.raw["lin"].weight.fill_(self.values[step + 1])
        return {"w": self.values[step + 1]}


def test_ema_equals_the_analytic_average_and_lags_raw_weights(tmp_path):
    values = [0.0, 1.0, 3.0, -2.0, 5.0, 4.0, 10.0]
    decay, n = 0.8, len(values) - 1
    result = fit(ScriptedTask(values), itertools.repeat(None), LoopConfig(
        steps=n, ema_decay=decay, device="cpu", ckpt_every=0), tmp_path)
    # θ_ema(n) = d^n θ_0 + (1 - d) Σ_k d^(n-k) θ_k
    expected = decay**n * values[0] + (1 - decay) * sum(decay ** (n - k) * values[k] for k in range(1, n + 1))
    ema_w = result.state["lin"]["weight"]
    assert torch.allclose(ema_w, torch.full_like(ema_w, expected), atol=1e-5)
    assert abs(expected - values[-1]) > 1  # lags behind the raw weight ...
    assert torch.equal(load_checkpoint(result.checkpoint)["state"]["lin"]["weight"],
                       torch.full((1, 3), values[-1]))  # ... which the checkpoint keeps too
    assert "bn" in result.state  # modules without EMA are returned raw


def test_ema_copies_buffers_and_skips_grads():
    src = nn.BatchNorm1d(2)
    ema = EMA(src, decay=0.5)
    src.train()(torch.randn(8, 2) * 3 + 1)  # updates running stats
    with torch.no_grad():
        src.weight.fill_(3.0)
    ema.update(src)
    assert torch.equal(ema.module.running_mean, src.running_mean)
    assert torch.allclose(ema.module.weight, torch.full((2,), 2.0))  # 0.5·1 + 0.5·3
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


class DtypeProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.seen = []

    def forward(self, x):
        y = self.lin(x)
        self.seen.append(y.dtype)
        return y


class ProbeTask(TrainTask):
    def __init__(self):
        torch.manual_seed(0)
        self.probe = DtypeProbe()
        self.opt = torch.optim.SGD(self.probe.parameters(), lr=0.1)

    def modules(self):
        return {"probe": self.probe}

    def optimizers(self):
        return {"sgd": self.opt}

    def config(self):
        return {}

    def train_step(self, batch, step, ctx):
        with ctx.autocast():
            y = ctx.modules["probe"](batch)
        loss = y.float().pow(2).mean()
        ctx.optimize(loss, "sgd")
        assert self.probe.lin.weight.grad.dtype == torch.float32  # params and grads stay fp32
        return {"loss": loss.item()}


@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_bf16_flag_autocasts_the_forward_on_cpu(tmp_path, bf16, dtype):
    task = ProbeTask()
    result = fit(task, itertools.repeat(torch.randn(8, 4)), LoopConfig(steps=3, bf16=bf16, device="cpu"),
                 tmp_path)
    assert task.probe.seen == [dtype] * 3
    assert np.isfinite(result.metrics["loss"])


def test_bf16_auto_reads_the_cpu_flags(tmp_path):
    from pipeline.tracking import RecordingLogger
    from pipeline.training.loop import cpu_has_bf16_units, resolve_bf16

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_has_bf16_units(amx) and not cpu_has_bf16_units(plain)
    assert not cpu_has_bf16_units(tmp_path / "absent")  # unreadable: off, never an error
    cpu = torch.device("cpu")
    assert resolve_bf16(True, cpu) is True and resolve_bf16(False, cpu) is False
    assert resolve_bf16("auto", cpu) == cpu_has_bf16_units()
    # "auto" trains in whatever this machine resolves to, and says which
    task, log = ProbeTask(), RecordingLogger()
    fit(task, itertools.repeat(torch.randn(8, 4)), LoopConfig(steps=1, bf16="auto", device="cpu"),
        tmp_path / "ck", log)
    auto = cpu_has_bf16_units()
    assert task.probe.seen == [torch.bfloat16 if auto else torch.float32]
    assert log.tags["train_loop.bf16"] == str(auto).lower()


@pytest.mark.parametrize("device, cpu_units, cuda_bf16, auto_on", [
    ("cpu", False, False, False),  # a CPU without AMX / AVX-512-BF16: fp32 everywhere
    ("cpu", True, False, True),  # this machine's kind: bf16 where params.yaml says auto
    ("cuda", False, True, True),  # a bf16-capable GPU (Ampere and later)
    ("cuda", False, False, False),  # an older GPU
])
def test_every_stage_default_resolves_per_device(monkeypatch, repo_root, device, cpu_units,
                                                 cuda_bf16, auto_on):
    from pipeline.params import TRAINING_STAGES, load_all
    from pipeline.training import loop as loop_mod

    monkeypatch.setattr(loop_mod, "cpu_has_bf16_units", lambda *a: cpu_units)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    sections = load_all(repo_root / "params.yaml")
    settings = {s: sections[s].loop.bf16 for s in TRAINING_STAGES}
    # never a hard `true`: that would run bf16 emulation on hardware without bf16 units
    assert set(settings.values()) <= {False, "auto"}, settings
    assert settings["autoencoder"] == "auto"  # measured faster at equal quality (BENCHMARKS.md)
    for stage, setting in settings.items():
        want = auto_on and setting == "auto"
        assert loop_mod.resolve_bf16(setting, torch.device(device)) is want, (stage, setting)


def test_bf16_stores_conv_weights_channels_last(tmp_path):
    class ConvTask(ProbeTask):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.opt = torch.optim.SGD([*self.probe.parameters(), *self.conv.parameters()], lr=0.1)

        def modules(self):
            return {"probe": self.probe, "conv": self.conv}

        def train_step(self, batch, step, ctx):
            with ctx.autocast():
                y = ctx.modules["conv"](torch.randn(2, 3, 8, 8))
            ctx.optimize(y.float().pow(2).mean(), "sgd")
            return {}

    for bf16 in (True, False):
        task = ConvTask()
        before = task.conv.weight.detach().clone()
        param = task.conv.weight
        fit(task, itertools.repeat(None), LoopConfig(steps=1, bf16=bf16, device="cpu"),
            tmp_path / str(bf16))
        w = task.conv.weight
        assert w is param  # the optimizer's parameter, not a copy
        assert w.is_contiguous(memory_format=torch.channels_last) is bf16
        assert not torch.equal(w.detach(), before)  # and it trained


def test_grad_clip_bounds_the_update_and_logs_the_norm(tmp_path):
    task = ProbeTask()
    before = task.probe.lin.weight.detach().clone()
    logger = Recorder()
    big = torch.randn(8, 4) * 100
    fit(task, itertools.repeat(big), LoopConfig(steps=1, grad_clip=0.01, device="cpu"), tmp_path, logger)
    step_size = (task.probe.lin.weight - before).norm()
    assert step_size <= 0.1 * 0.01 + 1e-6  # lr · clip
    assert logger.curve("grad_norm/sgd")[1] > 1.0  # the pre-clip norm was large


class CountingTask(ProbeTask):
    def train_step(self, batch, step, ctx):
        return {"index": float(step)}


def test_metrics_are_window_means_logged_every_n_steps(tmp_path):
    logger = Recorder()
    fit(CountingTask(), itertools.repeat(None), LoopConfig(steps=12, log_every=5, device="cpu"),
        tmp_path, logger)
    assert logger.metrics["index"] == [(5, 2.0), (10, 7.0), (12, 10.5)]  # mean(0..4), (5..9), (10, 11)


@pytest.mark.parametrize("first_steps", [7, 8])  # ends at 7 (budget raised later) / crashes in step 8
def test_window_is_checkpointed_so_a_mid_window_resume_logs_the_same_means(tmp_path, first_steps):
    class Crash(CountingTask):
        def train_step(self, batch, step, ctx):
            if step == 7:
                raise RuntimeError("crash")
            return super().train_step(batch, step, ctx)

    loop = LoopConfig(steps=12, log_every=5, ckpt_every=3, device="cpu")
    if first_steps == 7:
        fit(CountingTask(), itertools.repeat(None), dataclasses.replace(loop, steps=7), tmp_path)
    else:
        with pytest.raises(RuntimeError, match="crash"):
            fit(Crash(), itertools.repeat(None), loop, tmp_path)  # last checkpoint: step 6
    logger = Recorder()
    fit(CountingTask(), itertools.repeat(None), loop, tmp_path, logger)
    assert logger.metrics["index"] == [(10, 7.0), (12, 10.5)]


def test_plain_iterable_is_skipped_to_the_resume_step(tmp_path):
    seen = []

    class Seen(CountingTask):
        def train_step(self, batch, step, ctx):
            seen.append((step, batch))
            return {}

    loop = LoopConfig(steps=4, ckpt_every=2, device="cpu")
    fit(Seen(), iter(range(100)), dataclasses.replace(loop, steps=2), tmp_path)
    fit(Seen(), iter(range(100)), loop, tmp_path)
    assert seen == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_a_finite_stream_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="batch stream ended after step 3 of 5"):
        fit(CountingTask(), [1, 2, 3], LoopConfig(steps=5, device="cpu"), tmp_path)


@pytest.mark.parametrize("sized", [True, False])
def test_epoch_batches_resume_anywhere(sized):
    def make_epoch(epoch):
        items = [(epoch, i) for i in range(3)]
        return items if sized else iter(items)

    full = list(itertools.islice(epoch_batches(make_epoch), 10))
    assert full[:4] == [(0, 0), (0, 1), (0, 2), (1, 0)]
    for start in (0, 2, 3, 7):
        assert list(itertools.islice(epoch_batches(make_epoch, start), 10 - start)) == full[start:]
    with pytest.raises(ValueError, match="yielded no batches"):
        next(epoch_batches(lambda e: []))


@pytest.mark.parametrize("bad", [dict(steps=-1), dict(log_every=0), dict(ema_decay=1.0),
                                 dict(device="tpu"), dict(grad_clip=-1.0), dict(bf16="yes")])
def test_loop_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LoopConfig(**{"steps": 1, **bad})
