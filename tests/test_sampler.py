"""The doubly autoregressive sampler (ccvs_models/sampler.py): KV cache = no cache (also when the
window slides), greedy = step-by-step argmax, per-row seeds, annotations inserted verbatim, top-k,
the end-frame gap of App. E, and synthesize()'s D·S·E·F loop (start frames, S samples, context)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from ccvs_models.autoencoder import AutoencoderConfig, CCVSAutoencoder
from ccvs_models.sampler import SamplerConfig, TokenControls, sample_tokens, synthesize
from ccvs_models.sequence_layout import TokenKind
from ccvs_models.step_threads import StepThreads
from ccvs_models.transformer import CCVSTransformer
from ccvs_models.transformer_config import TransformerConfig

torch.set_num_threads(1)

Q, H, W, N = 11, 2, 3, 3


def config(**overrides) -> TransformerConfig:
    """Every annotation kind; N = 3 frames of 2×3 codes."""
    fields = dict(frame_vocab=Q, frame_height=H, frame_width=W, num_frames=N, state=True,
                  state_bins=5, audio_tokens_per_frame=2, audio_vocab=7,
                  layout_tokens_per_frame=1, layout_vocab=4, num_classes=3, end_frame=True,
                  max_end_gap=6, n_layer=2, n_head=2, n_embd=32)
    fields.update(overrides)
    return TransformerConfig(**fields)


def make(cfg: TransformerConfig | None = None, seed: int = 0) -> CCVSTransformer:
    torch.manual_seed(seed)
    model = CCVSTransformer(cfg or config()).eval()
    with torch.no_grad():  # spread the logits: random init gives near-ties
        model.head.weight.mul_(50)
    return model


def controls(b: int, n: int, seed: int = 3, end_time: int | None = None) -> TokenControls:
    g = torch.Generator().manual_seed(seed)
    return TokenControls(label=torch.randint(3, (b,), generator=g),
                         end_frame=torch.randint(Q, (b, H, W), generator=g), end_time=end_time,
                         state=torch.randint(5, (b, n, 2), generator=g),
                         audio=torch.randint(7, (b, n, 2), generator=g),
                         layout=torch.randint(4, (b, n, 1), generator=g))


def start_codes(b: int, m: int, seed: int = 5) -> torch.Tensor:
    return torch.randint(Q, (b, m, H, W), generator=torch.Generator().manual_seed(seed))


class Recorder:
    """Records every call of T: (tokens, start_pos, last logits)."""

    def __init__(self, model: CCVSTransformer) -> None:
        self.model, self.calls = model, []
        self.forward = model.forward

    def __enter__(self) -> Recorder:
        def rec(tokens, *args, **kwargs):
            out = self.forward(tokens, *args, **kwargs)
            self.calls.append((tokens.clone(), kwargs.get("start_pos", 0), out.logits[:, -1]))
            return out
        self.model.forward = rec
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward


# ----------------------------------------------------------------------------- tokens


@pytest.mark.parametrize("copy", [False, True, "inputs"])  # the copy path and the control
# inputs (state field, end frame, audio, label: random weights, they start at zero) read the cache's ids
@pytest.mark.parametrize("n", [3, 7])  # within the N = 3 window / sliding over 5 windows
def test_kv_cache_and_recompute_give_the_same_tokens(n, copy):
    inputs = copy == "inputs"
    model = make(config(prev_frame_input=bool(copy), state_field=inputs, end_frame_input=inputs,
                        audio_input=inputs, label_input=inputs))
    for module in model._control_inputs():
        for p in module.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    ctl = controls(2, n)
    out = {}
    for kv in (True, False):
        for threads in (0, 1):
            cfg = SamplerConfig(top_k=6, kv_cache=kv, step_threads=threads)
            out[kv, threads] = sample_tokens(model, start_codes(2, 1), n, ctl, cfg, seeds=[3, 4])
    first = out[True, 1]
    assert first.shape == (2, n, H, W)
    assert all(torch.equal(first, o) for o in out.values())


class ThreadClock:
    """A fake clock for StepThreads: each reading advances by cost[torch's thread count], so a
    step timed on c threads lasts cost[c] (readings come in start/stop pairs)."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.now = cost, 0.0

    def __call__(self) -> float:
        self.now += self.cost[torch.get_num_threads()] / 2
        return self.now


@pytest.mark.parametrize("cost, expected, measured", [
    ({1: 1.0, 2: 3.0}, 1, [1, 1, 2]),  # 2 threads: one step > 2 × 1 thread's, dropped
    ({1: 3.0, 2: 1.0}, 2, [1, 1, 2, 2])])
def test_auto_step_threads_measure_the_one_token_steps_and_keep_the_faster_count(cost, expected,
                                                                                measured):
    """The first one-token steps go to 1, then 2 threads; then every step uses the count
    with the faster (fake) timing; prefills, window rebuilds, on_frame and the caller keep 2."""
    model = make(config(n_embd=16))
    lay = model.layout
    seen = []  # (tokens fed, torch threads) per call of T
    model.register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].shape[1], torch.get_num_threads())))
    frame_threads = []
    tuner = StepThreads(rounds=1, block=2, clock=ThreadClock(cost))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        n = 7  # slides: 5 windows, 30 codes
        tokens = sample_tokens(model, start_codes(2, 1), n, controls(2, n),
                               SamplerConfig(top_k=4), None,
                               lambda t, codes: frame_threads.append(torch.get_num_threads()),
                               threads=tuner)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert after == 2 and frame_threads == [2] * (n - 1)  # never leaked
    assert tuner.trial((model.config, "fp32", 2), 2).chosen == expected
    one = [threads for fed, threads in seen if fed == 1]
    assert one[:len(measured)] == measured and set(one[len(measured):]) == {expected}
    assert all(threads == 2 for fed, threads in seen if fed > 1 + lay.frame_annotation_len)
    # a second call with the same tuner measures nothing again
    torch.set_num_threads(2)
    try:
        seen.clear()
        sample_tokens(model, start_codes(2, 1), 3, controls(2, 3), SamplerConfig(top_k=4),
                      threads=tuner)
    finally:
        torch.set_num_threads(before)
    assert {threads for fed, threads in seen if fed == 1} == {expected}
    # the thread count changes no token: the same samples as 1-thread steps
    assert torch.equal(tokens, sample_tokens(model, start_codes(2, 1), n, controls(2, n),
                                             SamplerConfig(top_k=4, step_threads=1)))


