"""Control inputs (ours, not in the paper): each control placed at the frame tokens it concerns.

The paper's T (§3.3) reads the state (§4) and the end frame (App. E) as tokens of its sequence
and must learn, by attention, which frame tokens they concern: the gripper's (x, y) bins say which
of the h·w cells the gripper covers, the end frame's code j is the target of every later frame's
code j. A 4-layer T trained for minutes on the demo world did not learn either (its loss did not
move when the state or the end frame was nulled: ``val/gain/<kind>``, BENCHMARKS.md "controls").
These modules hand each frame-code position what its control says about it, as the copy path
(``TransformerConfig.prev_frame_input``) hands it the previous frame's code:

- :class:`StateField`: at a position scoring frame t's code j, a learned embedding of where frame
  t's state lies relative to cell j (offsets in half cells, clamped to ± ``radius`` cells: a
  (4·radius + 1)² table). It assumes the state bins span the frame uniformly (tokenize's
  ``StateBins.for_frame``), so bin b of B is at (b + ½) / B of the frame's width (or height).
- :class:`EndFrameInput`: at a position scoring code j of frame t, the head's row of the end
  frame's code j (the same embedding as the copy path's) times a learned gate of the frames left
  until the end frame, d = end_gap − t (App. E's gap, as the window sees it), plus a learned
  embedding of d. Its :meth:`~EndFrameInput.pointer` also adds a learned β(d) to the logit of
  that code (a pointer, as in copy/pointer networks): at d = 0 the code to predict *is* the end
  frame's, which T then learns in a few steps instead of through its whole stack (Table D4's
  control-point consistency; the gate alone left the end frame's SSIM within 0.015 of
  prediction's on the demo).

- :class:`TokenInput`: at a position scoring a code of frame t, the mean of learned embeddings
  of the control tokens that concern frame t: its l_a sound codes (``audio_input``: the demo's
  sound is made by the motion of that frame) or the clip's class token (``label_input``: every
  frame of a clip moves like its class). T reads both from the prefix by attention in the paper;
  a small T trained for minutes did not (``val/gain/audio`` and ``val/gain/label`` ≈ 0).

All start at zero (a T with them begins as the paper's T) and add nothing where the control is
its null id, so conditioning dropout still trains the unconditioned T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ccvs_models.sequence_layout import SequenceLayout


class StateField(nn.Module):
    """State (x, y) → an embedding at every frame-code position of its frame (see module doc)."""

    def __init__(self, layout: SequenceLayout, n_embd: int, radius: int = 3) -> None:
        super().__init__()
        self.bins = layout.state_bins
        self.radius = radius  # in cells: offsets beyond it share the border entries
        self.width = 4 * radius + 1  # half-cell offsets −2R … 2R
        self.table = nn.Embedding(self.width ** 2, n_embd)
        nn.init.zeros_(self.table.weight)
        _, j = layout.scored_codes()
        h, w = layout.frame_height, layout.frame_width
        self.register_buffer("src", layout.state_sources().clamp(min=0), persistent=False)
        self.register_buffer("on", j >= 0, persistent=False)
        jj = j.clamp(min=0)
        # cell j's centre as a fraction of the frame, and the frame size in half cells
        self.register_buffer("centre", torch.stack([(jj % w + 0.5) / w, (jj // w + 0.5) / h], 1),
                             persistent=False)
        self.register_buffer("half_cells", torch.tensor([2.0 * w, 2.0 * h]), persistent=False)

    def forward(self, seen: torch.Tensor, start: int, count: int) -> torch.Tensor:
        """seen (B, ≥ start + count) token ids of positions 0 …; → (B, count, D) for positions
        start … start + count − 1 (zero where no code is scored or the state is null)."""
        sl = slice(start, start + count)
        ids = seen[:, self.src[sl]]  # (B, count, 2) the scored frame's x, y bins
        present = self.on[sl][None] & (ids < self.bins).all(-1)
        where = (ids.clamp(max=self.bins - 1).float() + 0.5) / self.bins  # fraction of the frame
        offset = torch.round((where - self.centre[sl]) * self.half_cells)
        q = (offset.clamp(-2 * self.radius, 2 * self.radius) + 2 * self.radius).long()
        emb = self.table(q[..., 1] * self.width + q[..., 0])
        return emb * present[..., None].to(emb.dtype)


class EndFrameInput(nn.Module):
    """The end frame's code j, gated by the frames left until it, at frame codes j (module doc)."""

    # β(d) = POINT_SCALE · w(d): Adam moves a weight by about the learning rate per step, and a
    # logit bias that wins must reach several nats within the few hundred steps of a demo. The
    # demo's T (150 steps, lr 3e-3) reached β(0) = 7.0, β(d ≥ 1) ≈ 2–3 with 50; with 10, β(0)
    # stayed near 1 and the end frame's SSIM gained +0.04 instead of +0.16 (BENCHMARKS.md)
    POINT_SCALE = 50.0

    def __init__(self, layout: SequenceLayout, n_embd: int, max_gap: int) -> None:
        super().__init__()
        self.frame_vocab = layout.frame_vocab
        self.max_gap = max_gap
        self.default_gap = layout.num_frames - 1  # as PositionalEmbedding: the window's last frame
        self.gate = nn.Embedding(max_gap + 2, 1)  # d = 0 … max_gap, then "already passed"
        self.distance = nn.Embedding(max_gap + 2, n_embd)
        self.point = nn.Embedding(max_gap + 2, 1)  # β(d) / POINT_SCALE, the pointer's logit bias
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.distance.weight)
        nn.init.zeros_(self.point.weight)
        t, _ = layout.scored_codes()
        self.register_buffer("src", layout.end_sources().clamp(min=0), persistent=False)
        self.register_buffer("on", t >= 0, persistent=False)
        self.register_buffer("time", t.clamp(min=0), persistent=False)

    def _read(self, seen: torch.Tensor, start: int, count: int,
              end_gap: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """→ codes (B, count) the end frame's code at each scored slot (clamped to ⟦0, q⟦),
        present (B, count) bool, d (B, count) frames left (max_gap + 1: passed)."""
        sl = slice(start, start + count)
        codes = seen[:, self.src[sl]]
        present = self.on[sl][None] & (codes < self.frame_vocab)
        if end_gap is None:
            end_gap = torch.full((seen.shape[0],), self.default_gap, dtype=torch.long,
                                 device=seen.device)
        left = end_gap.reshape(-1, 1).long() - self.time[sl][None]  # (B, count)
        d = torch.where(left < 0, torch.full_like(left, self.max_gap + 1),
                        left.clamp(max=self.max_gap))
        return codes.clamp(max=self.frame_vocab - 1), present, d

    def forward(self, seen: torch.Tensor, start: int, count: int, end_gap: torch.Tensor | None,
                head: torch.Tensor) -> torch.Tensor:
        """seen (B, ≥ start + count) token ids; end_gap (B,) the end frame's timestep minus the
        window's first (None: N − 1); head (q, D) the head's weight (frame-code embeddings)
        → (B, count, D) for positions start … start + count − 1."""
        codes, present, d = self._read(seen, start, count, end_gap)
        emb = F.embedding(codes, head) * self.gate(d) + self.distance(d)
        return emb * present[..., None].to(emb.dtype)

    def pointer(self, logits: torch.Tensor, seen: torch.Tensor, start: int,
                end_gap: torch.Tensor | None) -> torch.Tensor:
        """logits (B, count, q) of positions start … start + count − 1 → the same plus β(d) at
        the end frame's code of each scored slot."""
        codes, present, d = self._read(seen, start, logits.shape[1], end_gap)
        beta = self.POINT_SCALE * self.point(d).squeeze(-1) * present.to(logits.dtype)
        return logits.scatter_add(-1, codes[..., None], beta[..., None].to(logits.dtype))


class TokenInput(nn.Module):
    """Control tokens at given positions → the mean of their embeddings at frame-code positions.

    ``sources`` (L, k): for each position, the k positions whose tokens concern the frame code it
    scores (−1 rows: none); their ids are in ⟦0, vocab⟦, the null id ``vocab`` (dropped or absent
    control) adds nothing."""

    def __init__(self, sources: torch.Tensor, vocab: int, n_embd: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.table = nn.Embedding(vocab, n_embd)
        nn.init.zeros_(self.table.weight)
        self.register_buffer("src", sources.clamp(min=0), persistent=False)
        self.register_buffer("on", (sources >= 0).all(-1), persistent=False)

    def forward(self, seen: torch.Tensor, start: int, count: int) -> torch.Tensor:
        """seen (B, ≥ start + count) token ids of positions 0 …; → (B, count, D) for positions
        start … start + count − 1."""
        sl = slice(start, start + count)
        ids = seen[:, self.src[sl]]  # (B, count, k)
        present = self.on[sl][None, :, None] & (ids < self.vocab)
        emb = self.table(ids.clamp(max=self.vocab - 1))
        emb = emb * present[..., None].to(emb.dtype)
        return emb.sum(2) / present.sum(2, keepdim=True).clamp(min=1).to(emb.dtype)
