"""Training the controllable transformer T on token shards (§3.3, Eq. (8), App. A "Transformer", App. E).

What the ``transformer`` stage composes (``stages/transformer.py``):

- :class:`TransformerArch` / :class:`Conditioning`: the params-side halves of
  ``ccvs_models.transformer.TransformerConfig``; the sequence half (q, h, w, B, l_a, q_a, l_l, q_l,
  classes) comes from the data's ``vocab.json`` (:func:`model_config`), so params never restate a
  codebook size.
- :func:`window_batch` / :func:`assemble_windows`: N-frame windows of token clips → the §3.3
  sequence (``SequenceLayout.assemble``) and ``end_gap`` = (clip's last frame) − (window's first
  frame), the App. E gap the end frame's positional embedding encodes.
- :class:`TokenWindows`, :class:`WindowBatches`: the training stream's items and batches
  (``pipeline.data.stream.ShardStream``: one random window per clip per epoch, shuffle blocks,
  exact resume) — the token shards are streamed, never loaded whole.
- :func:`conditioning_dropout`: per annotation kind, replace that kind's tokens by its null id in
  a random subset of the batch (``SequenceLayout.drop``), so one T serves unconditional and
  conditioned synthesis (prediction, state-, audio-, class-, end-frame-conditioned).
- :class:`TransformerTask`: the ``pipeline.training.task.TrainTask`` — AdamW (decay on matrices and
  embeddings, none on biases/LayerNorm), linear warm-up then cosine decay of the learning rate as a
  function of the step (resuming needs no scheduler state), Eq. (8) loss, frame-token accuracy;
  evaluation = validation perplexity exp(mean CE over frame tokens) and accuracy.
- :class:`CodeStats`, :func:`unigram_baseline`: the codebook-usage entropy baseline, exp(H) of the train-set unigram
  distribution of frame codes (what a model that ignores context achieves).
- :func:`copy_baseline`: the temporal baseline, "each code repeats the previous frame's code at its
  position" (what a model must beat before its samples hold a scene still).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from ccvs_models.sequence_layout import IGNORE_INDEX, SequenceLayout, TokenKind
from ccvs_models.transformer import CCVSTransformer, frame_token_accuracy, frame_token_targets
from ccvs_models.transformer_config import TransformerConfig
from pipeline.tokens.shards import TokenShardError, TokenSplit
from pipeline.training.schedule import set_lr, warmup_cosine
from pipeline.training.task import StepContext, TrainTask


# --------------------------------------------------------------------------- params halves


@dataclasses.dataclass(frozen=True)
class TransformerArch:
    """T's network and window (the data-independent fields of ``TransformerConfig``; Table 2)."""

    num_frames: int  # N, frames per training window (0 = the clips' length; paper: 16)
    n_layer: int  # transformer blocks (Table 2: 6, 12, 24)
    n_head: int  # attention heads (Table 2: 4, 8, 16)
    n_embd: int  # D, embedding width
    mlp_ratio: int  # MLP hidden width = mlp_ratio · D
    dropout: float  # embedding / residual dropout
    attn_dropout: float  # attention-weight dropout
    bias: bool  # biases in Linear / LayerNorm
    pos_embedding: Literal["decomposed", "learned"]  # Table 2 "Dec." (App. A)
    max_end_gap: int  # end-frame gaps beyond this share one embedding (App. E)
    prev_frame_input: bool = False  # ours: the copy path (TransformerConfig.prev_frame_input)
    state_field: bool = False  # ours: the state at its frame's cells (TransformerConfig.state_field)
    end_frame_input: bool = False  # ours: the end frame at each slot (TransformerConfig.end_frame_input)
    audio_input: bool = False  # ours: a frame's sound at its codes (TransformerConfig.audio_input)
    label_input: bool = False  # ours: the class at every frame code (TransformerConfig.label_input)

    def __post_init__(self) -> None:
        if self.num_frames < 0:
            raise ValueError(f"num_frames must be >= 0 (0 = clip length), got {self.num_frames}")


