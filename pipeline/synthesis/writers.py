"""Writers of synthesized videos (``ccvs synthesize``, the ``evaluate`` stage): an mp4 and a GIF per
sample and a PNG contact sheet (rows = samples, columns = time) per input, written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(..., 3, H, W) in [−1, 1] → uint8 (..., H, W, 3) (clamped, rounded)."""
    x = torch.as_tensor(frames).detach().float().cpu().clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()


def contact_sheet(frames: np.ndarray, gap: int = 2) -> np.ndarray:
    """uint8 (S, n, H, W, 3) → (S·H + (S−1)·gap, n·W + (n−1)·gap, 3): row i = sample i, column
    t = time t, separated by white ``gap``-pixel lines."""
    s, n, h, w, _ = frames.shape
    sheet = np.full((s * h + (s - 1) * gap, n * w + (n - 1) * gap, 3), 255, np.uint8)
    for i in range(s):
        for t in range(n):
            y, x = i * (h + gap), t * (w + gap)
            sheet[y:y + h, x:x + w] = frames[i, t]
    return sheet


def write_samples(out_dir: str | Path, frames: torch.Tensor | np.ndarray, fps: float,
                  names: Sequence[str], *, gif_scale: int = 1, gap: int = 2) -> list[Path]:
    """Synthesized videos (B, S, n, 3, H, W) in [−1, 1] → ``out_dir``: per input b and sample s
    ``<names[b]>_sample<s>.mp4`` (H.264) and ``.gif``, and per input ``<names[b]>_sheet.png``
    (rows = samples, columns = time). Every file is written atomically. Returns the paths."""
    from pipeline.data.media_write import write_gif, write_mp4, write_png

    video = to_uint8(frames)
    if video.ndim != 6:
        raise ValueError(f"write_samples: frames must be (B, S, n, 3, H, W), got "
                         f"{tuple(np.shape(frames))}")
    b, s = video.shape[:2]
    names = [str(n) for n in names]
    if len(names) != b or len(set(names)) != b:
        raise ValueError(f"write_samples: need {b} distinct names, got {names}")
    for name in names:
        if not name or "/" in name or os.sep in name or name.startswith("."):
            raise ValueError(f"write_samples: {name!r} is not a usable file name")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rate = max(1, int(round(fps)))
    written: list[Path] = []
    for i, name in enumerate(names):
        for j in range(s):
            stem = f"{name}_sample{j:02d}"
            written.append(write_mp4(out_dir / f"{stem}.mp4", video[i, j], rate))
            written.append(write_gif(out_dir / f"{stem}.gif", video[i, j], rate, scale=gif_scale))
        written.append(write_png(out_dir / f"{name}_sheet.png", contact_sheet(video[i], gap)))
    return written
