"""Synthesis speed: T's sampling tokens/s with and without the KV cache, the step-thread choice,
one frame's D·S·E·F, and end-to-end frames/s.

    python -m bench.synthesis --out /tmp/synthesis.md            # every part (long under load)
    python -m bench.synthesis --parts threads --large-only --weights fp32   # item 2: auto vs fixed
    python -m bench.synthesis --parts ae,e2e                     # item 3: D·S·E·F and end to end

Every table starts with torch's version, the thread budget and the load average (1 / 5 / 15 min)
at start and ends with the load average at the end; ratios are measured within one pass (the
variants interleaved), because the machine is shared.

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
not counted. "cached" runs the one-token steps on 1 thread (``step_threads=1``, the default
before "auto"); "2-thread steps" keeps torch's threads for them (``step_threads=0``). tokens/s = 1 / mean of the 4 per-frame means, i.e. the rate of a full pass over the
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

Parts (``--parts``, a comma list):

- tokens: the ceiling and the per-token table above ("cached" = 1-thread one-token steps,
  ``step_threads=1``; "2-thread steps" = ``step_threads=0``);
- threads: whole ``sample_tokens`` runs (1 given frame → ``--frames``) per step-thread setting (1,
  all, "auto" with a fresh ``StepThreads`` per run, so its measurement is inside the timed run) and
  T's weights precision; auto / best fixed setting and auto / 1-thread steps as per-pass ratios;
- ae: one synthesized frame's D·S·E·F alone (D with F over c context frames, then E of the
  decoded frame) in fp32, fp32 with channels-last conv weights and bf16 autocast + channels-last,
  on 1 and 2 threads;
- e2e: ``synthesize`` (T with the KV cache and auto step threads + D·S·E·F per frame) from 1 given
  64×64 frame to ``--e2e-frames`` frames, demo T and 8 × 512 T, 1 and 4 samples, per autoencoder
  variant (precision, channels-last, overlap, and ``default`` = what ``ccvs synthesize`` runs):
  frames/s, T's and the autoencoder's time per frame, the autoencoder's share of the wall time,
  the PSNR of the frames against fp32's (the tokens are the same), and what the step threads chose.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.sampler import SamplerConfig, TokenControls, sample_tokens, synthesize
from ccvs_models.step_threads import StepThreads
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig
from pipeline.params import build, load_section, read_yaml
from pipeline.synthesis.command import bf16_pays
from pipeline.training.checkpoint import load_model
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
    one = SamplerConfig(top_k=100, step_threads=1)
    modes = {"cached": (model, one, cached_tokens),
             "cached, 2 threads": (model, SamplerConfig(top_k=100, step_threads=0), cached_tokens),
             "uncached": (model, SamplerConfig(top_k=100, kv_cache=False), uncached_tokens),
             "low cached": (low, one, cached_tokens),
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


def token_table(args: argparse.Namespace, demo_cfg: TransformerConfig, q: bool,
                emit: Callable[..., None]) -> None:
    """The ceiling and the per-token table: KV-cache steps (1-thread and all-thread, fp32 and
    ``LOW``) against recomputing the prefix, at 4 points of the window."""
    notes: list[str] = []
    runs = [  # name, config, batch, cached tokens, uncached tokens, passes
        ("demo", demo_cfg, 1, 16, 4 if q else 8, 1 if q else args.passes),
        ("large", LARGE, 1, 8 if q else 16, 1 if q else 2, 1 if q else args.passes),
        ("large", LARGE, 4, 8 if q else 16, 1, 1 if q else max(1, args.passes - 1)),
    ]
    torch.manual_seed(0)
    ceiling = bandwidth(CCVSTransformer(LARGE).eval(), repeats=5 if q else 15)
    mb = ceiling["bytes"] / 1e6
    best_bw = max(ceiling["gemv 1t"], ceiling["gemv 2t"])
    emit(
        f"fp32 unless marked {LOW} (SamplerConfig(weights=\"{LOW}\"): weight-only int8 Linear "
        f"layers, bf16 activations).",
        "",
        f"Ceiling (large model's Linear weights, {mb:.0f} MB fp32): streaming read "
        f"(`sum`) {ceiling['sum 1t']:.1f} GB/s on 1 thread, {ceiling['sum 2t']:.1f} on 2; one "
        f"fp32 GEMV pass over the weights (a token step's matrix-vector products alone) "
        f"{mb / ceiling['gemv 1t']:.1f} ms = {ceiling['gemv 1t']:.1f} GB/s on 1 thread, "
        f"{mb / ceiling['gemv 2t']:.1f} ms = {ceiling['gemv 2t']:.1f} GB/s on 2; the same pass "
        f"with bf16 weights {ceiling['gemv bf16 ms 1t']:.1f} / {ceiling['gemv bf16 ms 2t']:.1f} ms, "
        f"with int8 weights {ceiling['gemv int8 ms 1t']:.1f} / {ceiling['gemv int8 ms 2t']:.1f} "
        f"ms (1 / 2 threads).",
        "",
        "| model | L | params | batch | cached tok/s (1-thread steps) | cached, 2-thread "
        f"steps | uncached | {LOW} cached (1-thread steps) | {LOW} cached, 2-thread steps | "
        f"{LOW} uncached | tokens timed (cached / uncached, per frame × 4 frames × passes) | "
        "speedup fp32 (1-thread steps) | fp32, 2-thread steps | fp32 step GB/s (1 / 2-thread steps) "
        f"| {LOW} cached vs fp32 uncached (1 / 2-thread steps) | {LOW} cached vs {LOW} uncached "
        "(1 / 2-thread steps) | fp32 at the GEMV ceiling vs fp32 uncached |",
        "|" + "---|" * 17,
    )
    if args.large_only:
        runs = [r for r in runs if r[0] == "large"]
    for name, cfg, batch, n_cached, n_uncached, passes in runs:
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
        emit(
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
        if batch == 1:
            diff = differing_tokens(model, LOW)
            notes.append(f"{name}: {LOW} copy made in {convert * 1e3:.0f} ms; sampled tokens "
                         f"that differ from fp32 (seed 0, 2 new frames, KV cache): " +
                         "; ".join(f"{k} {v}" for k, v in diff.items()))
    emit("", *[f"- {n}" for n in notes])


def run_seconds(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


THREAD_MODES = {"1-thread steps": 1, "all-thread steps": 0, "auto": "auto"}  # step_threads


def whole_runs(model: CCVSTransformer, batch: int, frames: int, passes: int,
               weights: Sequence[str]) -> list[dict]:
    """Whole ``sample_tokens`` runs from 1 given frame to ``frames`` frames (what ``ccvs
    synthesize`` does: the first window's prefill, every token step, the "auto" measurement
    inside the run) per step-thread setting and weights precision, interleaved within each pass
    (the order rotates); tokens/s per setting, the per-pass ratios auto / best fixed setting and
    auto / 1-thread steps, what auto chose, and how many tokens differ from the fp32 run."""
    lay = model.layout
    gen = torch.Generator().manual_seed(0)
    start = torch.randint(lay.frame_vocab, (batch, 1, lay.frame_height, lay.frame_width),
                          generator=gen)
    ctl = random_controls(model.config, batch, frames, gen)
    if lay.end_frame:
        ctl = TokenControls(**{**vars(ctl), "end_time": frames - 1})
    nets = {w: model.low_precision(w) for w in weights}  # made once, as a long-lived sampler would
    new = batch * (frames - 1) * lay.tokens_per_frame
    rows = []
    for w in weights:
        sec: dict[str, list[float]] = {mode: [] for mode in THREAD_MODES}
        chose: list[str] = []
        modes = list(THREAD_MODES.items())
        for i in range(passes):
            for mode, setting in modes[i % 3:] + modes[:i % 3]:
                tuner = StepThreads()
                # ``low_precision`` is bypassed: the copy was made above (weights="fp32" → T)
                cfg = SamplerConfig(top_k=100, step_threads=setting)
                sec[mode].append(run_seconds(lambda: sample_tokens(
                    nets[w], start, frames, ctl, cfg, threads=tuner)))
                if setting == "auto":
                    chose += tuner.summary()
        per_pass = [(min(sec[m][i] for m in ("1-thread steps", "all-thread steps")),
                     sec["1-thread steps"][i], sec["auto"][i]) for i in range(passes)]
        diff = "—"
        if w != "fp32":
            ref = sample_tokens(model, start, frames, ctl, SamplerConfig(top_k=100))
            low = sample_tokens(nets[w], start, frames, ctl, SamplerConfig(top_k=100))
            d = (ref[:, 1:] != low[:, 1:]).flatten()
            diff = f"{int(d.sum())} / {d.numel()}" + (f" (first at {int(d.nonzero()[0])})"
                                                      if d.any() else "")
        rows.append({"weights": w, "rate": {m: new / statistics.median(v) for m, v in sec.items()},
                     "vs_best": statistics.median(best / auto for best, _, auto in per_pass),
                     "vs_one": statistics.median(one / auto for _, one, auto in per_pass),
                     "passes": [f"{best / auto:.2f}" for best, _, auto in per_pass],
                     "chose": chose, "diff": diff})
    return rows


class CallTimer:
    """Adds the wall time of a module's calls: the autoencoder's D·S·E·F (``decode_tokens``,
    ``encode``) or T's forward (``forward``)."""

    def __init__(self, module: torch.nn.Module, names: Sequence[str]) -> None:
        self.seconds = 0.0
        for name in names:
            setattr(module, name, self._timed(getattr(module, name)))

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
        return wrapper


