"""The doubly autoregressive sampler: T completes the token sequence, D·S·E·F turns it into frames
(Fig. 1, §3.1 top-k sampling, §3.3 "Inference", App. D context, App. E point-to-point / long-term).

Tokens (``sample_tokens``, §3.3 "Inference"): T completes the sequence one frame code at a time.
Annotation tokens — video level (class label, end frame) at the start, then frame t's state,
audio and layout before its codes, in ``SequenceLayout`` order — are inserted, never sampled; T's
head scores the q frame codes only. Each code is drawn among the k highest scores of ô, weighted
by their softmax (§3.1, "drawn randomly from the top-k scores"); k = 1 is the argmax. Randomness is
per sample: row i draws one uniform per sampled token from its own ``torch.Generator(seeds[i])``
and picks by inverse CDF over its top-k probabilities, so a row's tokens do not depend on the
other rows of the batch.

Sliding window (§3.3): T holds N frames. Frame t is sampled in the window of frames
s … t with s = max(0, t − N + 1); when s moves, the oldest frame is dropped and the whole window is
re-encoded — positions are absolute (the decomposed embedding's timestep term belongs to the window
slot), so shifting a KV cache would keep keys computed at the wrong positions. The end frame's
gap embedding (App. E) gets end_gap = end_time − s, which shrinks as the window slides.

KV cache (incremental decoding): within a window each new token is fed alone with the keys/values
of the earlier positions cached; ``SamplerConfig(kv_cache=False)`` recomputes the whole prefix per
token instead. Both compute the same logits (up to float rounding) and so pick the same tokens.
``SamplerConfig(weights="int8" | "bf16")`` samples with reduced-precision Linear weights (opt-in;
a cached token step is bound by reading the weights, see ``CCVSTransformer.low_precision``).

Frames (``synthesize``, Fig. 1): the m given frames are tokenized by Q(E(·)) and seed the context
buffer with E(x_t); each new frame's codes are decoded as soon as they arrive,
x̂_t = D(U(codes_t), F over E(x_{t−c} … x_{t−1})), and S (shift-and-add) pushes E(x̂_t) into the
buffer of the last c frames (App. D; App. E's long-term study uses c up to 16).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal, NamedTuple

import torch
from torch import nn

from ccvs_models.autoencoder import CCVSAutoencoder, ContextBuffer, context_indices
from ccvs_models.sequence_layout import SequenceLayout, TokenKind
from ccvs_models.step_threads import StepThreads, ThreadTrial, restored_threads
from ccvs_models.transformer import CCVSTransformer


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """How T picks each frame code."""

    top_k: int = 100  # §3.1 top-k sampling; 1 = greedy (argmax, no randomness); > q acts as q
    temperature: float = 1.0  # logits / temperature before top-k (not in the paper)
    kv_cache: bool = True  # incremental decoding (App. A); False = recompute the prefix per token
    step_threads: int | Literal["auto"] = "auto"  # CPU threads for the one-token steps of the
    # KV-cache path: "auto" measures (``ccvs_models.step_threads.StepThreads``: the first steps
    # of a run are timed on 1, 2, … threads, the fastest is kept; it does not change the tokens),
    # n ≥ 1 sets n, 0 leaves torch's setting. Neither count wins everywhere: on an idle 2-core
    # CPU 2 threads ran the 8 layers × 512 T 1.8× faster; on a busy one a 1-token step of the demo
    # T took 70 ms on 2 threads and 3 on 1 (BENCHMARKS.md "synthesis"). torch's thread count is
    # process-wide: it is set for those steps only and restored before window rebuilds, on_frame
    # callbacks and on return.
    weights: Literal["fp32", "bf16", "int8"] = "fp32"  # precision of T's Linear weights while
    # sampling (``CCVSTransformer.low_precision``: a copy made per call; embeddings, LayerNorms,
    # attention and the KV cache stay fp32). A cached token step reads every weight once, so its
    # time is the weights' bytes over the memory bandwidth: "int8" (weight-only, per-channel
    # scales, bf16 activations) reads a quarter of fp32's bytes. Opt-in: the sampled tokens are
    # no longer those of the fp32 model (bench/synthesis.py counts how many differ). Applies to
    # the cached and the uncached sampler alike, so the two compare at the same precision.

    autoencoder_precision: Literal["fp32", "bf16"] = "fp32"  # ``synthesize``: D·S·E·F of each
    # new frame under bf16 autocast ("bf16") or in fp32. The given frames are tokenized in fp32
    # either way, so T's tokens do not change; the frames do, slightly (bench/synthesis.py
    # measures the PSNR between the two). Pays on CPUs with bf16 matrix units (AMX / AVX-512-BF16)
    # and with channels-last conv weights.
    overlap_decoding: bool | Literal["auto"] = False  # ``synthesize``: D·S·E·F of frame t on a
    # worker thread while T samples frame t + 1 (the same frames; on_frame is then called from
    # that thread). "auto": when T's one-token steps run on fewer threads than torch's budget
    # (a core is free, or the CPU is busy and a second thread gets a second share of it). Off by
    # default: on a busy 2-core CPU it measured no faster than decoding inline on T's step count
    # (BENCHMARKS.md "synthesis"); not yet measured on an idle one.

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"SamplerConfig: top_k must be ≥ 1, got {self.top_k}")
        if self.step_threads != "auto" and not (isinstance(self.step_threads, int)
                                                and self.step_threads >= 0):
            raise ValueError(f"SamplerConfig: step_threads must be 'auto' or an int ≥ 0, "
                             f"got {self.step_threads!r}")
        if self.weights not in ("fp32", "bf16", "int8"):
            raise ValueError(f"SamplerConfig: weights must be 'fp32', 'bf16' or 'int8', "
                             f"got {self.weights!r}")
        if not self.temperature > 0:
            raise ValueError(f"SamplerConfig: temperature must be > 0, got {self.temperature}")
        if self.overlap_decoding not in (True, False, "auto"):
            raise ValueError(f"SamplerConfig: overlap_decoding must be True, False or 'auto', "
                             f"got {self.overlap_decoding!r}")
        if self.autoencoder_precision not in ("fp32", "bf16"):
            raise ValueError(f"SamplerConfig: autoencoder_precision must be 'fp32' or 'bf16', "
                             f"got {self.autoencoder_precision!r}")


@dataclasses.dataclass(frozen=True)
class TokenControls:
    """Annotation tokens for the WHOLE output video of n frames; None = not given → that kind's
    null id (SequenceLayout.null_id) wherever the model has that kind (trained with conditioning
    dropout). A control given for a kind the model does not have -> ValueError naming it."""

    label: torch.Tensor | None = None  # (B,) class ids
    end_frame: torch.Tensor | None = None  # (B, h, w) frame codes of the end frame (App. E)
    end_time: int | None = None  # its timestep in the output video (None = n − 1)
    state: torch.Tensor | None = None  # (B, n, 2) state bins (x, y)
    audio: torch.Tensor | None = None  # (B, n, l_a) sound-VQ codes
    layout: torch.Tensor | None = None  # (B, n, l_l) layout-VQ codes

    def repeat(self, samples: int) -> TokenControls:
        """Each row repeated ``samples`` times in a row (row b·S + s is sample s of input b)."""
        def rep(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.repeat_interleave(samples, dim=0)
        return TokenControls(label=rep(self.label), end_frame=rep(self.end_frame),
                             end_time=self.end_time, state=rep(self.state),
                             audio=rep(self.audio), layout=rep(self.layout))


class SynthesisOutput(NamedTuple):
    frames: torch.Tensor  # (B, S, n, 3, H, W) in [−1, 1]; frames t < m are the given start frames
    tokens: torch.Tensor  # (B, S, n, h, w) long


# ----------------------------------------------------------------------------- inputs


class _Plan(NamedTuple):
    """Validated inputs of one sampling run."""

    video: torch.Tensor  # (B, l_v) video-level tokens (label, end frame), nulls where not given
    annotations: torch.Tensor  # (B, n, l_f) frame-level tokens (state, audio, layout)
    end_time: int  # timestep of the end frame (used only when the model has one)


def _fail(msg: str) -> None:
    raise ValueError(f"sample_tokens: {msg}")


def _check_ids(name: str, x: torch.Tensor, high: int) -> None:
    if x.is_floating_point() or x.is_complex():
        _fail(f"{name} must hold integer ids, got dtype {x.dtype}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) > high):
        _fail(f"{name} ids must be in [0, {high}], got [{int(x.min())}, {int(x.max())}]")


def _plan(lay: SequenceLayout, start: torch.Tensor, n: int,
          controls: TokenControls | None) -> _Plan:
    """Check every input against the layout (one clear ValueError) and build the given tokens."""
    h, w, big_n = lay.frame_height, lay.frame_width, lay.num_frames
    if start.dim() != 4 or tuple(start.shape[2:]) != (h, w):
        _fail(f"start must be (B, m, {h}, {w}) frame codes, got {tuple(start.shape)}")
    b, m = start.shape[:2]
    if b < 1:
        _fail("start has an empty batch")
    _check_ids("start frame", start, lay.frame_vocab - 1)
    if not isinstance(n, int) or n < max(m, 1):
        _fail(f"num_frames ({n}) must be ≥ the {m} given start frames and ≥ 1")
    if m == 0 and lay.video_len + lay.frame_annotation_len == 0:
        _fail("m = 0 start frames needs a token before the first frame code (a class label, "
              "an end frame or frame-level annotations); this model has none")
    c = controls or TokenControls()
    dev = start.device

    # video level: [label] [end frame]
    video: list[torch.Tensor] = []
    if c.label is not None and lay.num_classes == 0:
        _fail("a class label was given but the model has no label tokens (num_classes = 0)")
    if lay.num_classes:
        label = c.label
        if label is None:
            label = torch.full((b,), lay.null_id(TokenKind.LABEL), dtype=torch.long)
        if tuple(label.shape) != (b,):
            _fail(f"label must be ({b},), got {tuple(label.shape)}")
        _check_ids("label", label, lay.null_id(TokenKind.LABEL))
        video.append(label.to(dev).long()[:, None])
    if (c.end_frame is not None or c.end_time is not None) and not lay.end_frame:
        _fail("an end frame / end_time was given but the model has no end frame (end_frame=False)")
    end_time = n - 1 if c.end_time is None else c.end_time
    if lay.end_frame:
        end = c.end_frame
        if end is None:
            end = torch.full((b, h, w), lay.null_id(TokenKind.END_FRAME), dtype=torch.long)
        if tuple(end.shape) != (b, h, w):
            _fail(f"end_frame must be ({b}, {h}, {w}) frame codes, got {tuple(end.shape)}")
        _check_ids("end_frame", end, lay.null_id(TokenKind.END_FRAME))
        video.append(end.to(dev).long().flatten(1))
        last_start = max(0, n - big_n)  # the last window's first frame
        if not isinstance(end_time, int) or end_time < last_start:
            _fail(f"end_time {end_time} lies before the first frame ({last_start}) of the last "
                  f"window of N = {big_n} frames: the window would slide past the end frame "
                  f"(end_gap < 0); use end_time ≥ num_frames − N")

    # frame level: [state (2)] [audio (l_a)] [layout (l_l)], for all n frames
    per_frame: list[torch.Tensor] = []
    for name, x, count, kind in (("state", c.state, lay.state_tokens, TokenKind.STATE),
                                 ("audio", c.audio, lay.audio_tokens, TokenKind.AUDIO),
                                 ("layout", c.layout, lay.layout_tokens, TokenKind.LAYOUT)):
        if count == 0:
            if x is not None:
                _fail(f"{name} tokens were given but the model has no {name} tokens")
            continue
        if x is None:
            x = torch.full((b, n, count), lay.null_id(kind), dtype=torch.long)
        if tuple(x.shape) != (b, n, count):
            _fail(f"{name} must be (B={b}, num_frames={n}, {count}), got {tuple(x.shape)}")
        _check_ids(name, x, lay.null_id(kind))
        per_frame.append(x.to(dev).long())
    annotations = (torch.cat(per_frame, dim=2) if per_frame
                   else torch.zeros(b, n, 0, dtype=torch.long, device=dev))
    video_tokens = (torch.cat(video, dim=1) if video
                    else torch.zeros(b, 0, dtype=torch.long, device=dev))
    return _Plan(video=video_tokens, annotations=annotations, end_time=end_time)


def _seeds(seeds: Sequence[int] | None, rows: int) -> list[int]:
    if seeds is None:
        return list(range(rows))
    seeds = [int(s) for s in seeds]
    if len(seeds) != rows:
        raise ValueError(f"sampler: {len(seeds)} seeds for {rows} batch rows (one per row)")
    return seeds


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the call, the caller's train/eval flags restored after."""
    flags = [[(m, m.training) for m in mod.modules()] for mod in modules]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for group in flags:
            for m, training in group:
                m.training = training