def test_step_threads_setting_is_checked():
    for bad in (-1, "fast", 1.5):
        with pytest.raises(ValueError, match="step_threads"):
            SamplerConfig(step_threads=bad)
    assert SamplerConfig().step_threads == "auto"


def test_greedy_is_deterministic_and_the_stepwise_argmax_of_the_uncached_logits():
    model = make()
    ctl = controls(2, N)
    greedy = SamplerConfig(top_k=1)
    a = sample_tokens(model, start_codes(2, 1), N, ctl, greedy, seeds=[0, 1])
    b = sample_tokens(model, start_codes(2, 1), N, ctl, greedy, seeds=[7, 8])  # seeds unused
    assert torch.equal(a, b)
    seq = model.layout.assemble(a, state=ctl.state, audio=ctl.audio, layout=ctl.layout,
                                label=ctl.label, end_frame=ctl.end_frame)
    with torch.no_grad():
        logits = model(seq.tokens, end_gap=torch.tensor([N - 1, N - 1])).logits
    lay = model.layout
    for t in range(1, N):  # every sampled code is the argmax of ô at the position before it
        pos = torch.arange(lay.segment(t, TokenKind.FRAME).start, lay.segment(t, TokenKind.FRAME).stop)
        assert torch.equal(seq.tokens[:, pos], logits[:, pos - 1].argmax(-1))


def test_seeds_make_samples_reproducible_and_diverse():
    model = make()
    ctl, start = controls(2, 5), start_codes(2, 1)
    cfg = SamplerConfig(top_k=Q)
    a = sample_tokens(model, start, 5, ctl, cfg, seeds=[10, 11])
    assert torch.equal(a, sample_tokens(model, start, 5, ctl, cfg, seeds=[10, 11]))
    c = sample_tokens(model, start, 5, ctl, cfg, seeds=[12, 13])
    assert not torch.equal(a[0, 1:], c[0, 1:]) and not torch.equal(a[1, 1:], c[1, 1:])
    assert torch.equal(sample_tokens(model, start, 5, ctl, cfg, seeds=[0, 1]),
                       sample_tokens(model, start, 5, ctl, cfg))  # default seeds 0..B−1
    assert torch.equal(a[:, 0], start[:, 0])  # the given frame is kept


