"""Synthesis speed: T's sampling tokens/s with and without the KV cache, and end-to-end frames/s.

    python -m bench.synthesis --out /tmp/synthesis.md            # ~3–5 minutes on 2 cores

Transformer rows (``ccvs_models.sampler.sample_tokens``, top-k = 100, random-init weights):

- demo: ``params.yaml`` ``transformer.model`` (4 layers, 4 heads, 128 wide, N = 8 frames) on the demo
  world's sequence (8×8 codes of q = 512, 2 state + 16 audio tokens per frame, class label, end
  frame: L = 721), the same sequence the ``transformer`` stage trains on;
- large: 8 layers, 8 heads, 512 wide, N = 16 frames × 64 codes, q = 1024, no annotations (L = 1024).

The cost of a token depends on how full the window is (the uncached sampler re-runs the whole
prefix; the cached one attends over it), so both modes are timed on the same tokens: for each of
4 frames f spread over the window (the midpoints of its quarters), ``sample_tokens`` starts from f
given frames and samples frame f's first codes. The time between successive calls of T is one
token (forward + top-k pick); the cached run's first call (the prefill of the f given frames) is
not counted. "cached" is the default ``SamplerConfig`` (one-token steps on 1 thread,
``step_threads=1``); "2-thread steps" keeps torch's threads for them (``step_threads=0``). tokens/s = 1 / mean of the 4 per-frame means, i.e. the rate of a full pass over the
window; the uncached run is timed on fewer tokens per frame (a rate; stated in the table). Modes
are interleaved frame by frame and the whole pass repeated; the table gives medians over passes,
and the speedup is the ratio within each pass (median), because the machine is shared.

The end-to-end row times ``synthesize`` (T with the KV cache + D·S·E·F per frame) from 1 given
64×64 frame to N frames with the autoencoder of ``params.yaml`` ``autoencoder.model`` (c = its
context_frames) and the demo transformer, and splits the time between T and the autoencoder.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.sampler import SamplerConfig, TokenControls, sample_tokens, synthesize
from ccvs_models.transformer import CCVSTransformer, TransformerConfig
from pipeline.params import build, load_section, read_yaml
from pipeline.transformer_training import model_config

DEMO_VOCAB = {  # the demo world's token shards (tokenize → vocab.json)
    "frame": {"vocab": 512, "height": 8, "width": 8}, "end_frame": True,
    "state": {"bins": 128}, "audio": {"vocab": 256, "tokens_per_frame": 16},
    "layout": {"vocab": 256, "tokens_per_frame": 64}, "label": {"num_classes": 5},
}
LARGE = TransformerConfig(frame_vocab=1024, frame_height=8, frame_width=8, num_frames=16,
                          n_layer=8, n_head=8, n_embd=512)


class _Stop(Exception):
    """Raised from inside T's forward once the token budget is spent."""


class CallClock:
    """Wraps ``model.forward``: records when each call starts; stops the sampler after a budget."""

    def __init__(self, model: CCVSTransformer) -> None:
        self.model, self.forward = model, model.forward
        self.stamps: list[float] = []
        self.budget = 0

    def __enter__(self) -> CallClock:
        def timed(*args, **kwargs):
            self.stamps.append(time.perf_counter())
            if len(self.stamps) > self.budget:
                raise _Stop
            return self.forward(*args, **kwargs)
        self.model.forward = timed  # instance attribute: nn.Module.__call__ finds it
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward

    def per_token(self, model_args: Callable[[], None], tokens: int) -> float:
        """Run ``model_args`` (a sampler call) for 1 + ``tokens`` calls of T; mean seconds per
        token over the last ``tokens`` intervals (the first call is the prefill / warm-up)."""
        self.stamps, self.budget = [], tokens + 1
        try:
            model_args()
        except _Stop:
            pass
        gaps = [b - a for a, b in zip(self.stamps[1:], self.stamps[2:])]
        assert len(gaps) == tokens, (len(gaps), tokens)
        return statistics.fmean(gaps)