KINDS = {"state": TokenKind.STATE, "audio": TokenKind.AUDIO, "layout": TokenKind.LAYOUT,
         "label": TokenKind.LABEL, "end_frame": TokenKind.END_FRAME}


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """Which annotations T reads (when the data has them) and their conditioning dropout."""

    state: bool  # 2 state tokens per frame (§4 state-conditioned synthesis)
    audio: bool  # l_a sound tokens per frame (App. A)
    layout: bool  # l_l layout tokens per frame (App. E)
    label: bool  # 1 class token per video (App. E)
    end_frame: bool  # the end frame's h·w tokens per video (App. E point-to-point)
    drop_state: float  # P(a training sample's state tokens → null id)
    drop_audio: float
    drop_layout: float
    drop_label: float
    drop_end_frame: float
    # ours: a training window's end frame is a random later frame of its clip (at or after the
    # window's last), not always the clip's last, so T sees every gap d = 0 … (App. E: any length)
    random_end_frame: bool = False

    def __post_init__(self) -> None:
        for name in KINDS:
            p = getattr(self, f"drop_{name}")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"drop_{name} must be in [0, 1], got {p}")

    def drop_probs(self) -> dict[TokenKind, float]:
        return {kind: getattr(self, f"drop_{name}") for name, kind in KINDS.items()}


def model_config(arch: TransformerArch, cond: Conditioning, vocab: dict[str, Any],
                 clip_frames: int) -> TransformerConfig:
    """``TransformerConfig`` = arch (params) + sequence (vocab.json; an annotation is on when the
    data has it and ``cond`` asks for it)."""
    n = arch.num_frames or clip_frames
    if n > clip_frames:
        raise ValueError(f"transformer.model.num_frames = {n} but the clips have {clip_frames} frames")
    state, audio, layout = (vocab.get(k) if getattr(cond, k) else None
                            for k in ("state", "audio", "layout"))
    classes = int(vocab["label"]["num_classes"]) if cond.label else 0
    end_frame = bool(cond.end_frame and vocab.get("end_frame"))
    return TransformerConfig(
        frame_vocab=int(vocab["frame"]["vocab"]), frame_height=int(vocab["frame"]["height"]),
        frame_width=int(vocab["frame"]["width"]), num_frames=n,
        state=state is not None, state_bins=int(state["bins"]) if state else 0,
        audio_tokens_per_frame=int(audio["tokens_per_frame"]) if audio else 0,
        audio_vocab=int(audio["vocab"]) if audio else 0,
        layout_tokens_per_frame=int(layout["tokens_per_frame"]) if layout else 0,
        layout_vocab=int(layout["vocab"]) if layout else 0,
        num_classes=classes if classes > 1 else 0,  # one class carries no information
        end_frame=end_frame,
        max_end_gap=arch.max_end_gap, n_layer=arch.n_layer, n_head=arch.n_head,
        n_embd=arch.n_embd, mlp_ratio=arch.mlp_ratio, dropout=arch.dropout,
        attn_dropout=arch.attn_dropout, bias=arch.bias, pos_embedding=arch.pos_embedding,
        prev_frame_input=arch.prev_frame_input,
        state_field=arch.state_field and state is not None,  # on only where the control is
        end_frame_input=arch.end_frame_input and end_frame,
        audio_input=arch.audio_input and audio is not None,
        label_input=arch.label_input and classes > 1)


# --------------------------------------------------------------------------- sequences


class TokenBatch(NamedTuple):
    """A batch of assembled sequences."""

    tokens: torch.Tensor  # (B, L) long, the §3.3 sequence
    end_gap: torch.Tensor | None  # (B,) long, end frame − window start (App. E); None without it


def window_batch(split: TokenSplit, layout: SequenceLayout, clip_idx: np.ndarray,
                 starts: np.ndarray) -> TokenBatch:
    """Windows of ``layout.num_frames`` frames starting at ``starts`` in clips ``clip_idx``."""
    n = layout.num_frames
    idx = np.asarray(clip_idx, np.int64)
    t = np.asarray(starts, np.int64)[:, None] + np.arange(n)[None]  # (B, N)
    pick = (lambda a: None if a is None else a[idx[:, None], t])  # noqa: E731
    return assemble_windows(layout, pick(split.frames), split.end_frame[idx], split.label[idx],
                            np.asarray(starts, np.int64), split.frames.shape[1],
                            state=pick(split.state), audio=pick(split.audio),
                            layout_codes=pick(split.layout))