def test_a_row_does_not_depend_on_the_other_rows():
    model = make()
    ctl2, start2 = controls(2, 5), start_codes(2, 1)
    ctl1 = TokenControls(**{k: (v[:1] if isinstance(v, torch.Tensor) else v)
                            for k, v in vars(ctl2).items()})
    cfg = SamplerConfig(top_k=Q)
    both = sample_tokens(model, start2, 5, ctl2, cfg, seeds=[21, 22])
    alone = sample_tokens(model, start2[:1], 5, ctl1, cfg, seeds=[21])
    assert torch.equal(alone[0], both[0])


def test_annotations_are_inserted_verbatim_and_missing_kinds_get_null_ids():
    model = make()
    lay = model.layout
    n = 5  # slides: windows start at 0, 1, 2
    ctl = controls(2, n)
    ctl = TokenControls(label=ctl.label, end_frame=ctl.end_frame, state=ctl.state,
                        audio=ctl.audio)  # no layout → its null id
    with Recorder(model) as rec:
        codes = sample_tokens(model, start_codes(2, 1), n, ctl, SamplerConfig(top_k=4))
    # rebuild each window's sequence from the calls (a call at start_pos 0 starts a window)
    windows: list[torch.Tensor] = []
    for tokens, start_pos, _ in rec.calls:
        if start_pos == 0:
            windows.append(tokens)
        else:
            assert windows[-1].shape[1] == start_pos  # contiguous feeding
            windows[-1] = torch.cat([windows[-1], tokens], dim=1)
    assert len(windows) == 3
    for s, seq in enumerate(windows):
        assert torch.equal(seq[:, lay.label_position], ctl.label)
        assert torch.equal(seq[:, lay.end_frame_slice], ctl.end_frame.flatten(1))
        frames_in = (seq.shape[1] - lay.video_len + H * W - 1) // lay.frame_stride
        for j in range(frames_in):
            t = s + j
            assert torch.equal(seq[:, lay.segment(j, TokenKind.STATE)], ctl.state[:, t])
            assert torch.equal(seq[:, lay.segment(j, TokenKind.AUDIO)], ctl.audio[:, t])
            assert (seq[:, lay.segment(j, TokenKind.LAYOUT)] == lay.null_id(TokenKind.LAYOUT)).all()
            got = seq[:, lay.segment(j, TokenKind.FRAME)]
            assert torch.equal(got, codes[:, t].flatten(1)[:, :got.shape[1]])


def test_top_k_only_samples_among_the_k_highest_logits():
    model = make(config(n_embd=16))
    k = 3
    with Recorder(model) as rec:
        codes = sample_tokens(model, start_codes(2, 1), 4, controls(2, 4),
                              SamplerConfig(top_k=k, kv_cache=False, temperature=3.0))
    sampled = codes[:, 1:].flatten(1)  # one recorded call per sampled token
    assert len(rec.calls) == sampled.shape[1]
    chosen_ranks = []
    for i, (_, _, logits) in enumerate(rec.calls):
        top = logits.topk(k, dim=-1).indices
        assert (top == sampled[:, i:i + 1]).any(-1).all()
        chosen_ranks += (top == sampled[:, i:i + 1]).float().argmax(-1).tolist()
    assert len(set(chosen_ranks)) > 1  # not just the argmax


def test_end_gap_follows_the_sliding_window():
    model = make()
    gaps = []
    model.pos.register_forward_pre_hook(
        lambda mod, args: gaps.append(args[1].tolist() if len(args) > 1 else None))
    n, end_time = 7, 8
    sample_tokens(model, start_codes(2, 1), n, controls(2, n, end_time=end_time),
                  SamplerConfig(top_k=2))
    distinct = [g for i, g in enumerate(gaps) if i == 0 or g != gaps[i - 1]]
    # windows start at 0 (frames 1, 2), then 1, 2, 3, 4: gap = end_time − window start
    assert distinct == [[end_time - s] * 2 for s in range(0, n - N + 1)]


def test_fast_single_position_path_matches_the_general_one():
    for pos_embedding in ("decomposed", "learned"):
        model = make(config(pos_embedding=pos_embedding))
        L = model.layout.length
        positions = torch.arange(L)
        for gap in (None, torch.tensor([2, 9])):
            with torch.no_grad():
                full = model.pos(positions, gap)
                for p in range(L):
                    one = model.pos(positions[p:p + 1], gap, first=p)
                    assert torch.equal(one.expand(full.shape[0], 1, -1), full[:, p:p + 1])