def random_controls(cfg: TransformerConfig, batch: int, n: int, gen: torch.Generator) -> TokenControls:
    lay = cfg.sequence_layout
    ids = (lambda high, *shape: torch.randint(high, shape, generator=gen))  # noqa: E731
    return TokenControls(
        label=ids(lay.num_classes, batch) if lay.num_classes else None,
        end_frame=ids(lay.frame_vocab, batch, lay.frame_height, lay.frame_width)
        if lay.end_frame else None,
        state=ids(lay.state_bins, batch, n, 2) if lay.state_tokens else None,
        audio=ids(lay.audio_vocab, batch, n, lay.audio_tokens) if lay.audio_tokens else None,
        layout=ids(lay.layout_vocab, batch, n, lay.layout_tokens) if lay.layout_tokens else None)


def token_rates(model: CCVSTransformer, batch: int, cached_tokens: int, uncached_tokens: int,
                passes: int) -> dict[str, list[float]]:
    """Seconds per token step (a step samples ``batch`` tokens) of both modes, per pass."""
    lay = model.layout
    n_new = lay.num_frames - 1
    frames = [1 + int(n_new * (i + 0.5) / 4) for i in range(4)]  # quarter midpoints of 1..N−1
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(lay.frame_vocab, (batch, lay.num_frames, lay.frame_height,
                                            lay.frame_width), generator=gen)
    controls = random_controls(model.config, batch, lay.num_frames, gen)
    modes = {"cached": (SamplerConfig(top_k=100), cached_tokens),
             "cached, 2 threads": (SamplerConfig(top_k=100, step_threads=0), cached_tokens),
             "uncached": (SamplerConfig(top_k=100, kv_cache=False), uncached_tokens)}
    out: dict[str, list[float]] = {mode: [] for mode in modes}
    with CallClock(model) as clock:
        for _ in range(passes):
            per: dict[str, list[float]] = {mode: [] for mode in modes}
            for f in frames:
                ctl = TokenControls(**{k: (v[:, :f + 1] if k in ("state", "audio", "layout")
                                           and v is not None else v)
                                       for k, v in vars(controls).items()})
                if lay.end_frame:  # the end frame stays the window's last frame
                    ctl = TokenControls(**{**vars(ctl), "end_time": lay.num_frames - 1})
                for mode, (cfg, count) in modes.items():
                    per[mode].append(clock.per_token(
                        lambda: sample_tokens(model, codes[:, :f], f + 1, ctl, cfg), count))
            for mode in per:
                out[mode].append(statistics.fmean(per[mode]))
    return out