def assemble_windows(layout: SequenceLayout, frames: np.ndarray, end_frame: np.ndarray,
                     label: np.ndarray, starts: np.ndarray, clip_frames: int, *,
                     state: np.ndarray | None = None, audio: np.ndarray | None = None,
                     layout_codes: np.ndarray | None = None,
                     ends: np.ndarray | None = None) -> TokenBatch:
    """The §3.3 sequences of B windows: frames (B, N, h, w) codes, end_frame (B, h, w), label
    (B,), starts (B,) (the windows' first frame in their clips of ``clip_frames``), annotation
    windows (B, N, ·), ends (B,) the end frames' indices in their clips (None: the clips' last);
    the annotations ``layout`` does not read are ignored."""
    long = (lambda a: torch.from_numpy(np.ascontiguousarray(a).astype(np.int64)))  # noqa: E731
    kwargs: dict[str, torch.Tensor] = {}
    if layout.state_tokens:
        kwargs["state"] = long(state)
    if layout.audio_tokens:
        kwargs["audio"] = long(audio)
    if layout.layout_tokens:
        kwargs["layout"] = long(layout_codes)
    if layout.num_classes:
        kwargs["label"] = long(label)
    gap = None
    if layout.end_frame:
        kwargs["end_frame"] = long(end_frame)
        last = clip_frames - 1 if ends is None else np.asarray(ends, np.int64)
        gap = torch.from_numpy(last - np.asarray(starts, np.int64))
    seq = layout.assemble(long(frames), **kwargs)
    return TokenBatch(seq.tokens, gap)


# --------------------------------------------------------------------------- streamed windows


@dataclasses.dataclass(frozen=True)
class TokenWindows:
    """``to_items`` of the training stream (``pipeline.data.stream.ShardStream``): a token clip →
    one N-frame window at a random start (drawn from the sample's own generator, so a resumed
    or re-read stream draws the same). Clips in ``exclude`` (held out for validation) give none.
    A clip that does not match vocab.json stops the stage naming it."""

    num_frames: int  # N
    clip_frames: int  # T of every clip
    grid: tuple[int, int]  # (h, w) tokens per frame
    kinds: tuple[str, ...]  # the annotation arrays vocab.json lists (each sample must have them)
    where: str  # the token folder, for errors
    exclude: frozenset[str] = frozenset()
    random_end: bool = False  # the end frame: a random frame ≥ the window's last (Conditioning)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator) -> list[dict[str, Any]]:
        key = sample["key"]
        if key in self.exclude:
            return []
        frames = sample["frames"]
        if frames.shape != (self.clip_frames, *self.grid) or "end_frame" not in sample:
            raise TokenShardError(f"{self.where}: sample {key} has frames {frames.shape}"
                                  f"{'' if 'end_frame' in sample else ' and no end_frame.npy'}, "
                                  f"expected {(self.clip_frames, *self.grid)}")
        start = int(rng.integers(0, self.clip_frames - self.num_frames + 1))
        t = slice(start, start + self.num_frames)
        end, end_frame = self.clip_frames - 1, sample["end_frame"]
        if self.random_end:
            end = int(rng.integers(start + self.num_frames - 1, self.clip_frames))
            end_frame = frames[end]
        item = {"frames": frames[t], "end_frame": end_frame, "start": start, "end": end,
                "label": int(sample["meta"].get("label_id", 0))}
        for kind in self.kinds:
            if kind not in sample:
                raise TokenShardError(f"{self.where}: sample {key} lacks {kind}.npy, which "
                                      f"vocab.json lists")
            item[kind] = sample[kind][t]
        return [item]


@dataclasses.dataclass(frozen=True)
class WindowBatches:
    """``make_batch`` of the training stream: window items → a ``TokenBatch``."""

    layout: SequenceLayout
    clip_frames: int

    def __call__(self, items: list[dict[str, Any]], step: int) -> TokenBatch:
        stack = (lambda k: np.stack([i[k] for i in items]) if k in items[0] else None)  # noqa: E731
        labels = np.asarray([i["label"] for i in items])
        # an unlabelled clip (label id −1: a video at the top of a folder source) → the null label,
        # as ``load_token_split`` does for the validation set
        labels = np.where(labels < 0, self.layout.null_id(TokenKind.LABEL), labels)
        return assemble_windows(self.layout, stack("frames"), stack("end_frame"), labels,
                                np.asarray([i["start"] for i in items]), self.clip_frames,
                                state=stack("state"), audio=stack("audio"),
                                layout_codes=stack("layout"), ends=stack("end"))


class CodeStats:
    """Frame-code statistics of a split gathered clip by clip (the baselines' train side): code
    counts, and how many codes repeat the previous frame's at the same position."""

    def __init__(self, vocab: int):
        self.counts = np.zeros(vocab, np.int64)
        self.same = self.pairs = 0

    @classmethod
    def of(cls, frames: np.ndarray, vocab: int) -> CodeStats:
        """Stats of (n, T, h, w) codes at once."""
        stats = cls(vocab)
        for clip in frames:
            stats.add(clip)
        return stats

    def add(self, clip: np.ndarray) -> None:
        """One clip's (T, h, w) codes."""
        codes = np.asarray(clip, np.int64)
        self.counts += np.bincount(codes.reshape(-1), minlength=len(self.counts))
        if len(codes) > 1:
            self.same += int((codes[1:] == codes[:-1]).sum())
            self.pairs += codes[1:].size


