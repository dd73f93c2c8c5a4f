"""The token sequence layout of T (§3.3, Fig. 2; App. E): where every token of the L-long sequence
sits and which vocabulary it uses.

    L = l_v + N · (l_f + h·w)                                               (§3.3)

l_v video-level tokens first (class label, end frame), then for each frame its l_f frame-level
annotation tokens (state x, y; audio; layout) followed by its h·w frame codes. Pure python/torch,
no parameters; ``ccvs_models.transformer`` builds T on it (``TransformerConfig.sequence_layout``, ``ccvs_models.transformer_config``).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

import torch


IGNORE_INDEX = -100  # cross-entropy target of positions that are not predicted (annotations)


class TokenKind(enum.IntEnum):
    """Which vocabulary a sequence position uses."""

    FRAME = 0  # a frame code, ⟦0, q⟦ — the only kind T predicts (Eq. (8))
    STATE = 1  # a state bin, ⟦0, B⟦ (x then y, 2 per frame)
    AUDIO = 2  # a sound-VQ code, ⟦0, q_a⟦ (l_a per frame)
    LAYOUT = 3  # a layout-VQ code, ⟦0, q_l⟦ (l_l per frame)
    LABEL = 4  # a class label, ⟦0, num_classes⟦ (1 per video)
    END_FRAME = 5  # a frame code of the point-to-point end frame (h·w per video, App. E)


class Sequence(NamedTuple):
    """An assembled token sequence."""

    tokens: torch.Tensor  # (B, L') long, L' = l_v + n·(l_f + h·w) for n ≤ N frames
    kinds: torch.Tensor  # (L',) long, the TokenKind of every position


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
    """The token layout of §3.3 (pure python/torch; no parameters).

    Video-level tokens first (class label, then the end frame's h·w tokens), then N frame portions
    of ``frame_stride = l_f + h·w`` tokens each: state (x, y), audio (l_a), layout (l_l), frame codes.
    The vocab sizes are kept here so the layout can check ids and knows each kind's null id.
    """

    num_frames: int  # N
    frame_height: int  # h
    frame_width: int  # w
    frame_vocab: int  # q
    state_bins: int = 0  # B (0 = no state tokens)
    audio_tokens: int = 0  # l_a
    audio_vocab: int = 0  # q_a
    layout_tokens: int = 0  # l_l
    layout_vocab: int = 0  # q_l
    num_classes: int = 0  # 0 = no label token
    end_frame: bool = False  # the end frame's h·w tokens (App. E)

    # --- sizes
    @property
    def tokens_per_frame(self) -> int:
        """h·w."""
        return self.frame_height * self.frame_width

    @property
    def state_tokens(self) -> int:
        """2 when the state (x, y) is on, else 0."""
        return 2 if self.state_bins > 0 else 0

    @property
    def video_len(self) -> int:
        """l_v: class token + the end frame's h·w tokens."""
        return int(self.num_classes > 0) + self.tokens_per_frame * int(self.end_frame)

    @property
    def frame_annotation_len(self) -> int:
        """l_f = 2 (state) + l_a + l_l."""
        return self.state_tokens + self.audio_tokens + self.layout_tokens

    @property
    def frame_stride(self) -> int:
        """l_f + h·w, the tokens of one annotated frame."""
        return self.frame_annotation_len + self.tokens_per_frame

    @property
    def length(self) -> int:
        """L = l_v + N·(l_f + h·w)."""
        return self.video_len + self.num_frames * self.frame_stride

    def length_for(self, n_frames: int) -> int:
        """Sequence length holding the video level and the first ``n_frames`` frames."""
        return self.video_len + n_frames * self.frame_stride

    # --- offsets
    @property
    def label_position(self) -> int | None:
        """Position of the class token, or None."""
        return 0 if self.num_classes > 0 else None

    @property
    def end_frame_slice(self) -> slice | None:
        """Positions of the end frame's h·w tokens (row-major), or None."""
        if not self.end_frame:
            return None
        start = int(self.num_classes > 0)
        return slice(start, start + self.tokens_per_frame)

    def frame_offset(self, t: int) -> int:
        """First position of frame t's portion (its first annotation token)."""
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside 0..{self.num_frames - 1}")
        return self.video_len + t * self.frame_stride

    def segment(self, t: int, kind: TokenKind) -> slice:
        """Positions of frame t's tokens of a frame-level ``kind`` (empty slice if absent)."""
        base = self.frame_offset(t)
        sizes = [(TokenKind.STATE, self.state_tokens), (TokenKind.AUDIO, self.audio_tokens),
                 (TokenKind.LAYOUT, self.layout_tokens), (TokenKind.FRAME, self.tokens_per_frame)]
        for k, n in sizes:
            if k == kind:
                return slice(base, base + n)
            base += n
        raise ValueError(f"{kind.name} is not a frame-level kind")

    # --- per-position tables, (L,) long/bool tensors on the CPU
    def _frame_portion_kinds(self) -> list[int]:
        return ([TokenKind.STATE] * self.state_tokens + [TokenKind.AUDIO] * self.audio_tokens
                + [TokenKind.LAYOUT] * self.layout_tokens
                + [TokenKind.FRAME] * self.tokens_per_frame)

    def kinds(self) -> torch.Tensor:
        """(L,) long, the TokenKind of every position."""
        video = ([TokenKind.LABEL] * int(self.num_classes > 0)
                 + [TokenKind.END_FRAME] * self.tokens_per_frame * int(self.end_frame))
        return torch.tensor(video + self._frame_portion_kinds() * self.num_frames, dtype=torch.long)

    def timesteps(self) -> torch.Tensor:
        """(L,) long, the frame t ∈ ⟦0, N⟦ a position belongs to, −1 for video-level tokens."""
        t = torch.arange(self.num_frames).repeat_interleave(self.frame_stride)
        return torch.cat([torch.full((self.video_len,), -1), t])

    def slots(self) -> torch.Tensor:
        """(L,) long, the position within a frame's portion ⟦0, l_f + h·w⟦; the end frame's token j
        gets the slot of frame code j (l_f + j); −1 for the class token."""
        video = [-1] * int(self.num_classes > 0)
        if self.end_frame:
            video += [self.frame_annotation_len + j for j in range(self.tokens_per_frame)]
        frames = torch.arange(self.frame_stride).repeat(self.num_frames)
        return torch.cat([torch.tensor(video, dtype=torch.long), frames])

    def prev_sources(self) -> torch.Tensor:
        """(L,) long: for position i whose next token (the one ô_i scores) is frame t ≥ 1's code j,
        the position of frame t − 1's code j (= i + 1 − frame stride ≤ i); −1 elsewhere. The copy
        path of ``TransformerConfig.prev_frame_input``."""
        kinds, steps = self.kinds(), self.timesteps()
        nxt = torch.arange(1, self.length)
        out = torch.full((self.length,), -1, dtype=torch.long)
        ok = (kinds[1:] == TokenKind.FRAME) & (steps[1:] >= 1)
        out[:-1][ok] = nxt[ok] - self.frame_stride
        return out

    def scored_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(L,) long pair (t, j): for position i whose output ô_i scores frame t's code j (token
        i + 1 is that code), its frame t and slot j ∈ ⟦0, h·w⟦; −1 at positions that score no
        frame code. The control inputs of ``ccvs_models.control_inputs`` are placed by it."""
        kinds, steps, slots = self.kinds(), self.timesteps(), self.slots()
        t = torch.full((self.length,), -1, dtype=torch.long)
        j = torch.full((self.length,), -1, dtype=torch.long)
        ok = kinds[1:] == TokenKind.FRAME
        t[:-1][ok] = steps[1:][ok]
        j[:-1][ok] = slots[1:][ok] - self.frame_annotation_len
        return t, j

    def state_sources(self) -> torch.Tensor:
        """(L, 2) long: for position i scoring frame t's code, the positions of frame t's state
        tokens (x, y), which precede its codes; −1 rows elsewhere or without state tokens."""
        out = torch.full((self.length, 2), -1, dtype=torch.long)
        if not self.state_tokens:
            return out
        t, _ = self.scored_codes()
        ok = t >= 0
        first = self.video_len + t[ok] * self.frame_stride  # frame t's state x token
        out[ok] = torch.stack([first, first + 1], dim=1)
        return out

    def end_sources(self) -> torch.Tensor:
        """(L,) long: for position i scoring code j of a frame, the position of the end frame's
        code j (a video-level token, before every frame); −1 elsewhere or without an end frame."""
        out = torch.full((self.length,), -1, dtype=torch.long)
        if not self.end_frame:
            return out
        _, j = self.scored_codes()
        ok = j >= 0
        out[ok] = j[ok] + self.end_frame_slice.start
        return out

    def audio_sources(self) -> torch.Tensor:
        """(L, l_a) long: for position i scoring frame t's code, the positions of frame t's l_a
        sound codes, which precede its frame codes; −1 rows elsewhere or without audio tokens."""
        out = torch.full((self.length, max(self.audio_tokens, 1)), -1, dtype=torch.long)
        if not self.audio_tokens:
            return out
        t, _ = self.scored_codes()
        ok = t >= 0
        first = self.video_len + t[ok] * self.frame_stride + self.state_tokens
        out[ok] = first[:, None] + torch.arange(self.audio_tokens)[None]
        return out

    def label_sources(self) -> torch.Tensor:
        """(L, 1) long: for position i scoring a frame code, the class token's position (0);
        −1 elsewhere or without a class token."""
        out = torch.full((self.length, 1), -1, dtype=torch.long)
        if self.label_position is None:
            return out
        t, _ = self.scored_codes()
        out[t >= 0] = self.label_position
        return out

    def frame_mask(self) -> torch.Tensor:
        """(L,) bool, True at frame-token positions (the only ones predicted, Eq. (8))."""
        return self.kinds() == TokenKind.FRAME

    # --- vocabularies
    def vocab_size(self, kind: TokenKind) -> int:
        """Number of real ids of ``kind`` (its null id, for annotations, is this number)."""
        return {TokenKind.FRAME: self.frame_vocab, TokenKind.STATE: self.state_bins,
                TokenKind.AUDIO: self.audio_vocab, TokenKind.LAYOUT: self.layout_vocab,
                TokenKind.LABEL: self.num_classes, TokenKind.END_FRAME: self.frame_vocab}[kind]

    def null_id(self, kind: TokenKind) -> int:
        """The reserved "no annotation" id of an annotation kind (its vocab size)."""
        if kind == TokenKind.FRAME:
            raise ValueError("frame tokens have no null id: they are predicted, never dropped")
        return self.vocab_size(kind)

    def drop(self, tokens: torch.Tensor, kind: TokenKind, samples: torch.Tensor | None = None,
             start_pos: int = 0) -> torch.Tensor:
        """Conditioning dropout: a copy of ``tokens`` (B, T) — positions start_pos … start_pos+T−1
        of the layout — with every ``kind`` token set to its null id, in all samples or where
        ``samples`` (B,) bool is True. Train with random drops (e.g. ``samples = rand(B) < p`` per
        kind) and one model serves both the conditioned and the unconditioned task."""
        null = self.null_id(kind)
        out = tokens.clone()
        where = (self.kinds()[start_pos:start_pos + tokens.shape[1]] == kind).to(tokens.device)
        if samples is None:
            out[:, where] = null
        else:
            out[samples.to(tokens.device)[:, None] & where[None, :]] = null
        return out

    # --- assembly
    def assemble(self, frames: torch.Tensor, state: torch.Tensor | None = None,
                 audio: torch.Tensor | None = None, layout: torch.Tensor | None = None,
                 label: torch.Tensor | None = None, end_frame: torch.Tensor | None = None) -> Sequence:
        """Per-kind token tensors → the §3.3 sequence.

        frames (B, n, h, w) codes ⟦0, q⟦, n ≤ N; state (B, n, 2) bins (x, y) ⟦0, B⟧; audio
        (B, n, l_a) ⟦0, q_a⟧; layout (B, n, l_l) ⟦0, q_l⟧; label (B,) ⟦0, num_classes⟧; end_frame
        (B, h, w) ⟦0, q⟧ (the upper bound of each annotation range is its null id). Exactly the
        kinds of this layout must be given. Returns tokens (B, l_v + n·(l_f + h·w)) and kinds.
        """
        if frames.dim() != 4 or frames.shape[2:] != (self.frame_height, self.frame_width):
            raise ValueError(f"assemble: frames must be (B, n, {self.frame_height}, "
                             f"{self.frame_width}), got {tuple(frames.shape)}")
        b, n = frames.shape[:2]
        if not 1 <= n <= self.num_frames:
            raise ValueError(f"assemble: {n} frames, the layout holds 1..{self.num_frames}")
        self._check_range("frames", frames, self.frame_vocab - 1)
        per_frame = []
        for name, x, count, kind in (("state", state, self.state_tokens, TokenKind.STATE),
                                     ("audio", audio, self.audio_tokens, TokenKind.AUDIO),
                                     ("layout", layout, self.layout_tokens, TokenKind.LAYOUT)):
            if (x is None) != (count == 0):
                raise ValueError(f"assemble: the layout has {count} {name} tokens per frame but "
                                 f"{name} was {'not ' if x is None else ''}given")
            if x is None:
                continue
            if tuple(x.shape) != (b, n, count):
                raise ValueError(f"assemble: {name} must be ({b}, {n}, {count}), got {tuple(x.shape)}")
            self._check_range(name, x, self.null_id(kind))
            per_frame.append(x.long())
        per_frame.append(frames.long().flatten(2))
        video = []
        if (label is None) != (self.num_classes == 0):
            raise ValueError(f"assemble: the layout has {self.num_classes} classes but label was "
                             f"{'not ' if label is None else ''}given")
        if label is not None:
            if tuple(label.shape) != (b,):
                raise ValueError(f"assemble: label must be ({b},), got {tuple(label.shape)}")
            self._check_range("label", label, self.null_id(TokenKind.LABEL))
            video.append(label.long()[:, None])
        if (end_frame is None) == self.end_frame:
            raise ValueError(f"assemble: end_frame is {'on' if self.end_frame else 'off'} in the "
                             f"layout but was {'not ' if end_frame is None else ''}given")
        if end_frame is not None:
            if tuple(end_frame.shape) != (b, self.frame_height, self.frame_width):
                raise ValueError(f"assemble: end_frame must be ({b}, {self.frame_height}, "
                                 f"{self.frame_width}), got {tuple(end_frame.shape)}")
            self._check_range("end_frame", end_frame, self.null_id(TokenKind.END_FRAME))
            video.append(end_frame.long().flatten(1))
        body = torch.cat(per_frame, dim=2).flatten(1)  # (B, n·(l_f + h·w))
        tokens = torch.cat(video + [body], dim=1)
        return Sequence(tokens=tokens, kinds=self.kinds()[: tokens.shape[1]].to(tokens.device))

    def frames_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L') sequence holding n whole frames → its frame codes (B, n, h, w)."""
        n, rest = divmod(tokens.shape[1] - self.video_len, self.frame_stride)
        if rest or n < 0:
            raise ValueError(f"frames_of: length {tokens.shape[1]} is not l_v + n·{self.frame_stride}")
        body = tokens[:, self.video_len:].reshape(tokens.shape[0], n, self.frame_stride)
        return body[:, :, self.frame_annotation_len:].reshape(
            tokens.shape[0], n, self.frame_height, self.frame_width)

    @staticmethod
    def _check_range(name: str, x: torch.Tensor, high: int) -> None:
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > high):
            raise ValueError(f"assemble: {name} ids must be in [0, {high}], "
                             f"got [{int(x.min())}, {int(x.max())}]")