def end_to_end(params: str, samples: int, repeats: int) -> dict[str, float]:
    """synthesize() from 1 real 64×64 frame to N frames; frames/s and the T / autoencoder split."""
    # only the model subsection, strictly (the rest of the section is the training's business)
    ae_cfg = build(AutoencoderConfig, read_yaml(params)["autoencoder"]["model"], "autoencoder.model")
    tp = load_section("transformer", params)
    t_cfg = model_config(tp.model, tp.conditioning, DEMO_VOCAB, tp.model.num_frames or 16)
    torch.manual_seed(0)
    ae, model = CCVSAutoencoder(ae_cfg).eval(), CCVSTransformer(t_cfg).eval()
    n = t_cfg.num_frames
    size = t_cfg.frame_height * ae_cfg.downsampling
    gen = torch.Generator().manual_seed(1)
    start = torch.rand(1, 1, 3, size, size, generator=gen) * 2 - 1
    controls = random_controls(t_cfg, 1, n, gen)
    ae_time = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                ae_time[0] += time.perf_counter() - t0
        return wrapper

    ae.decode_tokens, ae.encode = timed(ae.decode_tokens), timed(ae.encode)
    totals, ae_parts = [], []
    for _ in range(repeats):
        ae_time[0] = 0.0
        t0 = time.perf_counter()
        synthesize(ae, model, start, n, controls, SamplerConfig(top_k=100), samples=samples)
        totals.append(time.perf_counter() - t0)
        ae_parts.append(ae_time[0])
    i = totals.index(statistics.median(totals)) if repeats % 2 else 0
    new = (n - 1) * samples
    return {"frames": new, "seconds": totals[i], "fps": new / totals[i],
            "ae_share": ae_parts[i] / totals[i], "size": size, "c": ae_cfg.context_frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="", help="also write the markdown table here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes (median)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and passes (smoke)")
    parser.add_argument("--skip-tokens", action="store_true", help="only the end-to-end rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tp = load_section("transformer", args.params)
    demo_cfg = model_config(tp.model, tp.conditioning, DEMO_VOCAB, tp.model.num_frames or 16)
    q = args.quick
    runs = [  # name, config, batch, cached tokens, uncached tokens, passes
        ("demo", demo_cfg, 1, 16, 4 if q else 8, 1 if q else args.passes),
        ("large", LARGE, 1, 8 if q else 16, 1 if q else 2, 1 if q else args.passes),
        ("large", LARGE, 4, 8 if q else 16, 1, 1 if q else max(1, args.passes - 1)),
    ]
    load = os.getloadavg()[0]
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"load average {load:.1f} at start; random-init weights, top-k = 100, fp32.",
        "",
        "| model | L | params | batch | cached tok/s | cached, 2-thread steps, tok/s | "
        "uncached tok/s | tokens timed (cached / uncached, per frame × 4 frames × passes) | "
        "speedup | speedup, 2-thread steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    wall = time.perf_counter()
    for name, cfg, batch, n_cached, n_uncached, passes in [] if args.skip_tokens else runs:
        torch.manual_seed(0)
        model = CCVSTransformer(cfg).eval()
        sec = token_rates(model, batch, n_cached, n_uncached, passes)
        ratios = [u / c for c, u in zip(sec["cached"], sec["uncached"])]
        ratios2 = [u / c for c, u in zip(sec["cached, 2 threads"], sec["uncached"])]
        cached = batch / statistics.median(sec["cached"])
        cached2 = batch / statistics.median(sec["cached, 2 threads"])
        uncached = batch / statistics.median(sec["uncached"])
        desc = (f"{name}: {cfg.n_layer}L × {cfg.n_embd}, {cfg.n_head} heads, N = {cfg.num_frames}, "
                f"{cfg.frame_height}×{cfg.frame_width} codes, q = {cfg.frame_vocab}")
        lines.append(
            f"| {desc} | {cfg.block_size} | {model.num_parameters() / 1e6:.1f} M | {batch} | "
            f"{cached:.1f} | {cached2:.1f} | {uncached:.2f} | {n_cached} / {n_uncached} × 4 × "
            f"{passes} | **{statistics.median(ratios):.0f}×** (passes: "
            f"{', '.join(f'{r:.0f}' for r in ratios)}) | {statistics.median(ratios2):.0f}× |")
        print(lines[-1], flush=True)
    e2e = end_to_end(args.params, 1, 1 if q else 3)
    e2e4 = end_to_end(args.params, 4, 1)
    lines += [
        "",
        "| end to end (synthesize, KV cache) | samples | new frames | seconds | frames/s | "
        "autoencoder share |",
        "|---|---|---|---|---|---|",
    ]
    for r, s in ((e2e, 1), (e2e4, 4)):
        lines.append(f"| demo T + D·S·E·F (params.yaml autoencoder, c = {r['c']}), "
                     f"{r['size']}×{r['size']}, 1 given frame | {s} | {r['frames']} | "
                     f"{r['seconds']:.2f} | {r['fps']:.1f} | {r['ae_share']:.0%} |")
    lines += ["", f"Total bench time {time.perf_counter() - wall:.0f} s, load average "
              f"{os.getloadavg()[0]:.1f} at the end."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
