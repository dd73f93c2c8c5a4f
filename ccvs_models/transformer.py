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

Positional embedding (App. A "Transformer", Table 2 "Dec."; ``ccvs_models.positional``, which
describes both modes): the paper's spatio-temporal decomposition (``pos_embedding="decomposed"``)
or a plain learned embedding per position. The end frame's tokens also get a learned embedding of
their gap to the window's first frame (App. E), clamped to ``max_end_gap``, so the sampler can
slide the window over videos longer than N and lower the gap as it goes.

Copy path (ours, not in the paper; ``prev_frame_input``, off by default): position i also adds the
head's row of the code at the slot it predicts in the previous frame (``SequenceLayout.
prev_sources``), so T starts from "repeat the previous frame" and learns what changes. Most codes
of a static camera's video repeat (74 % on the demo world); the paper's T must find the previous
frame by attention, a phase transition that a 4-layer T over q = 512 codes had not crossed after
1,200 steps on synthetic repeating clips (docs/history/benchmarks-2026-11.md, "transformer"), beyond a CPU demo's budget.
With the KV cache, the source ids come from ``KVCache.write_tokens``. In the same spirit, and off by
default too, ``state_field``, ``end_frame_input``, ``audio_input`` and ``label_input`` place the
state, the end frame, the sound and the class at the frame tokens they concern
(``ccvs_models.control_inputs``).

Incremental decoding: ``forward(..., kv_cache=KVCache, start_pos=...)`` appends the keys/values of
the new tokens to preallocated per-layer buffers; cached and uncached forwards give the same
logits. ``KVCache.crop(n)`` rolls it back. The cache is for inference (run under ``torch.no_grad``).

This module holds the config, the sizes registry, Eq. (8)'s loss helpers and ``CCVSTransformer``;
the building blocks (``KVCache``, ``CausalSelfAttention``, ``MLP``, ``Block``) are in
``ccvs_models.transformer_blocks`` and ``PositionalEmbedding`` in ``ccvs_models.positional``; both
are re-exported here, so ``from ccvs_models.transformer import ...`` keeps working.
"""

from __future__ import annotations

import copy
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.control_inputs import EndFrameInput, StateField, TokenInput
from ccvs_models.low_precision import LowPrecisionLinear
from ccvs_models.positional import PositionalEmbedding
from ccvs_models.sequence_layout import IGNORE_INDEX, TokenKind
from ccvs_models.transformer_config import TransformerConfig
from ccvs_models.transformer_blocks import Block, KVCache


# ----------------------------------------------------------------------------- model


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
        # ours: controls placed at the frame tokens they concern (ccvs_models.control_inputs)
        self.state_field = StateField(lay, d) if cfg.state_field else None
        self.end_input = EndFrameInput(lay, d, cfg.max_end_gap) if cfg.end_frame_input else None
        self.audio_input = (TokenInput(lay.audio_sources(), cfg.audio_vocab, d)
                            if cfg.audio_input else None)
        self.label_input = (TokenInput(lay.label_sources(), cfg.num_classes, d)
                            if cfg.label_input else None)
        self.register_buffer("kinds", lay.kinds(), persistent=False)  # (L,)
        prev = lay.prev_sources()
        self.register_buffer("prev_src", prev.clamp(min=0), persistent=False)  # (L,) copy path
        self.register_buffer("prev_on", (prev >= 0), persistent=False)
        self._prev_list = prev.tolist()
        self._kind_list = lay.kinds().tolist()  # python copies for the one-token fast path
        self._table_of = {int(kind): (name, high) for kind, name, high in self._tables()}
        self._init_weights()
        for module in self._control_inputs():  # they start as the paper's T: zero
            for p in module.parameters():
                nn.init.zeros_(p)

    def _control_inputs(self) -> list[nn.Module]:
        return [m for m in (self.state_field, self.end_input, self.audio_input, self.label_input)
                if m is not None]

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
        keep_head = self.config.prev_frame_input or self.config.end_frame_input
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

    def _seen(self, tokens: torch.Tensor, start_pos: int, kv_cache: KVCache | None) -> torch.Tensor:
        """Token ids of positions 0 … start_pos + T − 1: ``tokens`` (start_pos 0) or the ids the
        cache has seen (the inputs that read earlier tokens: copy path, control inputs)."""
        if kv_cache is not None:
            return kv_cache.write_tokens(tokens)
        if start_pos == 0:
            return tokens
        raise ValueError("prev_frame_input and the control inputs: positions after 0 "
                         "need the KV cache (its token ids)")

    def _copy_path(self, tokens: torch.Tensor, start_pos: int, seen: torch.Tensor) -> torch.Tensor:
        """(B, T, D): for each position with a ``prev_sources`` entry, the head's row of the
        previous frame's code there (zeros elsewhere); ``seen``: ids of positions 0 …"""
        t = tokens.shape[1]
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
        cfg = self.config
        if (cfg.prev_frame_input or cfg.state_field or cfg.end_frame_input or cfg.audio_input
                or cfg.label_input):
            seen = self._seen(tokens, start_pos, kv_cache)
            if cfg.prev_frame_input:
                emb = emb + self._copy_path(tokens, start_pos, seen)
            if self.state_field is not None:
                emb = emb + self.state_field(seen, start_pos, t)
            if self.end_input is not None:
                emb = emb + self.end_input(seen, start_pos, t, end_gap, self.head.weight)
            for control in (self.audio_input, self.label_input):
                if control is not None:
                    emb = emb + control(seen, start_pos, t)
        x = self.drop(emb + self.pos(positions, end_gap, first=start_pos))
        for i, block in enumerate(self.blocks):
            x = block(x, kv_cache, i)
        if kv_cache is not None:
            kv_cache.advance(t)
        first = start_pos
        if last_only:
            if targets is not None:
                raise ValueError("last_only=True scores one position: no loss, pass targets=None")
            x = x[:, -1:]
            first = start_pos + t - 1
        logits = self.head(self.ln_f(x))
        if self.end_input is not None:
            logits = self.end_input.pointer(logits, seen, first, end_gap)
        loss = frame_token_loss(logits, targets, kinds) if targets is not None else None
        return TransformerOutput(logits=logits, loss=loss)


__all__ = [
    "CCVSTransformer",
    "TransformerOutput",
    "frame_token_accuracy",
    "frame_token_loss",
    "frame_token_targets",
]
