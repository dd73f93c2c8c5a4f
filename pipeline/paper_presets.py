"""The paper's experiments as model presets: what CCVS is at paper scale, on paper.

Each :class:`PaperPreset` is one of the paper's setups (§4, App. E): the dataset's resolution and
frames, the autoencoder (E, Q, F, D), the discriminators Δi / Δt and the transformer T, with the
paper's values where it gives them and ours where it does not (marked in ``notes``):

* tokens: 8×8 = 64 per frame (§4.1, Fig. 3), so K = log2(resolution / 8) levels (App. A);
  Cityscapes' 256×512 frames give 8×16;
* codebook q: 1024 (Table 5's smallest; BAIR), 16384 on Kinetics (Table 5's best prediction FVD);
* T: Table 2's best row, 24 layers, 16 heads, decomposed positions; N = 16 frames; the width
  D = 1024 is ours (the paper gives none; ``TRANSFORMER_SIZES["paper-bair"]``);
* E/D widths, F's sizes and the discriminators' widths are ours (the paper gives none);
  c = 4 context frames (App. D's multi-frame context);
* compute: "4 Nvidia V100 GPUs (32GB VRAM each) … for multiple 20 hour runs" (§4); Table 3
  (BAIR 64×64: 128 GB, 40 h) and Table 4 (Kinetics: 128 GB, 300 h) give totals, i.e. 4 × 40 =
  160 and 4 × 300 = 1200 V100-hours; the other setups give none.

``docs/PAPER_SCALE.md`` holds the table (parameters, tokens per video, FLOPs per training step,
memory per GPU with / without bf16 and activation checkpointing, the paper's GPU-hours) that
``bench/paper_scale.py`` computes from these presets; ``tests/test_paper_scale.py`` builds every
preset and runs one bf16 training step of T and of the autoencoder (image and video step) on CPU
at batch 1, so the configs are known to fit together.
"""

from __future__ import annotations

import dataclasses
import math

from ccvs_models.autoencoder import AutoencoderConfig
from ccvs_models.discriminators import DiscriminatorConfig
from ccvs_models.transformer_config import TransformerConfig, transformer_config


@dataclasses.dataclass(frozen=True)
class PaperPreset:
    """One of the paper's setups at its scale."""

    name: str
    dataset: str
    height: int  # frame size (pixels)
    width: int
    given_frames: int  # m, conditioning frames of the task
    autoencoder: AutoencoderConfig
    image_disc: DiscriminatorConfig
    temporal_disc: DiscriminatorConfig
    transformer: TransformerConfig
    batch_per_gpu: int  # videos (T) per GPU and step in the estimates (ours: what fits 32 GB)
    gpu_hours: float | None  # V100-hours the paper reports for the whole training (None: not given)
    source: str  # where in the paper
    notes: str = ""

    @property
    def tokens_per_video(self) -> int:
        """L, the tokens T reads per N-frame window (§3.3)."""
        return self.transformer.block_size


_CHANNELS = (1, 2, 2, 4, 4, 4)  # fine → coarse multipliers of E/D (ours)


def paper_autoencoder(levels: int, codebook: int, **fields: object) -> AutoencoderConfig:
    """E, Q, F, D at paper scale with K = ``levels`` (64 tokens per frame at 8×2^K pixels)."""
    base = dict(base_channels=64, channel_mult=_CHANNELS[: levels + 1], num_levels=levels,
                latent_dim=256, codebook_size=codebook, context_frames=4, flow_levels=None,
                flow_radius=(4, 3, 2, 2, 1), flow_hidden=(128, 96, 64, 32, 32), flow_corr_dim=32)
    return AutoencoderConfig(**{**base, **fields})  # type: ignore[arg-type]


def paper_discriminator(resolution: int) -> DiscriminatorConfig:
    """A StyleGAN2-sized Δi / Δt (App. A: "similar to StyleGAN2"; widths ours)."""
    return DiscriminatorConfig(resolution=resolution, channels=64, max_channels=512)


def _preset(name: str, dataset: str, height: int, width: int, given: int, codebook: int,
            batch: int, gpu_hours: float | None, source: str, notes: str = "",
            num_frames: int = 16, **sequence: object) -> PaperPreset:
    levels = int(math.log2(height // 8))
    grid = (height >> levels, width >> levels)
    t = transformer_config("paper-bair", frame_vocab=codebook, frame_height=grid[0],
                           frame_width=grid[1], num_frames=num_frames, **sequence)
    return PaperPreset(name, dataset, height, width, given, paper_autoencoder(levels, codebook),
                       paper_discriminator(height), paper_discriminator(height), t, batch,
                       gpu_hours, source, notes)


PRESETS: dict[str, PaperPreset] = {p.name: p for p in (
    _preset("bair-64", "BAIR", 64, 64, 1, 1024, 8, 4 * 40.0,
            "Table 3 (low res.): 128 GB, 40 h", "prediction from 1 frame"),
    _preset("bair-256", "BAIR", 256, 256, 1, 1024, 4, None,
            "Table 3 (high res.), §4.2", "state + end frame (point-to-point)",
            state=True, state_bins=256, end_frame=True),
    _preset("kinetics-64", "Kinetics-600", 64, 64, 5, 16384, 8, 4 * 300.0,
            "Table 4: 128 GB, 300 h; Table 5 codebook"),
    _preset("audioset-drums-64", "AudioSet-Drums", 64, 64, 15, 1024, 8, None,
            "Table 6", "16 sound tokens per frame (App. A), q_a = 1024 (ours)",
            audio_tokens_per_frame=16, audio_vocab=1024),
    _preset("ucf101-128", "UCF-101", 128, 128, 0, 1024, 4, None,
            "Table D1", "class-conditioned / unconditional", num_classes=101),
    _preset("cityscapes-256x512", "Cityscapes", 256, 512, 1, 1024, 1, None,
            "Table D2", "8×16 tokens per frame and as many layout tokens; N = 8 (ours)",
            num_frames=8, layout_tokens_per_frame=128, layout_vocab=1024),
)}
