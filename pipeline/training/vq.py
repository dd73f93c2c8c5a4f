"""Training task and helpers shared by the VQ autoencoders of sounds and layouts (App. A, App. E).

App. A "Sound autoencoder" (the STFT of the audio is "encoded, quantized and decoded" like the
frames) and App. E "Layout-conditioned synthesis" (layouts "are encoded, quantized, and decoded
just as it is done for images") both train a small ``ccvs_models.vq_autoencoder.VQAutoencoder``
(E, Q, D without F) on ``recon_loss + λ_q · L_q`` (Eq. (3)) and turn its codes into frame-level
annotation tokens for the transformer. The stages ``sound_vq`` and ``layout_vq`` differ only in
their data and reconstruction loss; what they share lives here:

* ``VQTask`` — the ``pipeline.training.task.TrainTask`` of one VQ autoencoder, with dead-code
  re-seeding (not in the paper; keeps the codebook alive on small data);
* ``array_batches``, ``predict``, ``encode_tokens``, ``codebook_usage`` — batching over an
  in-memory array, reconstructions / tokens in batches, codebook perplexity and dead codes;
* ``split_samples``, ``holdout_videos`` — a split's clips, and a whole-video val hold-out when a
  dataset has no val split;
* ``fingerprint``, ``report_skipped``, ``write_placeholder``, ``labelled_rows`` — checkpoint
  folder hash, skipped-clip reporting, the "nothing for this stage" model file, and captioned
  PNG rows for the artifacts;
* ``StageError`` — a VQ stage cannot go on; each stage's ``main`` prefixes it with its name.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ccvs_models.vq_autoencoder import VQAutoencoder, VQAutoencoderConfig
from pipeline.training import distributed
from pipeline.atomic import write_json
from pipeline.training.checkpoint import save_model
from pipeline.data.shards import iter_clips
from pipeline.training.loop import epoch_batches
from pipeline.training.task import StepContext, TrainTask, seeded_init



# --------------------------------------------------------------------------- training


class VQTask(TrainTask):
    """One VQ autoencoder (module ``"vq"``) trained on ``recon_loss + q_weight · L_q``.

    Shared by ``sound_vq`` and ``layout_vq``. ``make_input(batch) -> (x, target)`` turns a batch
    into the model input and the target of ``recon_loss(recon, target)``. Code usage is summed
    over ``dead_code_every`` steps (across ranks); codes used at most 0 times are then re-seeded
    with this batch's encoder outputs (on rank 0, broadcast, so replicas stay equal).
    """

    def __init__(
        self,
        model_cfg: VQAutoencoderConfig,
        lr: float,
        q_weight: float,
        dead_code_every: int,
        recon_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        make_input: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        config: dict[str, Any],
        seed: int = 0,
    ) -> None:
        with seeded_init(seed):
            self.model = VQAutoencoder(model_cfg)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.q_weight = q_weight
        self.dead_code_every = dead_code_every
        self.recon_loss = recon_loss
        self.make_input = make_input
        self._config = config
        self.usage = torch.zeros(model_cfg.codebook_size, dtype=torch.long)
        self.reseeded_total = 0
        self.evaluator: Callable[[VQAutoencoder, torch.device], dict[str, float]] | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vq": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def ema_modules(self) -> list[str]:
        return ["vq"]

    def config(self) -> dict[str, Any]:
        return self._config

    def train_step(self, batch: torch.Tensor, step: int, ctx: StepContext) -> dict[str, float]:
        x, target = self.make_input(ctx.to_device(batch))
        with ctx.autocast():
            out = ctx.modules["vq"](x)
            recon = self.recon_loss(out.recon.float(), target)
            loss = recon + self.q_weight * out.q_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at step {step} (recon {recon.item()}, L_q {out.q_loss.item()}): "
                "inputs are checked finite, so lower the learning rate or turn bf16 off")
        ctx.optimize(loss, "opt")
        self.usage += out.counts.detach().cpu()
        reseeded = 0
        if self.dead_code_every and (step + 1) % self.dead_code_every == 0:
            reseeded = self._reseed(out.z.detach(), ctx)
        return {"loss": loss.item(), "recon": recon.item(), "q_loss": out.q_loss.item(),
                "perplexity": out.perplexity.item(), "reseeded_codes": float(reseeded)}

    @torch.no_grad()
    def _reseed(self, z: torch.Tensor, ctx: StepContext) -> int:
        usage = self.usage.to(ctx.device)
        if distributed.is_initialized():
            torch.distributed.all_reduce(usage)
        quantizer = ctx.raw["vq"].quantizer
        n = quantizer.reinit_dead_codes(z, usage, threshold=0) if ctx.is_main else 0
        if distributed.is_initialized():
            torch.distributed.broadcast(quantizer.codebook.weight.data, src=0)
            n = int(distributed.all_reduce_mean({"n": float(n)})["n"] * ctx.world_size)
        self.usage.zero_()
        self.reseeded_total += n
        return n

    def evaluate(self, step: int, ctx: StepContext) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        return self.evaluator(ctx.eval_module("vq"), ctx.device)

    def extra_state(self) -> dict[str, Any]:
        return {"usage": self.usage.clone(), "reseeded_total": self.reseeded_total}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "usage" in state:
            self.usage = state["usage"].clone().long()
            self.reseeded_total = int(state.get("reseeded_total", 0))


def array_batches(n: int, batch_size: int, seed: int) -> Callable[[int], Any]:
    """``make_batches(start)`` for ``fit``: endless shuffled index batches over ``n`` items.

    Epoch e is a permutation seeded by (seed, e, rank); the last partial batch is dropped (a batch
    of all items when there are fewer than ``batch_size``).
    """
    size = min(batch_size, n)

    def make_epoch(epoch: int) -> list[np.ndarray]:
        # the rank is read here, inside fit (which sets up the process group), not at creation
        perm = np.random.default_rng([seed, epoch, distributed.rank()]).permutation(n)
        return [perm[i : i + size] for i in range(0, n - size + 1, size)]

    return lambda start: epoch_batches(make_epoch, start)


@torch.no_grad()
def predict(model: VQAutoencoder, x: np.ndarray, device: torch.device, batch: int = 256,
            make_input: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
            ) -> tuple[np.ndarray, np.ndarray]:
    """(reconstructions, tokens) of ``x`` (numpy, N × ...) in batches, on ``device``."""
    recons, tokens = [], []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).to(device)
        if make_input is not None:
            xb, _ = make_input(xb)
        out = model(xb)
        recons.append(out.recon.float().cpu().numpy())
        tokens.append(out.tokens.cpu().numpy())
    return np.concatenate(recons), np.concatenate(tokens)


@torch.no_grad()
def encode_tokens(model: VQAutoencoder, x: np.ndarray, device: torch.device, batch: int = 256,
                  make_input: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                  ) -> np.ndarray:
    """Q(E(x)) tokens of ``x`` (numpy, N × ...) in batches (no decoder pass)."""
    tokens = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch])).to(device)
        if make_input is not None:
            xb, _ = make_input(xb)
        tokens.append(model.encode(xb).cpu().numpy())
    return np.concatenate(tokens)


def codebook_usage(tokens: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Perplexity (exp entropy of the token histogram) and dead codes (never used) of ``tokens``."""
    counts = np.bincount(tokens.reshape(-1), minlength=codebook_size).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    return {"perplexity": float(np.exp(entropy)), "dead_codes": float((counts == 0).sum()),
            "used_codes": float((counts > 0).sum())}