def test_bad_inputs_raise_clear_errors():
    model = make()
    ok = start_codes(2, 1)
    plain = make(config(num_classes=0, end_frame=False, state=False, audio_tokens_per_frame=0,
                        layout_tokens_per_frame=0))
    cases = [
        (model, ok[0], 4, None, "start must be"),
        (model, ok + Q, 4, None, r"start frame ids must be in \[0, 10\]"),
        (model, start_codes(2, 3), 2, None, "num_frames"),
        (model, ok, 4, TokenControls(state=torch.zeros(2, 3, 2, dtype=torch.long)), "state must be"),
        (model, ok, 4, TokenControls(audio=torch.full((2, 4, 2), 9)), r"audio ids must be in \[0, 7\]"),
        (model, ok, 4, TokenControls(label=torch.zeros(3, dtype=torch.long)), "label must be"),
        (model, ok, 7, TokenControls(end_time=3), "end_time 3 lies before"),
        (plain, ok, 4, TokenControls(label=torch.zeros(2, dtype=torch.long)), "no label tokens"),
        (plain, ok, 4, TokenControls(end_time=3), "no end frame"),
        (plain, ok, 4, TokenControls(audio=torch.zeros(2, 4, 2, dtype=torch.long)), "no audio"),
        (plain, start_codes(2, 0), 4, None, "m = 0 start frames"),
    ]
    for net, start, n, ctl, msg in cases:
        with pytest.raises(ValueError, match=msg):
            sample_tokens(net, start, n, ctl)
    with pytest.raises(ValueError, match="seeds"):
        sample_tokens(model, ok, 4, seeds=[1])
    with pytest.raises(ValueError, match="top_k"):
        SamplerConfig(top_k=0)
    # m = 0 works when annotations come first
    assert sample_tokens(model, start_codes(2, 0), 2, controls(2, 2)).shape == (2, 2, H, W)


# ----------------------------------------------------------------------------- frames


def autoencoder(context_frames: int = 2) -> CCVSAutoencoder:
    """K = 2: 8×12 frames → 2×3 tokens of the Q-code book."""
    torch.manual_seed(0)
    return CCVSAutoencoder(AutoencoderConfig(
        base_channels=4, channel_mult=(1, 2, 2), num_levels=2, latent_dim=8, codebook_size=Q,
        context_frames=context_frames, flow_radius=1, flow_hidden=4, flow_corr_dim=4)).eval()


def start_frames(b: int, m: int) -> torch.Tensor:
    return torch.rand(b, m, 3, 4 * H, 4 * W, generator=torch.Generator().manual_seed(9)) * 2 - 1


def test_synthesize_keeps_start_frames_and_samples_s_rows_in_one_batch():
    ae, model = autoencoder(), make()
    b, m, s, n = 2, 2, 3, 5
    x0 = start_frames(b, m)
    ctl = controls(b, n)
    calls = []
    model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(args[0].shape[0]),
                                    with_kwargs=True)
    out = synthesize(ae, model, x0, n, ctl, SamplerConfig(top_k=Q), samples=s)
    assert out.frames.shape == (b, s, n, 3, 4 * H, 4 * W)
    assert out.tokens.shape == (b, s, n, H, W)
    assert set(calls) == {b * s}  # one batch of B·S rows
    assert torch.equal(out.frames[:, :, :m], x0[:, None].expand(b, s, m, 3, 4 * H, 4 * W))
    assert torch.equal(out.tokens[:, :, :m],
                       ae.tokenize(x0.flatten(0, 1)).view(b, 1, m, H, W).expand(b, s, m, H, W))
    assert out.frames.abs().max() <= 1
    for i in range(b):  # top-k: the S samples of an input differ
        for j in range(1, s):
            assert not torch.equal(out.frames[i, 0, m:], out.frames[i, j, m:])
    greedy = synthesize(ae, model, x0, n, ctl, SamplerConfig(top_k=1), samples=s)
    assert torch.equal(greedy.frames, greedy.frames[:, :1].expand_as(greedy.frames))