E2E_VARIANTS = {  # name → (channels-last conv weights, SamplerConfig fields); cl = channels-last
    "fp32": (False, {"overlap_decoding": False}),
    "fp32+cl": (True, {"overlap_decoding": False}),
    "bf16+cl": (True, {"autoencoder_precision": "bf16", "overlap_decoding": False}),
    "fp32+cl+overlap": (True, {"overlap_decoding": True}),
    "bf16+cl+overlap": (True, {"autoencoder_precision": "bf16", "overlap_decoding": True}),
    "default": (True, {}),  # what ``ccvs synthesize`` runs: SamplerConfig() defaults, bf16 AE if it pays
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between frames in [−1, 1] (peak-to-peak 2)."""
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(4 / mse)


def end_to_end(params: str, width: str, samples: int, frames: int, context: int, passes: int,
               autoencoder: str | None, variants: Sequence[str]) -> dict:
    """``synthesize`` (T with the KV cache and auto step threads + D·S·E·F per frame) from 1 given
    frame to ``frames`` frames, per variant of the autoencoder's precision / layout / overlap,
    interleaved within each pass: frames/s, the autoencoder's share of the wall time (its calls'
    time / total; with the overlap its calls run beside T's), the time per frame in T's forward
    calls and in the autoencoder's calls, the PSNR of each variant's frames against fp32's (same
    tokens), and what the step threads chose."""
    ae_cfg = build(AutoencoderConfig, {**read_yaml(params)["autoencoder"]["model"],
                                       "context_frames": context}, "autoencoder.model")
    tp = load_section("transformer", params)
    model_params = tp.model if width == "demo" else dataclasses.replace(
        tp.model, n_layer=8, n_head=8, n_embd=512)
    t_cfg = model_config(model_params, tp.conditioning, DEMO_VOCAB, tp.model.num_frames or 16)
    torch.manual_seed(0)
    ae = CCVSAutoencoder(ae_cfg).eval()
    trained = ""
    if autoencoder:  # trained weights (a c = 0 checkpoint keeps its own config: no F then)
        cfg, state, _ = load_model(autoencoder)
        ae = CCVSAutoencoder(AutoencoderConfig(**cfg)).eval()
        ae.load_state_dict(state)
        trained = f", trained {Path(autoencoder).name}"
    model = CCVSTransformer(t_cfg).eval()
    size = t_cfg.frame_height * ae.config.downsampling
    gen = torch.Generator().manual_seed(1)
    start = torch.rand(1, 1, 3, size, size, generator=gen) * 2 - 1
    controls = random_controls(t_cfg, 1, frames, gen)
    if t_cfg.end_frame:
        controls = TokenControls(**{**vars(controls), "end_time": frames - 1})
    nets, timers = {}, {}
    for name in variants:
        net = copy.deepcopy(ae)
        if E2E_VARIANTS[name][0]:
            net = net.to(memory_format=torch.channels_last)
        timers[name], nets[name] = CallTimer(net, ("decode_tokens", "encode")), net
    t_timer = CallTimer(model, ("forward",))
    total = {v: [] for v in variants}
    ae_sec = {v: [] for v in variants}
    t_sec = {v: [] for v in variants}
    chose: dict[str, list[str]] = {v: [] for v in variants}
    out = {}
    for i in range(passes):
        for name in variants[i % len(variants):] + variants[:i % len(variants)]:
            fields = dict(E2E_VARIANTS[name][1])
            if name == "default":
                fields["autoencoder_precision"] = "bf16" if bf16_pays(torch.device("cpu")) \
                    else "fp32"
            cfg = SamplerConfig(top_k=100, **fields)
            tuner = StepThreads()
            timers[name].seconds = t_timer.seconds = 0.0
            t0 = time.perf_counter()
            out[name] = synthesize(nets[name], model, start, frames, controls, cfg,
                                   samples=samples, threads=tuner).frames
            chose[name].append("; ".join(tuner.summary()))
            total[name].append(time.perf_counter() - t0)
            ae_sec[name].append(timers[name].seconds)
            t_sec[name].append(t_timer.seconds)
    new = (frames - 1) * samples
    rows = []
    for name in variants:
        mid = sorted(range(passes), key=lambda j: total[name][j])[passes // 2]  # the median pass
        sec, ae_s = total[name][mid], ae_sec[name][mid]
        rows.append({"variant": name, "fps": new / sec, "seconds": sec,
                     "ae_share": ae_s / sec, "ae_ms": 1e3 * ae_s / (frames - 1),
                     "t_ms": 1e3 * t_sec[name][mid] / (frames - 1),
                     "psnr": psnr(out[name], out["fp32"]) if "fp32" in out else float("nan"),
                     "steps": chose[name][mid]})
    return {"rows": rows, "size": size, "c": ae.config.context_frames if ae.has_flow else 0,
            "T": f"{t_cfg.n_layer}L × {t_cfg.n_embd}", "samples": samples, "frames": frames,
            "trained": trained, "passes": passes}


def ae_frame(params: str, context: int, batch: int, threads: int, repeats: int,
             autoencoder: str | None) -> dict[str, float]:
    """One synthesized frame's D·S·E·F alone (``decode_tokens`` with c context frames, then
    ``encode`` of the decoded frame for the next one), per variant (fp32, fp32+cl, bf16+cl) on
    ``threads`` threads, interleaved ``repeats`` times; median ms per frame."""
    ae_cfg = build(AutoencoderConfig, {**read_yaml(params)["autoencoder"]["model"],
                                       "context_frames": context}, "autoencoder.model")
    torch.manual_seed(0)
    ae = CCVSAutoencoder(ae_cfg).eval()
    if autoencoder:
        cfg, state, _ = load_model(autoencoder)
        ae = CCVSAutoencoder(AutoencoderConfig(**cfg)).eval()
        ae.load_state_dict(state)
    size = 8 * ae.config.downsampling
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(batch, context, 3, size, size, generator=gen) * 2 - 1
    codes = torch.randint(ae.config.codebook_size, (batch, 8, 8), generator=gen)
    nets = {"fp32": ae, "fp32+cl": copy.deepcopy(ae).to(memory_format=torch.channels_last)}
    nets["bf16+cl"] = nets["fp32+cl"]
    times: dict[str, list[float]] = {v: [] for v in ("fp32", "fp32+cl", "bf16+cl")}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            context_feats = {v: nets[v].encode_context(frames) if ae.has_flow else None
                             for v in times}
            for i in range(repeats + 2):
                for v in times:
                    with torch.autocast("cpu", torch.bfloat16, enabled=v.startswith("bf16")):
                        t0 = time.perf_counter()
                        x = nets[v].decode_tokens(codes, context_feats[v]).x_hat
                        if ae.has_flow:
                            nets[v].encode(x)
                        if i >= 2:  # two warm-up rounds
                            times[v].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return {v: 1e3 * statistics.median(t) for v, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="", help="also write the markdown tables here")
    parser.add_argument("--threads", type=int, default=2, help="torch's thread budget")
    parser.add_argument("--passes", type=int, default=3, help="interleaved passes (median)")
    parser.add_argument("--quick", action="store_true", help="fewer tokens and passes (smoke)")
    parser.add_argument("--parts", default="tokens,threads,ae,e2e",
                        help="comma list of: tokens (ceiling + per-token KV cache vs recompute), "
                             "threads (whole runs per step-thread setting and weights), ae (one "
                             "frame's D·S·E·F per precision and thread count), e2e")
    parser.add_argument("--large-only", action="store_true",
                        help="tokens / threads: only the 8 × 512 rows")
    parser.add_argument("--weights", default="fp32,int8,bf16",
                        help="threads part: T's weights precisions to run")
    parser.add_argument("--frames", type=int, default=8,
                        help="threads part: frames per whole run (1 given)")
    parser.add_argument("--e2e-frames", type=int, default=16, help="e2e: output frames (1 given)")
    parser.add_argument("--context-frames", type=int, default=2,
                        help="e2e: c (≥ 1: F on; the demo autoencoder anchors its first frame: ≥ 2)")
    parser.add_argument("--autoencoder", default="",
                        help="e2e: a trained models/autoencoder.pt (default: random init)")
    parser.add_argument("--e2e-variants", default=",".join(E2E_VARIANTS),
                        help=f"e2e: comma list of {', '.join(E2E_VARIANTS)}")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    torch.set_num_threads(args.threads)
    tp = load_section("transformer", args.params)
    demo_cfg = model_config(tp.model, tp.conditioning, DEMO_VOCAB, tp.model.num_frames or 16)
    q = args.quick
    passes = 1 if q else args.passes
    load = os.getloadavg()
    wall = time.perf_counter()
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at start; "
        f"random-init weights, top-k = 100.",
        "",
    ]
    print("\n".join(lines), flush=True)  # the load at start, before the first long part

    def emit(*new: str) -> None:
        lines.extend(new)
        for line in new:
            print(line, flush=True)

    if "tokens" in parts:
        token_table(args, demo_cfg, q, emit)
    if "threads" in parts:
        cfgs = [("demo", demo_cfg, 1), ("large", LARGE, 1), ("large", LARGE, 4)]
        if args.large_only:
            cfgs = [c for c in cfgs if c[0] == "large"]
        emit("", f"Whole runs (`sample_tokens`, KV cache, 1 given frame → {args.frames} frames, "
             f"a fresh `StepThreads` per run as in `ccvs synthesize`), {passes} interleaved "
             f"passes: tokens/s per step-thread setting; auto vs the best fixed setting and vs "
             f"1-thread steps (the old default) as the median of per-pass ratios "
             f"(fixed / auto time, ≥ 0.90 is the target vs best).", "",
             "| model | batch | weights | 1-thread steps tok/s | all-thread steps tok/s | "
             "auto tok/s | auto / best fixed (passes) | auto / 1-thread | auto chose | tokens "
             "≠ fp32 |", "|" + "---|" * 10)
        for name, cfg, batch in cfgs:
            torch.manual_seed(0)
            model = CCVSTransformer(cfg).eval()
            for r in whole_runs(model, batch, args.frames, passes,
                                args.weights.split(",")):
                rate = r["rate"]
                emit(f"| {name}: {cfg.n_layer}L × {cfg.n_embd}, q = {cfg.frame_vocab} | {batch} | "
                     f"{r['weights']} | {rate['1-thread steps']:.1f} | "
                     f"{rate['all-thread steps']:.1f} | {rate['auto']:.1f} | "
                     f"**{r['vs_best']:.2f}** ({', '.join(r['passes'])}) | {r['vs_one']:.2f}× | "
                     f"{'; '.join(r['chose'])} | {r['diff']} |")
    if "ae" in parts:
        emit("", f"One synthesized frame's D·S·E·F alone (D with F over c = {args.context_frames} "
             f"context frames, then E of the decoded frame), {10 if q else 40} interleaved "
             f"repeats, median ms per frame; cl = channels-last conv weights.", "",
             "| batch | threads | fp32 | fp32+cl | bf16+cl | fp32 / fp32+cl | fp32+cl / bf16+cl |",
             "|" + "---|" * 7)
        for batch in (1, 4):
            for threads in (1, 2):
                r = ae_frame(args.params, args.context_frames, batch, threads, 10 if q else 40,
                             args.autoencoder or None)
                emit(f"| {batch} | {threads} | {r['fp32']:.1f} | {r['fp32+cl']:.1f} | "
                     f"{r['bf16+cl']:.1f} | {r['fp32'] / r['fp32+cl']:.2f}× | "
                     f"{r['fp32+cl'] / r['bf16+cl']:.2f}× |")
    if "e2e" in parts:
        variants = args.e2e_variants.split(",")
        emit("", f"End to end (`synthesize`: T with the KV cache and auto step threads + "
             f"D·S·E·F per frame), 1 given frame → {args.e2e_frames} frames, {passes} "
             f"interleaved passes (the median pass). Variants: the autoencoder in fp32 or bf16 "
             f"autocast, cl = channels-last conv weights, overlap = D·S·E·F on a worker thread "
             f"while T samples the next frame. AE share = the autoencoder's calls / wall "
             f"time (target: below T's, i.e. < 50 %); PSNR = the variant's frames against "
             f"fp32's (same tokens).", "",
             "| T | autoencoder | samples | variant | frames/s | s per run | T ms / frame | "
             "AE ms / frame | AE share | PSNR vs fp32 | T's steps on |", "|" + "---|" * 11)
        for width in ("demo", "large"):
            for samples in (1, 4):
                r = end_to_end(args.params, width, samples, args.e2e_frames,
                               args.context_frames, passes,
                               args.autoencoder or None, variants)
                for row in r["rows"]:
                    emit(f"| {r['T']} | {r['size']}×{r['size']}, c = {r['c']}{r['trained']} | "
                         f"{samples} | {row['variant']} | {row['fps']:.2f} | "
                         f"{row['seconds']:.1f} | {row['t_ms']:.0f} | {row['ae_ms']:.0f} | "
                         f"{row['ae_share']:.0%} | {row['psnr']:.1f} dB | {row['steps']} |")
    end = os.getloadavg()
    emit("", f"Total bench time {time.perf_counter() - wall:.0f} s, load average "
         f"{end[0]:.1f} / {end[1]:.1f} / {end[2]:.1f} at the end.")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
