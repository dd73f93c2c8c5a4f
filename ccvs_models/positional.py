"""T's positional embedding (App. A "Transformer", Table 2 "Dec.", App. E), used by
``ccvs_models.transformer.CCVSTransformer`` (which re-exports ``PositionalEmbedding``).

``pos_embedding="decomposed"`` is the paper's spatio-temporal decomposition, a timestep term for
frame t plus a position-within-frame term over the l_f + h·w slots of a frame's portion; video-level
tokens get their own learned positions, except the end frame's h·w tokens, which reuse the
within-frame terms of the h·w frame-code slots (they are a frame). ``"learned"`` is a plain learned
embedding of each of the L positions.

End frame (App. E, point-to-point): its positional embedding "reflects the gap with current
predicted frames". Both modes add a learned embedding of ``end_gap`` = (timestep of the end frame)
− (timestep of the window's first frame) to the end frame's tokens, clamped to ``max_end_gap``
(gaps beyond it share the "far" embedding).
"""

from __future__ import annotations


import torch
from torch import nn

from ccvs_models.sequence_layout import TokenKind

from ccvs_models.transformer_config import TransformerConfig


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