@pytest.mark.parametrize("c, expected", [(2, [1, 2, 2, 2]), (0, [None] * 4)])
def test_decoder_gets_the_last_c_frames_as_context(c, expected):
    ae, model = autoencoder(context_frames=c), make()
    seen, encoded = [], []
    decode, encode = ae.decode_tokens, ae.encode

    def record_decode(tokens, context=None):
        seen.append(None if context is None else len(context))  # frames (ContextBuffer form)
        return decode(tokens, context)

    def record_encode(x):
        encoded.append(x.clone())
        return encode(x)

    ae.decode_tokens, ae.encode = record_decode, record_encode
    x0 = start_frames(1, 1)
    progress = []
    out = synthesize(ae, model, x0, 5, config=SamplerConfig(top_k=4), on_frame=progress.append)
    assert seen == expected and progress == [1, 2, 3, 4]
    if c:  # S: E sees the given frame, then each decoded frame (the last one is never needed)
        assert torch.equal(encoded[0], x0[:, 0])
        assert len(encoded) == 4
        assert all(torch.equal(e[0], out.frames[0, 0, t]) for t, e in enumerate(encoded[1:], 1))
    else:
        assert encoded == []


def test_synthesize_rejects_mismatched_models_and_frames():
    ae, model = autoencoder(), make()
    with pytest.raises(ValueError, match="T expects 2×3"):
        synthesize(ae, model, torch.zeros(1, 1, 3, 8, 8), 4)
    with pytest.raises(ValueError, match="start_frames must be"):
        synthesize(ae, model, torch.zeros(1, 3, 8, 12), 4)
    bare = make(config(num_classes=0, end_frame=False, state=False, audio_tokens_per_frame=0,
                       layout_tokens_per_frame=0))
    with pytest.raises(ValueError, match="m = 0"):  # nothing precedes frame 0's first code
        synthesize(ae, bare, torch.zeros(1, 0, 3, 8, 12), 4)
    with pytest.raises(ValueError, match="codebook"):
        synthesize(ae, make(config(frame_vocab=Q + 1)), start_frames(1, 1), 4)


def test_an_incompatible_context_size_is_a_clear_error():
    model = make()
    with pytest.raises(ValueError, match="has no F"):  # a model trained with c = 0
        synthesize(autoencoder(context_frames=0), model, start_frames(1, 1), 3, context_frames=2)
    anchored = CCVSAutoencoder(dataclasses.replace(autoencoder().config, context_anchor=1)).eval()
    with pytest.raises(ValueError, match="needs c > 1"):  # x_0 alone: no slot for the latest frame
        synthesize(anchored, model, start_frames(1, 1), 3, context_frames=1)
    out = synthesize(anchored, model, start_frames(1, 1), 3, context_frames=0)  # tokens alone: fine
    assert torch.isfinite(out.frames).all()


def test_unconditional_synthesis_samples_and_decodes_frame_zero_without_context():
    ae, model = autoencoder(context_frames=2), make()
    seen = []
    original = ae.decode_tokens

    def spy(codes, context=None):
        seen.append(None if context is None else len(context))  # frames (ContextBuffer form)
        return original(codes, context)

    ae.decode_tokens = spy
    out = synthesize(ae, model, torch.zeros(2, 0, 3, 8, 12), 4, samples=2)
    assert out.frames.shape == (2, 2, 4, 3, 8, 12) and torch.isfinite(out.frames).all()
    assert seen == [None, 1, 2, 2]  # frame 0 from its tokens alone, then up to c = 2 frames
    assert not torch.equal(out.tokens[0, 0, 0], out.tokens[0, 1, 0])  # frame 0 itself is sampled


