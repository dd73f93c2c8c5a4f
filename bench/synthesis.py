"""Synthesis speed: T's sampling tokens/s with and without the KV cache, and end-to-end frames/s.

    python -m bench.synthesis --out /tmp/synthesis.md            # ~3–5 minutes on 2 idle cores
    python -m bench.synthesis --large-only                       # the ceiling + 8 × 512 rows only

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

Also in the same run (issue #6's KV-cache target):

- the ceiling: the machine's streaming read of a weights-sized fp32 buffer (``sum``) and one fp32
  matrix-vector pass over the large model's own Linear weights (what a cached token step must read),
  on 1 and 2 threads, in GB/s; the cached step's achieved GB/s (Linear weight bytes × steps/s) as a
  share of it; and "fp32 at the GEMV ceiling": the speedup a cached step that did nothing but read
  the weights at the best GEMV bandwidth would have over the measured uncached sampler;
- reduced precision: ``SamplerConfig(weights="int8")`` (``CCVSTransformer.low_precision``; the int8
  copy is made once per model here and timed directly) in the same interleaved passes, cached and
  uncached, so it is compared with the fp32 uncached baseline and with the uncached sampler at the
  same precision; and how many sampled tokens differ from fp32 with a fixed seed.

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
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from pipeline.params import build, load_section, read_yaml
from pipeline.training.transformer import model_config

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


def linear_weights(model: CCVSTransformer) -> list[torch.Tensor]:
    """The weights a cached token step reads (every Linear: q/k/v, projections, MLP, head), in
    the order of the forward."""
    return [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bandwidth(model: CCVSTransformer, repeats: int = 15) -> dict[str, float]:
    """The ceiling of a cached token step: how fast this machine streams a weights-sized buffer.
    Per thread count (1, 2): ``sum`` over an fp32 buffer of the Linear weights' size, and one
    fp32 matrix-vector pass over the model's own Linear weights (the GEMVs of a token step and
    nothing else) → GB/s; plus the same pass with bf16 weights and with int8 weights (the int8
    kernel of ``LowPrecisionLinear``), in ms. Keys: "<what> <threads>t"."""
    weights = linear_weights(model)
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    flat = torch.randn(nbytes // 4)
    rows = {w.shape[1]: torch.randn(1, w.shape[1]) for w in weights}
    lp = model.low_precision("int8")
    q8 = [m for m in lp.modules() if type(m).__name__ == "LowPrecisionLinear"]
    bf = [w.bfloat16() for w in weights]
    out: dict[str, float] = {"bytes": float(nbytes)}
    before = torch.get_num_threads()
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out[f"sum {threads}t"] = nbytes / _median_time(flat.sum, repeats) / 1e9
            out[f"gemv {threads}t"] = nbytes / _median_time(
                lambda: [torch.nn.functional.linear(rows[w.shape[1]], w) for w in weights],
                repeats) / 1e9
            out[f"gemv bf16 ms {threads}t"] = 1e3 * _median_time(
                lambda: [torch.nn.functional.linear(rows[w.shape[1]].bfloat16(), w) for w in bf],
                repeats)
            out[f"gemv int8 ms {threads}t"] = 1e3 * _median_time(
                lambda: [m(rows[m.in_features]) for m in q8], repeats)
    torch.set_num_threads(before)
    return out


def differing_tokens(model: CCVSTransformer, weights: str, frames: int = 2) -> dict[str, str]:
    """Sampled with a fixed seed from 1 given frame, ``frames`` new frames with the KV cache:
    how many tokens of the ``weights`` run differ from the fp32 run (top-k = 100 and greedy),
    and the first one that does (after it the two runs condition on different prefixes)."""
    lay = model.layout
    gen = torch.Generator().manual_seed(0)
    start = torch.randint(lay.frame_vocab, (1, 1, lay.frame_height, lay.frame_width), generator=gen)
    ctl = random_controls(model.config, 1, 1 + frames, gen)
    if lay.end_frame:
        ctl = TokenControls(**{**vars(ctl), "end_time": lay.num_frames - 1})
    out = {}
    for name, k in (("top-k 100", 100), ("greedy", 1)):
        ref = sample_tokens(model, start, 1 + frames, ctl, SamplerConfig(top_k=k), seeds=[0])
        low = sample_tokens(model, start, 1 + frames, ctl, SamplerConfig(top_k=k, weights=weights),
                            seeds=[0])
        diff = (ref[:, 1:] != low[:, 1:]).flatten()
        first = int(diff.nonzero()[0]) if diff.any() else None
        out[name] = (f"{int(diff.sum())} / {diff.numel()}"
                     + (f" (first at token {first})" if first is not None else ""))
    return out


LOW = "int8"  # the reduced-precision option the table times (SamplerConfig.weights)


def token_rates(model: CCVSTransformer, batch: int, cached_tokens: int, uncached_tokens: int,
                passes: int, low: CCVSTransformer) -> dict[str, list[float]]:
    """Seconds per token step (a step samples ``batch`` tokens) of every mode, per pass. ``low``
    is ``model.low_precision(LOW)``, timed directly (so the clock sees its calls)."""
    lay = model.layout
    n_new = lay.num_frames - 1
    frames = [1 + int(n_new * (i + 0.5) / 4) for i in range(4)]  # quarter midpoints of 1..N−1
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(lay.frame_vocab, (batch, lay.num_frames, lay.frame_height,
                                            lay.frame_width), generator=gen)
    controls = random_controls(model.config, batch, lay.num_frames, gen)
    modes = {"cached": (model, SamplerConfig(top_k=100), cached_tokens),
             "cached, 2 threads": (model, SamplerConfig(top_k=100, step_threads=0), cached_tokens),
             "uncached": (model, SamplerConfig(top_k=100, kv_cache=False), uncached_tokens),
             "low cached": (low, SamplerConfig(top_k=100), cached_tokens),
             "low cached, 2 threads": (low, SamplerConfig(top_k=100, step_threads=0),
                                       cached_tokens),
             "low uncached": (low, SamplerConfig(top_k=100, kv_cache=False), uncached_tokens)}
    out: dict[str, list[float]] = {mode: [] for mode in modes}
    with CallClock(model) as clock, CallClock(low) as clock_low:
        clocks = {model: clock, low: clock_low}
        for _ in range(passes):
            per: dict[str, list[float]] = {mode: [] for mode in modes}
            for f in frames:
                ctl = TokenControls(**{k: (v[:, :f + 1] if k in ("state", "audio", "layout")
                                           and v is not None else v)
                                       for k, v in vars(controls).items()})
                if lay.end_frame:  # the end frame stays the window's last frame
                    ctl = TokenControls(**{**vars(ctl), "end_time": lay.num_frames - 1})
                for mode, (net, cfg, count) in modes.items():
                    per[mode].append(clocks[net].per_token(
                        lambda: sample_tokens(net, codes[:, :f], f + 1, ctl, cfg), count))
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
    parser.add_argument("--large-only", action="store_true",
                        help="only the ceiling and the large-model rows (no demo, no end to end)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tp = load_section("transformer", args.params)
    demo_cfg = model_config(tp.model, tp.conditioning, DEMO_VOCAB, tp.model.num_frames or 16)
    q = args.quick
    notes: list[str] = []
    runs = [  # name, config, batch, cached tokens, uncached tokens, passes
        ("demo", demo_cfg, 1, 16, 4 if q else 8, 1 if q else args.passes),
        ("large", LARGE, 1, 8 if q else 16, 1 if q else 2, 1 if q else args.passes),
        ("large", LARGE, 4, 8 if q else 16, 1, 1 if q else max(1, args.passes - 1)),
    ]
    load = os.getloadavg()[0]
    wall = time.perf_counter()
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"load average {load:.1f} at start; random-init weights, top-k = 100. fp32 unless "
        f"marked {LOW} (SamplerConfig(weights=\"{LOW}\"): weight-only int8 Linear layers, bf16 "
        f"activations).",
        "",
    ]
    torch.manual_seed(0)
    ceiling = bandwidth(CCVSTransformer(LARGE).eval(), repeats=5 if q else 15)
    mb = ceiling["bytes"] / 1e6
    best_bw = max(ceiling["gemv 1t"], ceiling["gemv 2t"])
    lines += [
        f"Ceiling (large model's Linear weights, {mb:.0f} MB fp32): streaming read "
        f"(`sum`) {ceiling['sum 1t']:.1f} GB/s on 1 thread, {ceiling['sum 2t']:.1f} on 2; one "
        f"fp32 GEMV pass over the weights (a token step's matrix-vector products alone) "
        f"{mb / ceiling['gemv 1t']:.1f} ms = {ceiling['gemv 1t']:.1f} GB/s on 1 thread, "
        f"{mb / ceiling['gemv 2t']:.1f} ms = {ceiling['gemv 2t']:.1f} GB/s on 2; the same pass "
        f"with bf16 weights {ceiling['gemv bf16 ms 1t']:.1f} / {ceiling['gemv bf16 ms 2t']:.1f} ms, "
        f"with int8 weights {ceiling['gemv int8 ms 1t']:.1f} / {ceiling['gemv int8 ms 2t']:.1f} "
        f"ms (1 / 2 threads).",
        "",
        "| model | L | params | batch | cached tok/s (1-thread steps, default) | cached, 2-thread "
        f"steps | uncached | {LOW} cached (1-thread steps) | {LOW} cached, 2-thread steps | "
        f"{LOW} uncached | tokens timed (cached / uncached, per frame × 4 frames × passes) | "
        "speedup fp32 (default) | fp32, 2-thread steps | fp32 step GB/s (1 / 2-thread steps) "
        f"| {LOW} cached vs fp32 uncached (1 / 2-thread steps) | {LOW} cached vs {LOW} uncached "
        "(1 / 2-thread steps) | fp32 at the GEMV ceiling vs fp32 uncached |",
        "|" + "---|" * 17,
    ]
    if args.large_only:
        runs = [r for r in runs if r[0] == "large"]
    for name, cfg, batch, n_cached, n_uncached, passes in [] if args.skip_tokens else runs:
        torch.manual_seed(0)
        model = CCVSTransformer(cfg).eval()
        t0 = time.perf_counter()
        low = model.low_precision(LOW)
        convert = time.perf_counter() - t0
        sec = token_rates(model, batch, n_cached, n_uncached, passes, low)

        def ratio(num: str, den: str) -> tuple[float, list[float]]:
            """median over passes of sec[num] / sec[den] in that pass."""
            per = [sec[num][i] / sec[den][i] for i in range(passes)]
            return statistics.median(per), per

        rate = {mode: batch / statistics.median(v) for mode, v in sec.items()}
        fp32, fp32_passes = ratio("uncached", "cached")
        fp32_2, _ = ratio("uncached", "cached, 2 threads")
        low_fp, low_fp_passes = ratio("uncached", "low cached")
        low_fp2, low_fp2_passes = ratio("uncached", "low cached, 2 threads")
        low_low, _ = ratio("low uncached", "low cached")
        low_low2, _ = ratio("low uncached", "low cached, 2 threads")
        wbytes = sum(w.numel() * 4 for w in linear_weights(model))
        gbs = [wbytes * rate[m] / batch / 1e9 for m in ("cached", "cached, 2 threads")]
        # the best fp32 cached step can do: read the weights at the best GEMV bandwidth
        at_ceiling = statistics.median(sec["uncached"]) / (wbytes / (best_bw * 1e9))
        desc = (f"{name}: {cfg.n_layer}L × {cfg.n_embd}, {cfg.n_head} heads, N = {cfg.num_frames}, "
                f"{cfg.frame_height}×{cfg.frame_width} codes, q = {cfg.frame_vocab}")
        lines.append(
            f"| {desc} | {cfg.block_size} | {model.num_parameters() / 1e6:.1f} M | {batch} | "
            f"{rate['cached']:.1f} | {rate['cached, 2 threads']:.1f} | {rate['uncached']:.2f} | "
            f"{rate['low cached']:.1f} | {rate['low cached, 2 threads']:.1f} | "
            f"{rate['low uncached']:.2f} | {n_cached} / {n_uncached} × 4 × {passes} | "
            f"**{fp32:.0f}×** (passes: {', '.join(f'{r:.0f}' for r in fp32_passes)}) | "
            f"{fp32_2:.0f}× | {gbs[0]:.1f} / {gbs[1]:.1f} ({gbs[0] / ceiling['gemv 1t']:.0%} / "
            f"{gbs[1] / ceiling['gemv 2t']:.0%} of the GEMV pass) | **{low_fp:.0f}× / {low_fp2:.0f}×** "
            f"(passes: {', '.join(f'{r:.0f}' for r in low_fp_passes)} / "
            f"{', '.join(f'{r:.0f}' for r in low_fp2_passes)}) | {low_low:.0f}× / {low_low2:.0f}× | "
            f"{at_ceiling:.0f}× |")
        print(lines[-1], flush=True)
        if batch == 1:
            diff = differing_tokens(model, LOW)
            notes.append(f"{name}: {LOW} copy made in {convert * 1e3:.0f} ms; sampled tokens "
                         f"that differ from fp32 (seed 0, 2 new frames, KV cache): " +
                         "; ".join(f"{k} {v}" for k, v in diff.items()))
            print(notes[-1], flush=True)
    lines += [""] + [f"- {n}" for n in notes]
    e2e = [] if args.large_only else [(end_to_end(args.params, 1, 1 if q else 3), 1),
                                      (end_to_end(args.params, 4, 1), 4)]
    lines += [
        "",
        "| end to end (synthesize, KV cache) | samples | new frames | seconds | frames/s | "
        "autoencoder share |",
        "|---|---|---|---|---|---|",
    ] if e2e else []
    for r, s in e2e:
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
