"""The building blocks of the controllable transformer T (§3.3, App. A "Transformer"): the KV cache
for incremental decoding (``KVCache``), multi-head causal self-attention, the position-wise MLP and
the pre-norm ``Block``. ``ccvs_models.transformer`` assembles them into ``CCVSTransformer`` (and
re-exports them). Module attribute names are the checkpoint's state-dict keys: keep them.

Incremental decoding: ``CausalSelfAttention.forward(x, cache, layer)`` appends the keys/values of
the new tokens to the cache's preallocated per-layer buffers; cached and uncached forwards give the
same outputs. ``KVCache.crop(n)`` rolls it back. The cache is for inference (``torch.no_grad``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.transformer_config import TransformerConfig


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


def _cpu_autocast() -> bool:
    """Whether CPU autocast is on (torch ≥ 2.4 takes the device type; 2.3 has its own call)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch 2.3
        return torch.is_autocast_cpu_enabled()


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
        with contextlib.ExitStack() as stack:
            if x.device.type == "cpu" and _cpu_autocast():
                # bf16 autocast on a CPU: the fused attention runs in fp32, the projections in
                # bf16. Its bf16 backward measured 1.6× slower than fp32's (BENCHMARKS.md
                # "precision"): the demo T step 1.38× faster than fp32 this way, 1.15× without
                stack.enter_context(torch.autocast("cpu", enabled=False))
                q, k, v = q.float(), k.float(), v.float()
            if past == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
            elif t == 1:  # one new query sees every cached position
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            else:  # query i is position past + i: it sees keys 0 … past + i (bottom-right causal)
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