def report_skipped(stage: str, skipped: list[tuple[str, str]], logger: Any) -> None:
    """One stderr line per skipped clip, and the list as an artifact."""
    for key, reason in skipped:
        print(f"{stage}: skipped clip {key}: {reason}", file=sys.stderr)
    if skipped:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{stage}_skipped.csv"
            path.write_text("key,reason\n" + "".join(
                f"{k},\"{r.replace(chr(34), chr(39))}\"\n" for k, r in skipped), encoding="utf-8")
            logger.log_artifact(path, "skipped")


# --------------------------------------------------------------------------- data


def split_samples(clips: str | Path, split: str) -> Iterator[dict[str, Any]]:
    """The clips of ``split``; none when a local dataset folder simply has no such split."""
    root = Path(str(clips))
    if root.is_dir() and (root / "train").is_dir() and not (root / split).exists():
        return iter(())
    return iter_clips(clips, split)


# --------------------------------------------------------------------------- outputs


def write_placeholder(stage: str, reason: str, model_out: Path, metrics_out: Path, logger: Any,
                      extra: dict[str, float]) -> dict[str, float]:
    """A model file saying the data have nothing for ``stage`` (no audio / no layouts), so the
    DAG still runs and tokenize leaves that annotation out (``meta["available"] = False``)."""
    save_model(model_out, {}, {}, available=False, reason=reason)
    metrics = {"available": 0.0, **extra}
    write_json(metrics_out, {**metrics, "reason": reason})
    logger.set_tag(f"{stage}.available", "false")
    logger.set_tag(f"{stage}.reason", reason)
    logger.log_metrics(metrics)
    print(f"{stage}: {reason}: wrote a placeholder model {model_out}", file=sys.stderr)
    return metrics


def labelled_rows(rows: list[tuple[str, np.ndarray]], scale: int = 3) -> "Any":
    """Stack (label, RGB image) rows vertically with a caption above each; a PIL image."""
    from PIL import Image, ImageDraw

    caption = 12
    width = max(img.shape[1] for _, img in rows) * scale
    height = sum(img.shape[0] * scale + caption for _, img in rows)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, img in rows:
        draw.text((2, y), label, fill=(0, 0, 0))
        y += caption
        tile = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
        canvas.paste(tile, (0, y))
        y += img.shape[0] * scale
    return canvas