# ----------------------------------------------------------------------------- tokens


def _step_trial(transformer: CCVSTransformer, config: SamplerConfig, rows: int,
                device: torch.device, threads: StepThreads | None) -> ThreadTrial | None:
    """Where ``step_threads="auto"`` measures the one-token steps (per model, precision and
    batch, under torch's current thread budget); None for a fixed count, no KV cache or not CPU."""
    if device.type != "cpu" or config.step_threads != "auto" or not config.kv_cache:
        return None
    return (threads if threads is not None else StepThreads()).trial(
        (transformer.config, config.weights, rows), torch.get_num_threads())


def _fixed_steps(config: SamplerConfig, device: torch.device) -> int:
    """The one-token steps' thread count when it is not measured (0 = torch's)."""
    if device.type != "cpu" or config.step_threads == "auto" or not config.kv_cache:
        return 0
    return config.step_threads


def _pick(logits: torch.Tensor, k: int, temperature: float,
          uniform: torch.Tensor | None) -> torch.Tensor:
    """logits (B, q) → (B,) ids: argmax (k = 1), else inverse CDF of uniform (B,) over the
    softmax of the k highest logits / temperature (§3.1). Row-wise only: rows never mix."""
    if k == 1 or uniform is None:
        return logits.argmax(dim=-1)
    top, idx = torch.topk(logits.float() / temperature, k, dim=-1)  # (B, k), descending
    cdf = torch.softmax(top, dim=-1).cumsum(dim=-1)
    choice = (cdf < uniform[:, None] * cdf[:, -1:]).sum(dim=-1).clamp(max=k - 1)
    return idx.gather(1, choice[:, None]).squeeze(1)


