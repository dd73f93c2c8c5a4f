"""The policies every training stage shares: the hold-out rule (pipeline.data.splits), the LR
schedule (pipeline.training.schedule) and the training curves (pipeline.training.curves)."""

from __future__ import annotations

import math

import torch

import numpy as np
import pytest

from pipeline.data.splits import holdout_keys, holdout_mask
from pipeline.tracking import RecordingLogger
from pipeline.training.curves import CurveLogger
from pipeline.training.schedule import warmup_cosine


# --------------------------------------------------------------------------- hold-out


def test_holdout_is_by_whole_videos_and_reaches_the_fraction():
    videos = [f"v{i}" for i in range(10) for _ in range(4)]  # 40 items, 4 per video
    mask = holdout_mask(videos, 0.25, seed=3)
    held = {v for v, m in zip(videos, mask) if m}
    assert all(mask[i] == (v in held) for i, v in enumerate(videos))  # whole videos only
    assert mask.sum() >= 10 and mask.sum() - 4 < 10  # stops once the fraction is reached
    np.testing.assert_array_equal(mask, holdout_mask(videos, 0.25, seed=3))  # deterministic
    assert not np.array_equal(mask, holdout_mask(videos, 0.25, seed=4))  # the seed picks


@pytest.mark.parametrize("videos, fraction", [(["a"] * 5, 0.5), (["a", "b"], 0.0), ([], 0.3)])
def test_holdout_never_splits_a_single_video_or_holds_out_nothing_asked(videos, fraction):
    assert not holdout_mask(videos, fraction).any()


def test_holdout_keeps_a_training_video():
    videos = ["a", "b", "c"]
    assert holdout_mask(videos, 0.99, seed=0).sum() == 2
    keys = holdout_keys(["a_0000", "a_0001", "b_0000", "c_0000"], 0.99)
    assert len(keys) < 4 and ({"a_0000", "a_0001"} <= keys or not keys & {"a_0000", "a_0001"})


# --------------------------------------------------------------------------- schedule


def test_warmup_cosine():
    lrs = [warmup_cosine(s, 1.0, 10, 110, min_lr=0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warm-up
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))  # then decays monotonically
    assert lrs[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)  # held at min_lr


# --------------------------------------------------------------------------- curves


def test_curve_logger_writes_csvs_forwards_and_continues_after_resume(tmp_path):
    inner = RecordingLogger()
    spec = {"train": ("loss", "lr"), "val": ("val/psnr", "codebook/usage")}
    curves = CurveLogger(inner, tmp_path, spec)
    curves.finish()  # nothing logged yet (resumed at the last checkpoint): DVC needs the files
    assert (tmp_path / "train.csv").read_text().splitlines() == ["step,loss,lr"]
    assert (tmp_path / "val.csv").read_text().splitlines() == ["step,psnr,usage"]
    for step in (10, 20, 30):
        curves.log_metrics({"loss": 1.0 / step, "lr": 0.1}, step=step)
    curves.log_metrics({"val/psnr": 25.0, "codebook/usage": 0.5}, step=30)
    assert inner.metrics["loss"] == [(10, 0.1), (20, 0.05), (30, 1.0 / 30)]  # forwarded
    # a resumed run (from the step-20 checkpoint) replaces rows from its first logged step on
    again = CurveLogger(RecordingLogger(), tmp_path, spec)
    again.log_metrics({"loss": 0.07, "lr": 0.1}, step=30)
    rows = (tmp_path / "train.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["10", "20", "30"] and rows[-1].startswith("30,0.07")
    assert (tmp_path / "val.csv").read_text().splitlines()[1] == "30,25,0.5"


# --------------------------------------------------------------------------- initial weights


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_initial_weights_follow_the_seed_not_the_process():
    """A torch process starts from a random seed: every task builds its modules under
    ``seeded_init(loop.seed)``, so the same params give the same run, and the global RNG is left
    as it was."""
    import torch.nn.functional as F

    from ccvs_models.vq_autoencoder import VQAutoencoderConfig
    from pipeline.training.autoencoder.task import AutoencoderTask
    from pipeline.training.task import seeded_init
    from pipeline.training.vq import VQTask
    from tests.test_ae_training import tiny_params

    built = []
    for noise in (1, 2):
        torch.manual_seed(noise)  # whatever ran before the task was built
        vq = VQTask(VQAutoencoderConfig(in_channels=1, out_channels=1, channels=(4,), dim=4,
                                        codebook_size=8), 1e-3, 1.0, 0, F.l1_loss,
                    lambda b: (b, b), {}, seed=3)
        ae = AutoencoderTask(tiny_params())
        built.append((_state(vq.model), _state(ae.model), _state(ae.disc_i)))
    for a, b in zip(*built):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    with seeded_init(0):
        torch.rand(10)
    assert torch.equal(torch.rand(3), expected)  # the global stream is untouched
