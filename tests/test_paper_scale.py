"""Every paper preset (pipeline/paper_presets.py) builds and trains: one bf16 training step of its T
and one image step and one video step of its autoencoder (E, Q, F, D, Δi, Δt), on CPU at batch 1,
with the stages' own training tasks. Slow (a 300M-parameter T per preset, 256×256 convolutions
with F at every level): tens of minutes on 2 CPU cores, so not in the default run (the
``paper_scale`` marker, deselected in pyproject.toml): ``python -m pytest -m paper_scale``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.paper_presets import PRESETS, PaperPreset
from pipeline.params import load_section
from pipeline.training.autoencoder.batches import ImageBatch, VideoBatch
from pipeline.training.autoencoder.task import AutoencoderTask
from pipeline.training.config import LoopConfig
from pipeline.training.task import StepContext
from pipeline.training.transformer import OptimSettings, TokenBatch, TransformerTask

pytestmark = pytest.mark.paper_scale

ROOT = Path(__file__).resolve().parents[1]
LOOP = LoopConfig(steps=1, bf16=True, device="cpu", grad_clip=1.0)


def _context(task) -> StepContext:
    modules = task.modules()
    return StepContext(loop=LOOP, device=torch.device("cpu"), rank=0, world_size=1,
                       logger=None, modules=modules, raw=modules, ema={},
                       optimizers=task.optimizers())


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items()
               if v.dtype.is_floating_point)


def _autoencoders() -> list[str]:
    """One preset per distinct autoencoder shape (presets at one resolution share E/F/D and
    differ in q only: the one with the largest codebook stands for them)."""
    chosen: dict[tuple, PaperPreset] = {}
    for p in PRESETS.values():
        shape = (p.height, p.width, dataclasses.replace(p.autoencoder, codebook_size=0))
        if shape not in chosen or p.autoencoder.codebook_size > chosen[shape].autoencoder.codebook_size:
            chosen[shape] = p
    return [p.name for p in chosen.values()]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(PRESETS))
def test_paper_transformer_trains_one_bf16_step(name):
    """T of the preset (the transformer stage's task: AdamW, Eq. (8)) on one full window."""
    cfg = PRESETS[name].transformer
    torch.manual_seed(0)
    task = TransformerTask(cfg, OptimSettings(1e-5, 1e-6, 0, 0.01, (0.9, 0.95), 1), {}, [], {})
    assert task.model.num_parameters() > 250e6  # Table 2's 24 layers × 16 heads at D = 1024
    layout = cfg.sequence_layout
    kinds = layout.kinds()
    tokens = torch.zeros(1, layout.length, dtype=torch.long)
    for kind in kinds.unique().tolist():  # every position gets a valid id of its kind
        where = kinds == kind
        tokens[0, where] = torch.randint(0, layout.vocab_size(kind), (int(where.sum()),))
    gap = torch.tensor([5]) if cfg.end_frame else None
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    out = task.train_step(TokenBatch(tokens, gap), 0, _context(task))
    assert np.isfinite(out["loss"]) and abs(out["loss"] - np.log(cfg.frame_vocab)) < 1.5
    assert _changed(before, task.model)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", _autoencoders())
def test_paper_autoencoder_trains_one_bf16_image_and_video_step(name):
    """E, Q, F (c = 4, every level), D, Δi, Δt of the preset: the autoencoder stage's task."""
    preset = PRESETS[name]
    torch.manual_seed(0)
    params = load_section("autoencoder", ROOT / "params.yaml")
    square = preset.height == preset.width  # this implementation's Δi / Δt take square frames
    params = dataclasses.replace(
        params, model=preset.autoencoder, image_disc=preset.image_disc,
        temporal_disc=preset.temporal_disc, use_vgg=False, use_image_disc=square,
        use_temporal_disc=square, batch_size=1, video_batch_size=1, video_frames=2,
        dead_code_every=0, loop=LOOP)
    ae = AutoencoderTask(params)
    ctx = _context(ae)
    rng = np.random.default_rng(0)
    clip = torch.from_numpy(rng.integers(0, 256, (1, 2, preset.height, preset.width, 3), np.uint8))
    before = {k: v.clone() for k, v in ae.model.state_dict().items()}
    image = ae.train_step(ImageBatch(clip[:, :1]), 0, ctx)
    video = ae.train_step(VideoBatch(clip), 1, ctx)
    for metrics in (image, video):
        assert all(np.isfinite(v) for v in metrics.values()), metrics
    assert "img/ctx" in image  # F ran on its self-supervised context views (L_c)
    assert ("vid/adv_t" in video) == square  # Δt scored the recursively decoded clip
    assert _changed(before, ae.model)