@torch.no_grad()
def sample_tokens(transformer: CCVSTransformer, start: torch.Tensor, num_frames: int,
                  controls: TokenControls | None = None, config: SamplerConfig = SamplerConfig(),
                  seeds: Sequence[int] | None = None,
                  on_frame: Callable[[int, torch.Tensor], None] | None = None,
                  threads: StepThreads | None = None) -> torch.Tensor:
    """start (B, m, h, w) frame codes of the m given frames (m ≥ 0; m = 0 only when the sequence
    has a token before the first frame code) → (B, num_frames, h, w) codes, the first m = start.
    seeds: one per batch row (sample i's draws depend only on seeds[i]); None = 0..B−1.
    on_frame(t, codes (B, h, w)) is called once per NEW frame t ≥ m as soon as its last code is
    sampled (so the caller can decode it while T goes on). Sliding window past N frames (§3.3).
    threads: where ``step_threads="auto"`` keeps its measurements (one ``StepThreads`` shared by
    several calls measures once per model shape and batch); None = a new one for this call."""
    lay = transformer.layout
    plan = _plan(lay, start, num_frames, controls)
    b, m = start.shape[:2]
    seeds = _seeds(seeds, b)
    dev = start.device
    n, big_n, hw = num_frames, lay.num_frames, lay.tokens_per_frame
    lv, lf, stride = lay.video_len, lay.frame_annotation_len, lay.frame_stride
    k = min(config.top_k, lay.frame_vocab)

    codes = torch.empty(b, n, hw, dtype=torch.long, device=dev)
    codes[:, :m] = start.to(dev).long().flatten(2)
    uniforms = None
    if k > 1:  # one uniform per sampled token, from each row's own generator
        count = (n - m) * hw
        uniforms = torch.stack([torch.rand(count, generator=torch.Generator().manual_seed(s))
                                for s in seeds]).to(dev)
    buf = torch.empty(b, lay.length, dtype=torch.long, device=dev)  # the window's sequence
    buf[:, :lv] = plan.video
    cache = transformer.new_kv_cache(b) if config.kv_cache else None
    # the small steps' thread count: fixed, or measured per (model, precision, batch)
    fixed, trial = _fixed_steps(config, dev), _step_trial(transformer, config, b, dev, threads)
    window, gap, draw = -1, None, 0
    model = transformer.low_precision(config.weights)  # T itself for fp32
    with _eval_mode(transformer):
        for t in range(m, n):
            s = max(0, t - big_n + 1)
            if s != window:  # a new window: frames s … t−1 in full, the cache restarts
                window = s
                body = torch.cat([plan.annotations[:, s:t], codes[:, s:t]], dim=2)
                buf[:, lv:lv + (t - s) * stride] = body.flatten(1)
                if lay.end_frame:
                    gap = torch.full((b,), plan.end_time - s, dtype=torch.long, device=dev)
                if cache is not None:
                    cache.crop(0)
            first = lv + (t - s) * stride + lf  # position of frame t's first code
            buf[:, first - lf:first] = plan.annotations[:, t]
            # with the cache, the step thread count from the first small step (after a
            # window's prefill, which keeps torch's threads); restored before on_frame
            small_from = 0 if cache is None or cache.length > 0 else 1
            with restored_threads():
                for j in range(hw):
                    p = first + j  # the position to sample, scored by ô_{p−1}
                    timed = trial is not None and j >= small_from
                    if cache is not None and j >= small_from:
                        count = trial.threads() if trial is not None else fixed
                        if count > 0 and count != torch.get_num_threads():
                            torch.set_num_threads(count)
                    t0 = trial.clock() if timed else 0.0
                    fed = p - (cache.length if cache is not None else 0)
                    if cache is None:
                        out = model(buf[:, :p], end_gap=gap, last_only=True)
                    else:  # feed what the cache lacks: a prefill, 1 + l_f tokens or 1 token
                        out = model(buf[:, cache.length:p], end_gap=gap, kv_cache=cache,
                                    start_pos=cache.length, last_only=True)
                    u = None if uniforms is None else uniforms[:, draw]
                    tok = _pick(out.logits[:, -1], k, config.temperature, u)
                    draw += 1
                    buf[:, p] = tok
                    codes[:, t, j] = tok
                    if timed and fed == 1:  # measured: one-token steps only (alike in cost)
                        trial.record(count, trial.clock() - t0)
            if on_frame is not None:
                on_frame(t, codes[:, t].view(b, lay.frame_height, lay.frame_width))
    return codes.view(b, n, lay.frame_height, lay.frame_width)


