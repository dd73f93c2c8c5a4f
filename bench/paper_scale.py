"""The paper presets on paper: parameters, tokens, FLOPs and memory per training step.

For every preset of ``pipeline/paper_presets.py`` (the paper's setups at its scale):

- parameters of T, of the autoencoder (E, Q, F, D) and of Δi + Δt;
- L, the tokens T reads per N-frame window (§3.3);
- FLOPs of one training step (forward + backward, matmuls and convolutions, counted by
  ``torch.utils.flop_counter``): T for ``batch_per_gpu`` windows (one real CPU step at batch 1,
  scaled by the batch), the autoencoder for one image step + one video step (3 frames) at batch 1, counted on
  a real CPU step;
- memory per GPU: model states (fp32 weights, gradients and Adam's two moments: 16 bytes per
  parameter, also under bf16 autocast, which keeps fp32 master weights) plus the activations
  saved for the backward pass (``torch.autograd.graph.saved_tensors_hooks``) for the preset's
  batch, in fp32 and in bf16 (T: a real bf16-autocast CPU step at batch 1, scaled; the
  autoencoder: a real bf16-autocast CPU step), and for T with activation checkpointing per block
  (every block's input kept, one block's activations recomputed at a time; an estimate from the
  measured one-block figure: this implementation does not checkpoint activations);
- the V100-hours the paper reports (§4 "Training details", Tables 3–4).

    python -m bench.paper_scale            # ~10 min on 2 CPU cores (the 256×256 autoencoder steps)
    python -m bench.paper_scale --presets bair-64 kinetics-64
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

GB = 1e9


class SavedBytes:
    """Bytes of the tensors autograd saves for the backward pass while active."""

    def __init__(self) -> None:
        self.total = 0

    def __enter__(self) -> "SavedBytes":
        def pack(t: torch.Tensor) -> torch.Tensor:
            self.total += t.numel() * t.element_size()
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def _tokens(layout, batch: int, device: str) -> torch.Tensor:
    kinds = layout.kinds()
    tokens = torch.zeros(batch, layout.length, dtype=torch.long)
    for kind in kinds.unique().tolist():
        where = kinds == kind
        tokens[:, where] = torch.randint(0, layout.vocab_size(kind), (batch, int(where.sum())))
    return tokens.to(device)


def transformer_figures(cfg, batch: int) -> dict[str, float]:
    """T's parameters, FLOPs per step for ``batch`` windows and saved activations: one real CPU
    step at batch 1 (T checks its token ids, so it does not run on the meta device), scaled by
    ``batch`` (FLOPs and saved activations of a transformer step are linear in the batch)."""
    from ccvs_models.transformer import CCVSTransformer

    model = CCVSTransformer(cfg)
    params = sum(p.numel() for p in model.parameters())
    tokens = _tokens(cfg.sequence_layout, 1, "cpu")
    gap = torch.zeros(1, dtype=torch.long) if cfg.end_frame else None
    counter = FlopCounterMode(display=False)
    with counter, SavedBytes() as fp32:
        model(tokens, gap, tokens).loss.backward()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16), SavedBytes() as bf16:
        loss = model(tokens, gap, tokens).loss
    loss.float().backward()
    block = model.blocks[0]  # one block's activations: what checkpointing recomputes at a time
    x = torch.zeros(1, cfg.block_size, cfg.n_embd, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16), SavedBytes() as one:
        out = block(x)
    out.float().sum().backward()
    inputs = cfg.n_layer * cfg.block_size * cfg.n_embd * 2  # every block's bf16 input
    rest = bf16.total - cfg.n_layer * one.total  # embeddings, final norm, head, loss
    return {"params": params, "flops": batch * counter.get_total_flops(),
            "act_fp32": batch * fp32.total, "act_bf16": batch * bf16.total,
            "act_ckpt": batch * (inputs + one.total + max(rest, 0))}


def autoencoder_figures(preset) -> dict[str, float]:
    """The autoencoder's parameters, FLOPs and saved activations of one image + one video step
    (batch 1) in fp32 and bf16, on a real CPU step of the stage's task."""
    from pipeline.params import load_section
    from pipeline.training.autoencoder.batches import ImageBatch, VideoBatch
    from pipeline.training.autoencoder.task import AutoencoderTask
    from pipeline.training.config import LoopConfig
    from pipeline.training.task import StepContext

    out: dict[str, float] = {}
    square = preset.height == preset.width
    base = load_section("autoencoder", Path(__file__).resolve().parents[1] / "params.yaml")
    rng = np.random.default_rng(0)
    clip = torch.from_numpy(rng.integers(0, 256, (1, 3, preset.height, preset.width, 3), np.uint8))
    for bf16 in (False, True):
        loop = LoopConfig(steps=1, bf16=bf16, device="cpu")
        params = dataclasses.replace(
            base, model=preset.autoencoder, image_disc=preset.image_disc,
            temporal_disc=preset.temporal_disc, use_vgg=False, use_image_disc=square,
            use_temporal_disc=square, batch_size=1, video_batch_size=1, video_frames=3,
            dead_code_every=0, loop=loop)
        torch.manual_seed(0)
        task = AutoencoderTask(params)
        mods = task.modules()
        ctx = StepContext(loop=loop, device=torch.device("cpu"), rank=0, world_size=1, logger=None,
                          modules=mods, raw=mods, ema={}, optimizers=task.optimizers())
        counter = FlopCounterMode(display=False)
        with counter, SavedBytes() as image:
            task.train_step(ImageBatch(clip[:, :1]), 0, ctx)
        with SavedBytes() as video:
            task.train_step(VideoBatch(clip), 1, ctx)
        key = "bf16" if bf16 else "fp32"
        out[f"act_image_{key}"], out[f"act_video_{key}"] = image.total, video.total
        if not bf16:
            out["flops_image"] = counter.get_total_flops()
            out["params"] = sum(p.numel() for p in task.model.parameters())
            out["params_disc"] = sum(p.numel() for d in (task.disc_i, task.disc_t) if d is not None
                                     for p in d.parameters())
    return out


