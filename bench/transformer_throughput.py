"""Training throughput of the transformer T (tokens/s), with and without bf16 autocast.

    python -m bench.transformer_throughput                       # params.yaml + data/tokens/vocab.json
    python -m bench.transformer_throughput --tokens /path/to/tokens --steps 10 --batch 4

One training step = the ``transformer`` stage's step: conditioning dropout, forward with the
Eq. (8) loss, backward, gradient clipping, AdamW. The model is ``params.yaml``'s ``transformer``
section on the sequence ``vocab.json`` describes (or, without one, the demo world's: 8×8 codes of
a 512 codebook, 128 state bins, 16 audio tokens of 256, 5 classes, end frame). Random token ids
(throughput does not depend on the values). Reports the median step time over ``--steps`` steps
after ``--warmup`` steps, and tokens/s = batch · L / step time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from ccvs_models.sequence_layout import TokenKind
from ccvs_models.transformer import CCVSTransformer
from pipeline.params import load_section
from pipeline.training.transformer import adamw, conditioning_dropout, model_config

DEMO_VOCAB = {
    "frame": {"vocab": 512, "height": 8, "width": 8}, "end_frame": True,
    "state": {"bins": 128}, "audio": {"vocab": 256, "tokens_per_frame": 16},
    "layout": {"vocab": 256, "tokens_per_frame": 64}, "label": {"num_classes": 5},
}


def random_tokens(model: CCVSTransformer, batch: int, gen: torch.Generator) -> torch.Tensor:
    lay = model.layout
    kinds = lay.kinds()
    tokens = torch.zeros(batch, lay.length, dtype=torch.long)
    for kind in TokenKind:
        where = kinds == kind
        if where.any():
            tokens[:, where] = torch.randint(0, lay.vocab_size(kind), (batch, int(where.sum())),
                                             generator=gen)
    return tokens


def measure(model: CCVSTransformer, batch: int, steps: int, warmup: int, bf16: bool,
            drop: dict) -> float:
    opt = adamw(model, 1e-4, 0.01, (0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    gap = torch.full((batch,), model.config.num_frames - 1) if model.config.end_frame else None
    times = []
    model.train()
    for i in range(warmup + steps):
        tokens = conditioning_dropout(random_tokens(model, batch, gen), model.layout, drop)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(tokens, gap, tokens)
        opt.zero_grad(set_to_none=True)
        out.loss.float().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokens", default="data/tokens", help="folder with vocab.json")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=0, help="0 = transformer.batch_size")
    args = parser.parse_args()

    p = load_section("transformer", args.params)
    vocab_path = Path(args.tokens) / "vocab.json"
    vocab = json.loads(vocab_path.read_text()) if vocab_path.exists() else DEMO_VOCAB
    clip_len = p.model.num_frames or 16
    cfg = model_config(p.model, p.conditioning, vocab, clip_len)
    batch = args.batch or p.batch_size
    torch.manual_seed(0)
    model = CCVSTransformer(cfg)
    drop = p.conditioning.drop_probs()
    print(f"vocab: {vocab_path if vocab_path.exists() else 'demo defaults'}; L = "
          f"{cfg.block_size}, {cfg.n_layer} layers × {cfg.n_embd} wide, {cfg.n_head} heads, "
          f"{model.num_parameters() / 1e6:.2f} M parameters, batch {batch}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print("| autocast | step (s) | tokens/s |")
    print("|----------|----------|----------|")
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = CCVSTransformer(cfg)
        s = measure(model, batch, args.steps, args.warmup, bf16, drop)
        print(f"| {'bf16' if bf16 else 'fp32':8s} | {s:8.3f} | {batch * cfg.block_size / s:8.0f} |")


if __name__ == "__main__":
    main()