# ----------------------------------------------------------------------------- frames


class _FrameDecoding:
    """Runs ``decode(t, codes)`` (D·S·E·F of one new frame) for each new frame in order, under the
    configured precision, on the thread count of T's one-token steps (``count()``: a 64×64
    frame's convolutions are small ops too, and on a busy CPU 2 threads made a frame 7–50× slower
    than 1), either inline or on one worker thread while T samples the next frame
    (``overlap_decoding``; "auto" = when T's steps leave a core of torch's ``budget`` free,
    decided at the first frame). The worker decodes frames in the order they arrive (frame t
    reads the context pushed by frame t − 1) on the thread count the inline path would use (T's
    step count, else the submitting thread's), so both give the same frames. Leaving the block waits for every frame and re-raises a decoding error; a
    failed frame stops T at its next frame."""

    def __init__(self, decode: Callable[[int, torch.Tensor], None], config: SamplerConfig,
                 device: torch.device, count: Callable[[], int], budget: int) -> None:
        self.decode, self.device, self.count, self.budget = decode, device, count, budget
        self.bf16 = config.autoencoder_precision == "bf16"
        self.overlap = config.overlap_decoding  # "auto" until the first frame
        self.pool: ThreadPoolExecutor | None = None
        self.pending: list[Future] = []
        self.failed = False  # a frame failed: the frames queued after it are not decoded

    def _run(self, t: int, codes: torch.Tensor) -> None:
        if self.failed:
            return
        try:
            with torch.no_grad(), torch.autocast(self.device.type, torch.bfloat16,
                                                 enabled=self.bf16):
                self.decode(t, codes)
        except BaseException:
            self.failed = True
            raise

    def submit(self, t: int, codes: torch.Tensor) -> None:
        if self.overlap == "auto":
            self.overlap = self.device.type == "cpu" and 0 < self.count() < self.budget
        if self.overlap and self.pool is None:
            self.pool = ThreadPoolExecutor(1, "ccvs-decode")
        if self.pool is None:
            with restored_threads():
                if self.count() > 0:
                    torch.set_num_threads(self.count())
                self._run(t, codes)
            return
        for done in [f for f in self.pending if f.done()]:
            done.result()  # a failed frame stops T now, not after the last frame
            self.pending.remove(done)
        # the worker thread's OpenMP team starts from the process's initial thread count, not
        # this thread's: decode on the count the inline path would use, so the frames are the same
        threads = self.count() or torch.get_num_threads()
        self.pending.append(self.pool.submit(self._run_on, threads, t, codes.clone()))

    def _run_on(self, threads: int, t: int, codes: torch.Tensor) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self._run(t, codes)

    def __enter__(self) -> _FrameDecoding:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is None:
            return
        try:
            if exc[0] is None:
                for f in self.pending:
                    f.result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _check_models(autoencoder: CCVSAutoencoder, transformer: CCVSTransformer,
                  start_frames: torch.Tensor) -> None:
    acfg, lay = autoencoder.config, transformer.layout
    if start_frames.dim() != 5 or start_frames.shape[2] != acfg.in_channels:
        raise ValueError(f"synthesize: start_frames must be (B, m, {acfg.in_channels}, H, W), "
                         f"got {tuple(start_frames.shape)}")
    hh, ww = start_frames.shape[-2:]
    if hh % acfg.downsampling or ww % acfg.downsampling:
        raise ValueError(f"synthesize: frame size {hh}×{ww} is not divisible by 2^K = "
                         f"{acfg.downsampling}")
    if (hh // acfg.downsampling, ww // acfg.downsampling) != (lay.frame_height, lay.frame_width):
        raise ValueError(f"synthesize: {hh}×{ww} frames give {hh // acfg.downsampling}×"
                         f"{ww // acfg.downsampling} tokens, T expects {lay.frame_height}×"
                         f"{lay.frame_width} (frames of {lay.frame_height * acfg.downsampling}×"
                         f"{lay.frame_width * acfg.downsampling})")
    if acfg.codebook_size != lay.frame_vocab:
        raise ValueError(f"synthesize: the autoencoder's codebook has {acfg.codebook_size} codes, "
                         f"T's frame vocabulary {lay.frame_vocab}: not a matching pair")


@torch.no_grad()
def synthesize(autoencoder: CCVSAutoencoder, transformer: CCVSTransformer,
               start_frames: torch.Tensor, num_frames: int,
               controls: TokenControls | None = None, config: SamplerConfig = SamplerConfig(),
               samples: int = 1, seeds: Sequence[int] | None = None,
               context_frames: int | None = None,
               on_frame: Callable[[int], None] | None = None,
               threads: StepThreads | None = None) -> SynthesisOutput:
    """Fig. 1 doubly autoregressive synthesis: start_frames (B, m, 3, H, W) in [−1, 1], tokenized
    by Q(E(·)) (m = 0, unconditional: T samples frame 0 too — it needs a token before the first
    code, a class or an end frame — and D decodes it without context); S = ``samples`` per input in ONE batch of B·S rows
    (controls repeated S times; seeds: B·S of them, default 0..B·S−1); each new frame's codes are
    decoded by D as soon as they arrive, with F over E of the last c frames (c = context_frames,
    default autoencoder.config.context_frames, up to 16; App. E; with the model's
    ``context_anchor`` a the first a frames stay in the context), and the decoded frame is pushed
    into the context buffer (shift-and-add S). on_frame(t) after frame t is decoded (progress)."""
    _check_models(autoencoder, transformer, start_frames)
    if samples < 1:
        raise ValueError(f"synthesize: samples must be ≥ 1, got {samples}")
    c = autoencoder.config.context_frames if context_frames is None else context_frames
    problem = autoencoder.config.context_problem(c)
    if problem:
        raise ValueError(f"synthesize: {problem}")
    use_context = autoencoder.has_flow and c > 0
    b, m = start_frames.shape[:2]
    rows = b * samples
    seeds = _seeds(seeds, rows)
    dev = start_frames.device
    hh, ww = start_frames.shape[-2:]

    with _eval_mode(autoencoder, transformer):
        x0 = start_frames.float()
        h, w = transformer.layout.frame_height, transformer.layout.frame_width
        start_codes = (autoencoder.tokenize(x0.flatten(0, 1)).view(b, m, h, w) if m
                       else torch.zeros(b, 0, h, w, dtype=torch.long, device=dev))
        frames = torch.empty(rows, num_frames, x0.shape[2], hh, ww, device=dev)
        frames[:, :m] = x0.repeat_interleave(samples, dim=0)
        # S: the context buffer holds E's features of the frames the model's context rule
        # (``ContextBuffer``: the last c, or the anchored first ones plus the latest) will read
        buffer = (ContextBuffer(c, min(autoencoder.config.context_anchor, c)) if use_context
                  else None)
        if buffer is not None and m:
            read = context_indices(m, c, buffer.anchor)  # given frames any later context reads
            feats = autoencoder.encode(x0[:, read].flatten(0, 1)).features if read else []
            per = [f.view(b, len(read), *f.shape[1:]).repeat_interleave(samples, dim=0)
                   for f in feats]
            for i in range(m):
                buffer.push([f[:, read.index(i)] for f in per] if i in read else None)

        def decode(t: int, codes: torch.Tensor) -> None:
            context = buffer.context() if buffer is not None else None
            x_hat = autoencoder.decode_tokens(codes, context).x_hat
            frames[:, t] = x_hat
            if buffer is not None and t < num_frames - 1:  # shift-and-add (the last feeds none)
                buffer.push(autoencoder.encode(x_hat).features if buffer.reads(t) else None)
            if on_frame is not None:
                on_frame(t)

        tuner = threads if threads is not None else StepThreads()  # shared with sample_tokens
        trial = _step_trial(transformer, config, rows, dev, tuner)
        fixed = _fixed_steps(config, dev)

        def count() -> int:  # T's step count (1 while T still measures), 0 = torch's
            return fixed if trial is None else trial.chosen or 1

        with _FrameDecoding(decode, config, dev, count, torch.get_num_threads()) as decoding:
            tokens = sample_tokens(transformer, start_codes.repeat_interleave(samples, dim=0),
                                   num_frames, controls.repeat(samples) if controls else None,
                                   config, seeds, decoding.submit, tuner)
    return SynthesisOutput(frames=frames.view(b, samples, *frames.shape[1:]),
                           tokens=tokens.view(b, samples, *tokens.shape[1:]))