def conditioning_dropout(tokens: torch.Tensor, layout: SequenceLayout,
                         probs: dict[TokenKind, float],
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Per kind with p > 0 present in ``layout``: each sample's tokens of that kind become the
    null id with probability p (independently per kind and sample). Frame tokens are never
    touched. ``tokens``: (B, L') positions 0 … L'−1."""
    kinds_present = set(layout.kinds()[: tokens.shape[1]].tolist())
    out = tokens
    for kind, p in probs.items():
        if p <= 0 or int(kind) not in kinds_present:
            continue
        samples = torch.rand(tokens.shape[0], generator=generator) < p
        if samples.any():
            out = layout.drop(out, kind, samples)
    return out


def unigram_baseline(train_frames: np.ndarray | CodeStats, val_frames: np.ndarray,
                     vocab: int) -> dict[str, float]:
    """Codebook-usage baseline: exp(H) of the train unigram of frame codes, and the perplexity of
    val frame codes under that unigram (add-½ smoothing, so unseen codes have finite cost).
    ``train_frames``: codes (any shape), or their ``CodeStats`` gathered from a stream."""
    counts = (train_frames.counts if isinstance(train_frames, CodeStats) else np.bincount(
        train_frames.reshape(-1).astype(np.int64), minlength=vocab)).astype(np.float64)
    p = counts / max(counts.sum(), 1.0)
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    smooth = (counts + 0.5) / (counts.sum() + 0.5 * vocab)
    val = val_frames.reshape(-1).astype(np.int64)
    cross = float(-np.log(smooth[val]).mean()) if val.size else float("nan")
    return {"unigram_perplexity": math.exp(entropy), "unigram_val_perplexity": math.exp(cross),
            "used_codes": float((counts > 0).sum())}


def copy_baseline(train_frames: np.ndarray | CodeStats, val_frames: np.ndarray, vocab: int,
                  window: int) -> dict[str, float]:
    """The temporal baseline T has to beat before its samples can hold a scene still: "each code
    repeats the code at the same position of the previous frame".

    ``copy_rate`` c is the fraction of train codes equal to that previous code; the baseline model
    gives the previous code c + (1 − c)·u(x) and any other code (1 − c)·u(x), with u the train
    unigram (add-½ smoothed). A window's first frame has no previous frame in T's window, so it
    is scored by u alone, and the val loss weights frames as T's ``window``-frame windows do
    (1 first frame per ``window``). Returns ``copy_rate``, ``copy_val_accuracy`` (previous code
    for frames ≥ 1, the most frequent code for a first frame) and ``copy_val_perplexity``.
    ``train_frames``: (n, T, h, w) codes, or their ``CodeStats``."""
    stats = (train_frames if isinstance(train_frames, CodeStats)
             else CodeStats.of(train_frames, vocab))
    val = val_frames.astype(np.int64)
    counts = stats.counts.astype(np.float64)
    u = (counts + 0.5) / (counts.sum() + 0.5 * vocab)
    c = stats.same / stats.pairs if stats.pairs else 0.0
    nan = float("nan")
    if val.size == 0 or val.shape[1] < 2:
        return {"copy_rate": c, "copy_val_accuracy": nan, "copy_val_perplexity": nan}
    cur, prev = val[:, 1:], val[:, :-1]
    same = cur == prev
    loss_next = float(-np.log(np.where(same, c, 0.0) + (1.0 - c) * u[cur]).mean())
    loss_first = float(-np.log(u[val]).mean())
    w = 1.0 / max(window, 1)
    acc_first = float((val == int(counts.argmax())).mean())
    return {"copy_rate": c,
            "copy_val_accuracy": w * acc_first + (1.0 - w) * float(same.mean()),
            "copy_val_perplexity": math.exp(w * loss_first + (1.0 - w) * loss_next)}


# --------------------------------------------------------------------------- the task


def adamw(model: nn.Module, lr: float, weight_decay: float,
          betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW with weight decay on ≥2-D tensors (matrices, embeddings) only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr, betas=betas)


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """The optimizer half of the transformer params (see ``TransformerParams``)."""

    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    betas: tuple[float, float]
    steps: int


class TransformerTask(TrainTask):
    """T with AdamW, Eq. (8), conditioning dropout; evaluation = val perplexity and accuracy."""

    def __init__(self, cfg: TransformerConfig, optim: OptimSettings,
                 drop_probs: dict[TokenKind, float], val_batches: list[TokenBatch],
                 config: dict[str, Any]) -> None:
        self.cfg = cfg
        self.model = CCVSTransformer(cfg)
        self.layout = self.model.layout
        self.optim = optim
        self.opt = adamw(self.model, optim.lr, optim.weight_decay, optim.betas)
        self.drop_probs = drop_probs
        self.val_batches = val_batches
        self._config = config

    def modules(self) -> dict[str, nn.Module]:
        return {"transformer": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.opt}

    def config(self) -> dict[str, Any]:
        return self._config

    def train_step(self, batch: TokenBatch, step: int, ctx: StepContext) -> dict[str, float]:
        lr = warmup_cosine(step, self.optim.lr, self.optim.warmup_steps, self.optim.steps,
                           self.optim.min_lr)
        set_lr(self.opt, lr)
        tokens = conditioning_dropout(batch.tokens, self.layout, self.drop_probs)
        tokens = ctx.to_device(tokens)
        gap = ctx.to_device(batch.end_gap)
        with ctx.autocast():
            out = ctx.modules["transformer"](tokens, gap, tokens)
        ctx.optimize(out.loss, "adamw")
        acc = frame_token_accuracy(out.logits, tokens, self.model.kinds[: tokens.shape[1]])
        return {"loss": out.loss.item(), "accuracy": float(acc), "lr": lr}

    def evaluate(self, step: int, ctx: StepContext) -> dict[str, float]:
        if not self.val_batches:
            return {}
        model = ctx.eval_module("transformer")
        out = evaluate_batches(model, self.val_batches, ctx.device, ctx.autocast)
        out.update(control_gains(model, self.val_batches, ctx.device, out["val/loss"], ctx.autocast))
        return out


def control_gains(model: CCVSTransformer, batches: list[TokenBatch], device: torch.device,
                  loss: float, autocast: Callable[[], Any] | None = None) -> dict[str, float]:
    """Does T read its annotations? Per annotation kind of its sequence, ``val/gain/<kind>`` =
    the val loss with that kind's tokens set to the null id (as conditioning dropout does) minus
    ``loss``, the val loss with every annotation given, in nats per frame token. About 0: T
    ignores the control (its samples will not follow it); > 0: the control carries information
    T uses."""
    layout = model.layout
    present = set(layout.kinds().tolist())
    out = {}
    for name, kind in KINDS.items():
        if int(kind) not in present:
            continue
        dropped = [b._replace(tokens=layout.drop(b.tokens, kind)) for b in batches]
        out[f"val/gain/{name}"] = evaluate_batches(model, dropped, device, autocast)["val/loss"] - loss
    return out


@torch.no_grad()
def evaluate_batches(model: CCVSTransformer, batches: list[TokenBatch], device: torch.device,
                     autocast: Callable[[], Any] | None = None) -> dict[str, float]:
    """val/loss (mean CE over predicted frame tokens), val/perplexity = exp(val/loss), val/accuracy."""
    total, hits, count = 0.0, 0.0, 0
    for b in batches:
        tokens = b.tokens.to(device)
        gap = None if b.end_gap is None else b.end_gap.to(device)
        kinds = model.kinds[: tokens.shape[1]]
        with (autocast() if autocast else torch.autocast(device.type, enabled=False)):
            out = model(tokens, gap)
        tgt = frame_token_targets(tokens, kinds)
        keep = tgt != IGNORE_INDEX
        n = int(keep.sum())
        ce = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].float().reshape(-1, out.logits.shape[-1]), tgt.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum")
        total += float(ce)
        hits += float(frame_token_accuracy(out.logits, tokens, kinds)) * n
        count += n
    loss = total / max(count, 1)
    return {"val/loss": loss, "val/perplexity": math.exp(min(loss, 700.0)),
            "val/accuracy": hits / max(count, 1)}


def fixed_windows(split: TokenSplit, layout: SequenceLayout, batch_size: int) -> list[TokenBatch]:
    """Every clip's first window (start 0), in batches: the validation set."""
    out = []
    for i in range(0, len(split), batch_size):
        idx = np.arange(i, min(i + batch_size, len(split)))
        out.append(window_batch(split, layout, idx, np.zeros(len(idx), np.int64)))
    return out