def test_reduced_precision_weights_are_opt_in_close_to_fp32_and_leave_t_untouched():
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctl = controls(2, 5)
    fp32 = sample_tokens(model, start_codes(2, 1), 5, ctl, SamplerConfig(top_k=1))
    assert SamplerConfig().weights == "fp32"
    same = {}
    for weights in ("bf16", "int8"):
        out = {kv: sample_tokens(model, start_codes(2, 1), 5, ctl,
                                 SamplerConfig(top_k=1, kv_cache=kv, weights=weights))
               for kv in (True, False)}
        assert torch.equal(out[True][:, :1], fp32[:, :1])  # the given frame
        # greedy on spread logits: the reduced-precision samples stay close to fp32's
        same[weights] = (out[True] == fp32).float().mean().item()
        assert same[weights] > 0.8, same
        assert (out[True] == out[False]).float().mean().item() > 0.8
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="weights"):
        SamplerConfig(weights="fp16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_overlapped_decoding_gives_the_same_frames_in_order(precision):
    """D·S·E·F on a worker thread while T samples on: the frames of the inline run, decoded in
    order (each reads the context its predecessor pushed), on_frame called from the worker."""
    ae, model = autoencoder(context_frames=2), make()
    x0 = start_frames(2, 1)
    runs = {}
    for overlap in (False, True):
        progress = []
        # a fixed step-thread count: "auto" times its choice, and two runs may choose differently
        cfg = SamplerConfig(top_k=4, autoencoder_precision=precision, overlap_decoding=overlap,
                            step_threads=2)
        out = synthesize(ae, model, x0, 6, controls(2, 6), cfg,
                         on_frame=lambda t: progress.append((t, threading.current_thread().name)))
        runs[overlap] = out
        assert [t for t, _ in progress] == [1, 2, 3, 4, 5]
        assert all(name.startswith("ccvs-decode") == overlap for _, name in progress)
    assert torch.equal(runs[False].tokens, runs[True].tokens)
    assert torch.equal(runs[False].frames, runs[True].frames)


@pytest.mark.parametrize("overlap", [False, True])
def test_a_decoding_error_stops_synthesis(overlap):
    ae, model = autoencoder(), make()
    decode = ae.decode_tokens
    calls = []

    def failing(codes, context=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("decoder broke")
        return decode(codes, context)

    ae.decode_tokens = failing
    with pytest.raises(RuntimeError, match="decoder broke"):
        synthesize(ae, model, start_frames(1, 1), 7, config=SamplerConfig(
            top_k=4, overlap_decoding=overlap))
    assert len(calls) == 2  # nothing is decoded after the failed frame


def test_bf16_autoencoder_runs_in_bf16_keeps_the_tokens_and_changes_frames_little():
    ae, model = autoencoder(context_frames=2), make()
    x0 = start_frames(2, 2)
    dtypes = []
    decode = ae.decode_tokens

    def spy(codes, context=None):
        out = decode(codes, context)
        dtypes.append(out.x_hat.dtype)
        return out

    ae.decode_tokens = spy
    fp32 = synthesize(ae, model, x0, 5, controls(2, 5), SamplerConfig(top_k=4))
    bf16 = synthesize(ae, model, x0, 5, controls(2, 5),
                      SamplerConfig(top_k=4, autoencoder_precision="bf16"))
    assert dtypes == [torch.float32] * 3 + [torch.bfloat16] * 3
    assert torch.equal(fp32.tokens, bf16.tokens)  # the given frames are tokenized in fp32
    assert torch.equal(fp32.frames[:, :, :2], bf16.frames[:, :, :2])
    assert bf16.frames.dtype == torch.float32
    diff = (fp32.frames - bf16.frames).abs()
    assert 0 < diff.max() < 0.1, diff.max()
    with pytest.raises(ValueError, match="autoencoder_precision"):
        SamplerConfig(autoencoder_precision="fp16")


@pytest.mark.parametrize("cost, steps", [({1: 1.0, 2: 3.0}, 1), ({1: 3.0, 2: 1.0}, 2)])
@pytest.mark.parametrize("overlap", [False, "auto"])
def test_decoding_runs_on_the_step_thread_count_and_overlaps_when_a_core_is_free(cost, steps,
                                                                                 overlap):
    """D·S·E·F of each frame runs on the thread count T's steps measured best; "auto" overlap
    moves it to a worker thread exactly when T's steps leave one of torch's threads free."""
    ae, model = autoencoder(context_frames=2), make()
    seen = []  # (torch threads, thread name) per decoded frame
    decode = ae.decode_tokens

    def spy(codes, context=None):
        seen.append((torch.get_num_threads(), threading.current_thread().name))
        return decode(codes, context)

    ae.decode_tokens = spy
    tuner = StepThreads(rounds=1, block=2, clock=ThreadClock(cost))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        synthesize(ae, model, start_frames(1, 1), 5, controls(1, 5),
                   SamplerConfig(top_k=4, overlap_decoding=overlap), threads=tuner)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert after == 2 and len(seen) == 4
    on_worker = overlap == "auto" and steps == 1
    assert all(name.startswith("ccvs-decode") == on_worker for _, name in seen)
    if not on_worker:  # inline: set for the frame, restored after (the worker shares the count)
        assert {threads for threads, _ in seen} == {steps}
