"""T's configuration (§3.3, App. A "Transformer", Table 2): the sequence it models and its network.

A leaf module: ``ccvs_models.transformer`` (the model), its building blocks
(``transformer_blocks``, ``positional``) and the pipeline's params all import the config from
here, so no module needs the model to know its shape.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ccvs_models.sequence_layout import SequenceLayout


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
    # with attention, which a small T on the demo's CPU budget did not (docs/history/benchmarks-2026-11.md, "transformer").
    prev_frame_input: bool = False
    # ours, not in the paper: each control at the frame tokens it concerns (ccvs_models.
    # control_inputs). state_field: where frame t's state lies relative to each of its cells;
    # end_frame_input: the end frame's code at each slot, gated by the frames left until it.
    # Both need their control in the sequence (state / end_frame) and start as the paper's T.
    state_field: bool = False
    end_frame_input: bool = False
    # ours, not in the paper: audio_input: frame t's sound codes at frame t's codes; label_input:
    # the class at every frame code (ccvs_models.control_inputs.TokenInput). Each needs its control
    # in the sequence (audio tokens / a class token) and starts as the paper's T.
    audio_input: bool = False
    label_input: bool = False

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
        need(not self.state_field or self.state, "state_field needs state tokens (state=True)")
        need(not self.end_frame_input or self.end_frame,
             "end_frame_input needs the end frame (end_frame=True)")
        need(not self.audio_input or self.audio_tokens_per_frame > 0,
             "audio_input needs audio tokens (audio_tokens_per_frame > 0)")
        need(not self.label_input or self.num_classes > 0,
             "label_input needs a class token (num_classes > 0)")
        need(self.pos_embedding in ("decomposed", "learned"),
             f"pos_embedding must be 'decomposed' or 'learned', got {self.pos_embedding!r}")

    @property
    def sequence_layout(self) -> SequenceLayout:
        """Where every token sits in the L-long sequence (§3.3)."""
        return SequenceLayout(
            num_frames=self.num_frames, frame_height=self.frame_height,
            frame_width=self.frame_width, frame_vocab=self.frame_vocab,
            state_bins=self.state_bins if self.state else 0,
            audio_tokens=self.audio_tokens_per_frame, audio_vocab=self.audio_vocab,
            layout_tokens=self.layout_tokens_per_frame, layout_vocab=self.layout_vocab,
            num_classes=self.num_classes, end_frame=self.end_frame,
        )

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