def main(argv: list[str] | None = None) -> None:
    from pipeline.paper_presets import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=list(PRESETS))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name in args.presets:
        p = PRESETS[name]
        t0 = time.perf_counter()
        t = transformer_figures(p.transformer, p.batch_per_gpu)
        a = autoencoder_figures(p)
        states_t = 16 * t["params"]
        states_a = 16 * (a["params"] + a["params_disc"])
        rows.append((p, t, a, states_t, states_a))
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)

    print("\n| preset | frames | T params | L (tokens / window) | T FLOPs / step (batch) "
          "| T memory / GPU fp32 · bf16 · bf16 + ckpt | AE params (E,Q,F,D · Δi+Δt) "
          "| AE FLOPs / image step (1 frame) | AE memory / GPU at batch 8, fp32 · bf16 "
          "| paper V100-hours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p, t, a, states_t, states_a in rows:
        mem_t = [states_t + t[k] for k in ("act_fp32", "act_bf16", "act_ckpt")]
        mem_a = [states_a + 8 * a[f"act_image_{k}"] for k in ("fp32", "bf16")]
        hours = f"{p.gpu_hours:.0f}" if p.gpu_hours else "not given"
        print(f"| {p.name} | {p.height}×{p.width} | {t['params'] / 1e6:.0f} M "
              f"| {p.tokens_per_video} | {t['flops'] / 1e12:.1f} T ({p.batch_per_gpu}) "
              f"| {' · '.join(f'{m / GB:.1f}' for m in mem_t)} GB "
              f"| {a['params'] / 1e6:.1f} M · {a['params_disc'] / 1e6:.1f} M "
              f"| {a['flops_image'] / 1e9:.0f} G "
              f"| {' · '.join(f'{m / GB:.1f}' for m in mem_a)} GB | {hours} |")
    print("\nactivations per sample (saved for backward): T fp32 / bf16 / bf16+ckpt; AE image "
          "step and video step (3 frames) fp32 / bf16:")
    for p, t, a, _, _ in rows:
        b = p.batch_per_gpu
        print(f"  {p.name}: T {t['act_fp32'] / b / GB:.2f} / {t['act_bf16'] / b / GB:.2f} / "
              f"{t['act_ckpt'] / b / GB:.2f} GB; AE image {a['act_image_fp32'] / GB:.2f} / "
              f"{a['act_image_bf16'] / GB:.2f} GB, video {a['act_video_fp32'] / GB:.2f} / "
              f"{a['act_video_bf16'] / GB:.2f} GB")


if __name__ == "__main__":
    main()
