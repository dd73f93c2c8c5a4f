"""The controllable transformer T (§3.1, §3.3, Fig. 2, Eq. (8), App. A "Transformer", App. E, Table 2).

§3.3: T is an Image-GPT-like decoder over N annotated frames. A frame is h·w codes of the frame
codebook (⟦1, q⟧ in the paper, ⟦0, q⟦ here); the ancillary information is turned into tokens too.
The sequence has length

    L = l_v + N · (l_f + h·w)                                               (§3.3)

with l_v video-level annotation tokens first, then for each frame its l_f frame-level annotation
tokens followed by its h·w frame tokens. ``SequenceLayout`` (``ccvs_models.sequence_layout``) is that layout, in this order:

    video level:  [class label (1, if num_classes > 0)] [end frame (h·w, if end_frame, App. E)]
    frame t:      [state x, y (2, if state)] [audio (l_a)] [layout (l_l)] [frame codes (h·w)]

Eq. (8): T is trained by cross-entropy of ô_{i−1} (the logits at position i − 1) against token i.
Annotations are given, never predicted (§3.3 "Inference"), so the head scores the q frame codes
only and the loss counts position i only when token i is a frame token (``frame_token_loss``).

Token embeddings: one table per vocabulary (frame codes, state bins, audio codes, layout codes,
class labels), not one shared offset vocabulary. Each kind then keeps its natural ids (the
tokenizer writes raw codebook indices and bins; no offset arithmetic leaks into shards), a model
without a kind has no table for it, and changing one vocabulary's size leaves the other tables'
shapes — and their checkpoint keys — untouched. The end frame's tokens are frame codes, so they
share the frame table. Every annotation vocabulary reserves one extra id, its size, as a "null"
token (``SequenceLayout.null_id``): conditioning dropout (``SequenceLayout.drop``) replaces a kind's
tokens by it, so one model serves conditioned and unconditioned synthesis. The frame table gets
its null row (id q) only when the model has an end frame (the null end frame).

Positional embedding (App. A "Transformer", Table 2 "Dec."): ``pos_embedding="decomposed"`` is the
paper's spatio-temporal decomposition, a timestep term for frame t plus a position-within-frame term
over the l_f + h·w slots of a frame's portion; video-level tokens get their own learned positions,
except the end frame's h·w tokens, which reuse the within-frame terms of the h·w frame-code slots
(they are a frame). ``"learned"`` is a plain learned embedding of each of the L positions.

End frame (App. E, point-to-point): its positional embedding "reflects the gap with current
predicted frames". Both modes add a learned embedding of ``end_gap`` = (timestep of the end frame)
− (timestep of the window's first frame) to the end frame's tokens; the gap is clamped to
``max_end_gap`` (gaps beyond it share the "far" embedding), so the sampler can slide the window over
videos longer than N and lower the gap as it goes.

Copy path (ours, not in the paper; ``prev_frame_input``, off by default): position i also adds the
head's row of the code at the slot it predicts in the previous frame (``SequenceLayout.
prev_sources``), so T starts from "repeat the previous frame" and learns what changes. Most codes
of a static camera's video repeat (74 % on the demo world); the paper's T must find the previous
frame by attention, a phase transition that a 4-layer T over q = 512 codes had not crossed after
1,200 steps on synthetic repeating clips (BENCHMARKS.md "transformer"), beyond a CPU demo's budget.
With the KV cache, the source ids come from ``KVCache.write_tokens``.

Incremental decoding: ``forward(..., kv_cache=KVCache, start_pos=...)`` appends the keys/values of
the new tokens to preallocated per-layer buffers; cached and uncached forwards give the same
logits. ``KVCache.crop(n)`` rolls it back. The cache is for inference (run under ``torch.no_grad``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.low_precision import LowPrecisionLinear
from ccvs_models.sequence_layout import IGNORE_INDEX, SequenceLayout, TokenKind


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """T's sequence and architecture. Defaults: the paper's BAIR setup where the paper gives it
    (Table 2's best row: 24 layers, 16 heads, decomposed positions; 8×8 tokens per frame, §4.1;
    N = 16 frames, Table 1); the width, B and the vocab sizes of annotations are not in the paper."""

    # --- the sequence, L = l_v + N·(l_f + h·w) (§3.3)
    frame_vocab: int = 1024  # q, frame codebook size (§3.1; paper: 1024…65536, Table 5)
    frame_height: int = 8  # h, token rows per frame (paper: 8×8 = 64 tokens, §4.1 / Fig. 3)
    frame_width: int = 8  # w, token columns per frame
    num_frames: int = 16  # N, frames per window (paper: 16-frame BAIR videos, Table 1)
    state: bool = False  # 2 state tokens per frame, x then y (state-conditioned synthesis, §4)
    state_bins: int = 256  # B, bins per coordinate (not in the paper); 0 allowed when state off
    audio_tokens_per_frame: int = 0  # l_a, sound-VQ tokens per frame (0 = no audio, App. A)
    audio_vocab: int = 0  # q_a, sound codebook size (needed when l_a > 0)
    layout_tokens_per_frame: int = 0  # l_l, layout-VQ tokens per frame (0 = none, App. E)
    layout_vocab: int = 0  # q_l, layout codebook size (needed when l_l > 0)
    num_classes: int = 0  # class labels, 1 video-level token (0 = none; Weizmann/UCF, App. E)
    end_frame: bool = False  # the end frame's h·w tokens as a video-level annotation (App. E)
    max_end_gap: int = 64  # end_gap is clamped to this (gap embedding has max_end_gap + 1 rows);
    # covers App. E's point-to-point lengths (≤ 30 frames) with room; not in the paper
    # --- the network (App. A "Transformer", Table 2)
    n_layer: int = 24  # transformer blocks (Table 2: 6, 12, 24)
    n_head: int = 16  # attention heads (Table 2: 4, 8, 16)
    n_embd: int = 1024  # D, embedding width (not in the paper)
    mlp_ratio: int = 4  # hidden width of the position-wise MLP = mlp_ratio · D (GPT convention)
    dropout: float = 0.0  # dropout on embeddings and residual branches (not in the paper)
    attn_dropout: float = 0.0  # dropout on attention weights (not in the paper)
    bias: bool = True  # biases in Linear and LayerNorm layers
    pos_embedding: Literal["decomposed", "learned"] = "decomposed"  # Table 2 "Dec." (App. A)
    # ours, not in the paper: the copy path. Each position also embeds, through the head's weights,
    # the code at the predicted slot in the previous frame (``SequenceLayout.prev_sources``), so
    # "repeat the previous frame" is there from the first step. The paper's T has to discover it
    # with attention, which a small T on the demo's CPU budget did not (BENCHMARKS.md "transformer").
    prev_frame_input: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TransformerConfig: {msg}")

        need(self.frame_vocab >= 1, f"frame_vocab must be ≥ 1, got {self.frame_vocab}")
        need(self.frame_height >= 1 and self.frame_width >= 1,
             f"frame_height/frame_width must be ≥ 1, got {self.frame_height}×{self.frame_width}")
        need(self.num_frames >= 1, f"num_frames must be ≥ 1, got {self.num_frames}")
        need(not self.state or self.state_bins >= 1,
             f"state_bins must be ≥ 1 when state is on, got {self.state_bins}")
        for n, v, name in ((self.audio_tokens_per_frame, self.audio_vocab, "audio"),
                           (self.layout_tokens_per_frame, self.layout_vocab, "layout")):
            need(n >= 0, f"{name}_tokens_per_frame must be ≥ 0, got {n}")
            need(n == 0 or v >= 1, f"{name}_vocab must be ≥ 1 when {name}_tokens_per_frame > 0")
        need(self.num_classes >= 0, f"num_classes must be ≥ 0, got {self.num_classes}")
        need(self.max_end_gap >= 0, f"max_end_gap must be ≥ 0, got {self.max_end_gap}")
        need(self.n_layer >= 1 and self.n_head >= 1, "n_layer and n_head must be ≥ 1")
        need(self.n_embd % self.n_head == 0,
             f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        need(self.mlp_ratio >= 1, f"mlp_ratio must be ≥ 1, got {self.mlp_ratio}")
        need(0 <= self.dropout < 1 and 0 <= self.attn_dropout < 1, "dropouts must be in [0, 1)")
        need(self.pos_embedding in ("decomposed", "learned"),
             f"pos_embedding must be 'decomposed' or 'learned', got {self.pos_embedding!r}")

    @property
    def sequence_layout(self) -> SequenceLayout:
        """Where every token sits in the L-long sequence (§3.3)."""
        return SequenceLayout.from_config(self)

    @property
    def block_size(self) -> int:
        """L = l_v + N·(l_f + h·w), the longest sequence T processes (§3.3)."""
        return self.sequence_layout.length


# Named architectures (DiT-style registry): only the network fields; the sequence fields come from
# the data (codebook, annotations). Table 2 gives layers and heads; the widths are ours.
TRANSFORMER_SIZES: dict[str, dict[str, object]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=32),  # tests
    "demo": dict(n_layer=4, n_head=4, n_embd=256),  # the demo world on CPU
    "paper-6x4": dict(n_layer=6, n_head=4, n_embd=512, pos_embedding="learned"),  # Table 2, row 1
    "paper-12x8": dict(n_layer=12, n_head=8, n_embd=768, pos_embedding="learned"),  # Table 2, row 2
    "paper-bair": dict(n_layer=24, n_head=16, n_embd=1024, pos_embedding="decomposed"),  # rows 4–7
}


def transformer_config(size: str, **fields: object) -> TransformerConfig:
    """A ``TransformerConfig`` of the named size with the given sequence/other fields."""
    if size not in TRANSFORMER_SIZES:
        raise ValueError(f"unknown transformer size {size!r}; known: {sorted(TRANSFORMER_SIZES)}")
    return TransformerConfig(**{**TRANSFORMER_SIZES[size], **fields})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- KV cache


class KVCache:
    """Per-layer key/value buffers (B, heads, max_len, head_dim) and the number of cached positions.

    Buffers are allocated at the first write, with the dtype and device of the keys. Inference only
    (the writes are in-place copies); use under ``torch.no_grad()``.
    """

    def __init__(self, n_layer: int, batch_size: int, max_len: int) -> None:
        self.batch_size = batch_size
        self.max_len = max_len  # normally the model's L
        self.length = 0  # positions 0 … length−1 are cached
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer
        self.tokens: torch.Tensor | None = None  # (B, max_len) token ids (the copy path's source)

    def write_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Store token ids (B, T) at positions length … length+T−1; return ids 0 … length+T−1."""
        end = self.length + tokens.shape[1]
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions exceed max_len {self.max_len}")
        if self.tokens is None:
            self.tokens = tokens.new_zeros(self.batch_size, self.max_len)
        self.tokens[:, self.length:end] = tokens
        return self.tokens[:, :end]

    def append(self, layer: int, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, heads, T, d) at positions length … length+T−1 of ``layer``; return the
        layer's keys and values for positions 0 … length+T−1. ``length`` advances in ``advance``."""
        b, h, t, d = k.shape
        if b != self.batch_size:
            raise ValueError(f"KVCache: built for batch {self.batch_size}, got {b}")
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KVCache: {end} positions exceed max_len {self.max_len}")
        if self.keys[layer] is None:
            self.keys[layer] = k.new_empty(b, h, self.max_len, d)
            self.values[layer] = v.new_empty(b, h, self.max_len, d)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end].to(k.dtype), values[:, :, :end].to(v.dtype)

    def advance(self, n: int) -> None:
        """Mark n more positions as cached (after every layer appended them)."""
        self.length += n

    def crop(self, n: int) -> None:
        """Keep positions 0 … n−1 only (roll back; the buffers are reused)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"KVCache.crop: {n} outside 0..{self.length}")
        self.length = n


# ----------------------------------------------------------------------------- modules


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (scaled dot-product, fused by PyTorch)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, T, D) for positions cache.length … cache.length+T−1 (0 … T−1 without a cache)."""
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (y.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for y in (q, k, v))
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, past + T, d)
        past = k.shape[2] - t
        dropout = self.attn_dropout if self.training else 0.0
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif t == 1:  # one new query sees every cached position
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:  # query i is position past + i: it sees keys 0 … past + i (bottom-right causal mask)
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward layer: D → mlp_ratio·D → D with GELU."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class PositionalEmbedding(nn.Module):
    """Positions → (B or 1, T, D) embeddings (App. A "Transformer", Table 2 "Dec.", App. E).

    decomposed: time[t] + space[s] for slot s of frame t; the class token has its own vector; the
    end frame's token j is space[l_f + j] (the slot of frame code j). learned: one vector per
    position. Both: the end frame's tokens also get gap[min(end_gap, max_end_gap)].
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        lay = cfg.sequence_layout
        self.mode = cfg.pos_embedding
        self.default_gap = cfg.num_frames - 1  # the end frame is the window's last frame
        self.max_end_gap = cfg.max_end_gap
        kinds, time, slot = lay.kinds(), lay.timesteps(), lay.slots()
        if self.mode == "decomposed":
            self.time = nn.Embedding(cfg.num_frames, cfg.n_embd)  # timestep term
            self.space = nn.Embedding(lay.frame_stride, cfg.n_embd)  # within-frame term
            self.video = nn.Embedding(1, cfg.n_embd) if lay.num_classes > 0 else None  # class token
        else:
            self.absolute = nn.Embedding(lay.length, cfg.n_embd)
        self.gap = nn.Embedding(cfg.max_end_gap + 1, cfg.n_embd) if cfg.end_frame else None
        # (L,) index tables; derived from the config, so not saved in the state dict
        self.register_buffer("time_index", time.clamp(min=0), persistent=False)
        self.register_buffer("is_frame", (time >= 0).float()[:, None], persistent=False)
        self.register_buffer("slot_index", slot.clamp(min=0), persistent=False)
        self.register_buffer("has_slot", (slot >= 0).float()[:, None], persistent=False)
        is_label, is_end = (kinds == TokenKind.LABEL), (kinds == TokenKind.END_FRAME)
        self.register_buffer("is_label", is_label.float()[:, None], persistent=False)
        self.register_buffer("is_end", is_end.float()[:, None], persistent=False)
        # the same tables as python ints, for the one-position fast path (incremental decoding)
        self._time_list, self._slot_list = time.tolist(), slot.tolist()
        self._end_list = is_end.tolist()

    def forward(self, positions: torch.Tensor, end_gap: torch.Tensor | None = None,
                first: int | None = None) -> torch.Tensor:
        """positions: (T,) long in ⟦0, L⟦; end_gap: (B,) long ≥ 0, the end frame's timestep minus
        the window's first frame's (None: N − 1); first: positions[0] as a python int when the
        positions are consecutive (lets one position skip the table lookups; same values).
        → (B, T, D) with an end frame, else (1, T, D)."""
        if first is not None and positions.numel() == 1:
            return self._one(first, end_gap)
        if self.mode == "decomposed":
            pe = self.space(self.slot_index[positions]) * self.has_slot[positions]
            pe = pe + self.time(self.time_index[positions]) * self.is_frame[positions]
            if self.video is not None:
                pe = pe + self.video.weight[0] * self.is_label[positions]
        else:
            pe = self.absolute(positions)
        pe = pe[None]
        if self.gap is None:
            if end_gap is not None:
                raise ValueError("end_gap given, but the model has no end frame (end_frame=False)")
            return pe
        if end_gap is None:
            end_gap = torch.full((1,), self.default_gap, dtype=torch.long, device=positions.device)
        end_gap = torch.as_tensor(end_gap, device=positions.device).long().reshape(-1)
        if end_gap.numel() and int(end_gap.min()) < 0:
            raise ValueError(f"end_gap must be ≥ 0 (the end frame lies after the window's first "
                             f"frame), got {end_gap.tolist()}")
        gap = self.gap(end_gap.clamp(max=self.max_end_gap))  # (B, D)
        return pe + gap[:, None, :] * self.is_end[positions][None]

    def _gap(self, end_gap: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """(B or 1, D) gap embedding, after the checks of ``forward``."""
        assert self.gap is not None
        if end_gap is None:
            return self.gap.weight[self.default_gap][None]
        end_gap = torch.as_tensor(end_gap, device=device).long().reshape(-1)
        if end_gap.numel() and int(end_gap.min()) < 0:
            raise ValueError(f"end_gap must be ≥ 0 (the end frame lies after the window's first "
                             f"frame), got {end_gap.tolist()}")
        return self.gap(end_gap.clamp(max=self.max_end_gap))

    def _one(self, pos: int, end_gap: torch.Tensor | None) -> torch.Tensor:
        """``forward`` for the single position ``pos``: the terms that the masks keep, added in
        the same order (the masked terms are exact zeros), so the values are identical."""
        if self.gap is None and end_gap is not None:
            raise ValueError("end_gap given, but the model has no end frame (end_frame=False)")
        t, slot = self._time_list[pos], self._slot_list[pos]
        if self.mode == "decomposed":
            if slot >= 0:
                pe = self.space.weight[slot]
                if t >= 0:
                    pe = pe + self.time.weight[t]
            else:  # the class token
                pe = self.video.weight[0]
        else:
            pe = self.absolute.weight[pos]
        pe = pe[None, None]  # (1, 1, D)
        if self.gap is None:
            return pe
        gap = self._gap(end_gap, pe.device)  # checks end_gap even where it adds nothing
        return pe + gap[:, None, :] if self._end_list[pos] else pe.expand(gap.shape[0], 1, -1)


class TransformerOutput(NamedTuple):
    """What ``CCVSTransformer.forward`` returns."""

    logits: torch.Tensor  # (B, T, q) ô_i: scores of token i+1 over the frame codebook (§3.3)
    loss: torch.Tensor | None  # () Eq. (8) averaged over predicted frame tokens, if targets given


def frame_token_targets(targets: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """(B, T) tokens, (T,) kinds → (B, T−1) targets of ô_0 … ô_{T−2}: token i+1 where it is a
    frame token, IGNORE_INDEX elsewhere (annotations are given, never predicted)."""
    shifted = targets[:, 1:].clone()
    shifted[:, kinds[1:].to(targets.device) != TokenKind.FRAME] = IGNORE_INDEX
    return shifted


def frame_token_loss(logits: torch.Tensor, targets: torch.Tensor,
                     kinds: torch.Tensor) -> torch.Tensor:
    """Eq. (8): mean cross-entropy of ô_{i−1} vs token i over the frame tokens i (fp32)."""
    tgt = frame_token_targets(targets, kinds).reshape(-1)
    total = F.cross_entropy(logits[:, :-1].float().reshape(tgt.numel(), -1), tgt,
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (tgt != IGNORE_INDEX).sum().clamp(min=1)


@torch.no_grad()
def frame_token_accuracy(logits: torch.Tensor, targets: torch.Tensor,
                         kinds: torch.Tensor) -> torch.Tensor:
    """Share of predicted frame tokens whose argmax ô_{i−1} equals token i; () float."""
    tgt = frame_token_targets(targets, kinds)
    keep = tgt != IGNORE_INDEX
    hits = (logits[:, :-1].argmax(-1) == tgt) & keep
    return hits.sum().float() / keep.sum().clamp(min=1)


class CCVSTransformer(nn.Module):
    """T: token embeddings + positional embedding → pre-norm blocks → LN → head over q (§3.3)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.layout = lay = config.sequence_layout
        d = cfg.n_embd
        # One table per vocabulary; annotation tables have one extra row for their null id.
        tables = {"frame": nn.Embedding(cfg.frame_vocab + int(cfg.end_frame), d)}
        if cfg.state:
            tables["state"] = nn.Embedding(cfg.state_bins + 1, d)
        if cfg.audio_tokens_per_frame:
            tables["audio"] = nn.Embedding(cfg.audio_vocab + 1, d)
        if cfg.layout_tokens_per_frame:
            tables["layout"] = nn.Embedding(cfg.layout_vocab + 1, d)
        if cfg.num_classes:
            tables["label"] = nn.Embedding(cfg.num_classes + 1, d)
        self.tokens = nn.ModuleDict(tables)
        self.pos = PositionalEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d, bias=cfg.bias)
        self.head = nn.Linear(d, cfg.frame_vocab, bias=False)
        self.register_buffer("kinds", lay.kinds(), persistent=False)  # (L,)
        prev = lay.prev_sources()
        self.register_buffer("prev_src", prev.clamp(min=0), persistent=False)  # (L,) copy path
        self.register_buffer("prev_on", (prev >= 0), persistent=False)
        self._prev_list = prev.tolist()
        self._kind_list = lay.kinds().tolist()  # python copies for the one-token fast path
        self._table_of = {int(kind): (name, high) for kind, name, high in self._tables()}
        self._init_weights()

    # kind → (table name, highest valid id); END_FRAME reads the frame table
    def _tables(self) -> list[tuple[TokenKind, str, int]]:
        lay = self.layout
        out = [(TokenKind.FRAME, "frame", lay.frame_vocab - 1)]
        for kind, name in ((TokenKind.STATE, "state"), (TokenKind.AUDIO, "audio"),
                           (TokenKind.LAYOUT, "layout"), (TokenKind.LABEL, "label")):
            if name in self.tokens:
                out.append((kind, name, lay.null_id(kind)))
        if lay.end_frame:
            out.append((TokenKind.END_FRAME, "frame", lay.null_id(TokenKind.END_FRAME)))
        return out

    def _init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections / √(2·n_layer)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def low_precision(self, weights: Literal["fp32", "bf16", "int8"]) -> CCVSTransformer:
        """An inference copy of T whose Linear layers (q/k/v, attention and MLP projections, the
        head: every weight a token step reads, but the embeddings) hold ``weights`` precision
        (``LowPrecisionLinear``); embeddings, LayerNorms, attention and the KV cache stay fp32, and
        so does the head when the copy path (``prev_frame_input``) uses it as an embedding.
        ``"fp32"`` returns ``self``. The copy shares nothing with ``self`` that training updates;
        make a new one after changing the weights. For sampling (``SamplerConfig.weights``)."""
        if weights == "fp32":
            return self
        if weights not in ("bf16", "int8"):
            raise ValueError(f"low_precision: weights must be 'fp32', 'bf16' or 'int8', "
                             f"got {weights!r}")
        # the copy path reads the head's weight as an embedding table: that one stays fp32
        keep_head = self.config.prev_frame_input
        swap = {id(m): m for m in self.modules() if isinstance(m, nn.Linear)
                and not (keep_head and m is self.head)}
        new = copy.deepcopy(self, dict(swap))  # the Linears to swap are not copied, but replaced
        new.__dict__.pop("forward", None)  # an instance-level forward (a wrapper) is not T's
        for parent in new.modules():
            for name, child in list(parent.named_children()):
                if id(child) in swap:
                    setattr(parent, name, LowPrecisionLinear(child, weights))
        return new.eval().requires_grad_(False)

    def new_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` (default L) tokens."""
        return KVCache(self.config.n_layer, batch_size, max_len or self.layout.length)

    def _embed_one(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """``embed`` of one position (B, 1): its kind is known, so one table, no index search."""
        kind = self._kind_list[pos]
        name, high = self._table_of[kind]
        low_id, high_id = torch.aminmax(tokens)
        if int(low_id) < 0 or int(high_id) > high:
            raise ValueError(f"CCVSTransformer: {TokenKind(kind).name} token ids must be in "
                             f"[0, {high}], got [{int(low_id)}, {int(high_id)}]")
        return F.embedding(tokens, self.tokens[name].weight)

    def _copy_path(self, tokens: torch.Tensor, start_pos: int,
                   kv_cache: KVCache | None) -> torch.Tensor:
        """(B, T, D): for each position with a ``prev_sources`` entry, the head's row of the
        previous frame's code there (zeros elsewhere). Sources come from ``tokens`` (start_pos 0)
        or from the ids the cache has seen."""
        t = tokens.shape[1]
        if kv_cache is not None:
            seen = kv_cache.write_tokens(tokens)
        elif start_pos == 0:
            seen = tokens
        else:
            raise ValueError("prev_frame_input: positions after 0 need the KV cache (its token ids)")
        w = self.head.weight  # (q, D): frame codes only
        if t == 1:
            src = self._prev_list[start_pos]
            if src < 0:
                return w.new_zeros(tokens.shape[0], 1, w.shape[1])
            return F.embedding(seen[:, src:src + 1], w)
        sl = slice(start_pos, start_pos + t)
        return F.embedding(seen[:, self.prev_src[sl]], w) * self.prev_on[sl, None].to(w.dtype)

    def embed(self, tokens: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """tokens (B, T), kinds (T,) → (B, T, D) token embeddings, each from its kind's table."""
        x = None
        for kind, name, high in self._tables():
            idx = (kinds == kind).nonzero().squeeze(1)
            if idx.numel() == 0:
                continue
            tok = tokens[:, idx]
            if int(tok.min()) < 0 or int(tok.max()) > high:
                raise ValueError(f"CCVSTransformer: {kind.name} token ids must be in [0, {high}], "
                                 f"got [{int(tok.min())}, {int(tok.max())}]")
            e = self.tokens[name](tok)
            if x is None:
                x = e.new_zeros(tokens.shape[0], tokens.shape[1], e.shape[-1])
            x = x.index_copy(1, idx, e)  # out of place: autograd-safe
        assert x is not None  # every layout position has a kind with a table
        return x

    def forward(self, tokens: torch.Tensor, end_gap: torch.Tensor | None = None,
                targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                start_pos: int = 0, last_only: bool = False) -> TransformerOutput:
        """tokens: (B, T) long, positions start_pos … start_pos+T−1 of the layout (§3.3; kinds are
        the layout's); end_gap: (B,) long end-frame gap (App. E; None = N − 1, the window's last
        frame); targets: (B, T), usually ``tokens`` → loss of Eq. (8) on frame tokens only;
        kv_cache: continue from its cached positions (start_pos must equal ``kv_cache.length``);
        last_only: score the last position only (sampling: logits (B, 1, q); no targets).
        Returns logits (B, T, q), ô_i scoring token i+1, and the loss."""
        b, t = tokens.shape
        if kv_cache is not None and start_pos != kv_cache.length:
            raise ValueError(f"start_pos {start_pos} != kv_cache.length {kv_cache.length}")
        if not (0 <= start_pos and start_pos + t <= self.layout.length):
            raise ValueError(f"positions {start_pos}…{start_pos + t - 1} outside the "
                             f"sequence of L = {self.layout.length}")
        positions = torch.arange(start_pos, start_pos + t, device=tokens.device)
        kinds = self.kinds[start_pos:start_pos + t]
        # one token (incremental decoding): its kind and position are python ints, no lookups
        emb = self._embed_one(tokens, start_pos) if t == 1 else self.embed(tokens, kinds)
        if self.config.prev_frame_input:
            emb = emb + self._copy_path(tokens, start_pos, kv_cache)
        x = self.drop(emb + self.pos(positions, end_gap, first=start_pos))
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache, i)
        if kv_cache is not None:
            kv_cache.advance(t)
        if last_only:
            if targets is not None:
                raise ValueError("last_only=True scores one position: no loss, pass targets=None")
            x = x[:, -1:]
        logits = self.head(self.ln_f(x))
        loss = frame_token_loss(logits, targets, kinds) if targets is not None else None
        return TransformerOutput(logits=logits, loss=loss)
