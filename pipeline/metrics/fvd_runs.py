"""FVD as the paper reports it: R evaluation runs of N videos, mean ± std (§4 "Metrics").

The paper computes "the mean and standard deviation (std) over 5 evaluation runs (2 for Kinetics
due to its voluminous 50k video test set)", on BAIR's 256 test videos. Here one run scores one
synthetic video per input — sample r of each of the N inputs, drawn with its own seeds — against
the N real clips, so R runs need R samples per input (``evaluate`` draws ``max(samples, R)``);
:func:`fvd_over_runs` gives the mean, the (population) std and every run's value. The maths and
the I3D are ``pipeline.metrics.fvd``.

**Real statistics** (:func:`real_features`): the I3D features of the N real clips are computed
from the clips' arrays as ``prepare`` decoded them (the shards' uint8 frames), never from a
re-encoded mp4, whose compression would move the "real" side; they are computed once and cached
(``<cache>/i3d-real-<key>.npz``) under a hash of everything that determines them: the pixels, the
frames scored, the resize, the I3D weights' identity and config (:func:`features_key`). Any change
gives another key; a stale file is never read.

**Covariance rank** (:func:`covariance_warning`): the covariance of N videos' D = 400 I3D logits
has rank ≤ N − 1. With N ≤ D it is singular, the square root in the Fréchet distance sees a
degenerate Gaussian, and the value grows as N shrinks: numbers are comparable only at equal N.
The paper's 256 per run is the shared protocol; fewer (8 demo videos: a rank-7 covariance) get a
warning in the log, the metrics JSON and an MLflow tag.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.metrics import fvd as fvd_lib

PAPER_VIDEOS = 256  # BAIR's test set, scored per run (§4)


def _array_bytes(videos: Any) -> bytes:
    x = videos.detach().cpu().numpy() if isinstance(videos, torch.Tensor) else np.asarray(videos)
    return np.ascontiguousarray(x).tobytes()


def features_key(videos: Any, info: fvd_lib.I3DWeightsInfo, *, resolution: int,
                 config: Any = None) -> str:
    """A hash of what determines the I3D features of ``videos`` (N, T, 3, H, W): the pixels
    (dtype, shape and bytes: the frames scored, after any skip), the resize, the weights and the
    network config."""
    digest = hashlib.sha256()
    shape = tuple(videos.shape)
    dtype = str(videos.dtype)
    header = {"shape": shape, "dtype": dtype, "resolution": resolution, "weights": info.ident,
              "config": repr(config)}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(_array_bytes(videos))
    return digest.hexdigest()[:24]


def real_features(model: torch.nn.Module, info: fvd_lib.I3DWeightsInfo, videos: Any, *,
                  batch_size: int = 8, resolution: int = 224, cache_dir: str | Path | None = None
                  ) -> tuple[np.ndarray, str, bool]:
    """I3D features (N, D) of the real clips ``videos`` (in memory), from ``cache_dir`` when a
    file with their key exists; returns (features, key, whether they came from the cache)."""
    key = features_key(videos, info, resolution=resolution, config=getattr(model, "config", None))
    path = Path(cache_dir) / f"i3d-real-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                if str(archive["key"]) == key and len(archive["features"]) == len(videos):
                    return archive["features"].astype(np.float64), key, True
        except (OSError, KeyError, ValueError):
            pass  # unreadable: recompute and overwrite
    features = fvd_lib.i3d_features(model, videos, batch_size, resolution=resolution,
                                    desc="I3D real")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:
                np.savez(handle, features=features, key=np.asarray(key))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return features, key, False


def fvd_over_runs(real: np.ndarray, fakes: list[np.ndarray]) -> dict[str, Any]:
    """The Fréchet distance of each run's fake features (M, D) to the real ones (N, D):
    ``{"mean", "std", "values", "runs"}`` (std: population std over runs, 0 for one run)."""
    if not fakes:
        raise ValueError("fvd_over_runs: no run")
    values = [fvd_lib.features_distance(real, fake) for fake in fakes]
    return {"mean": float(np.mean(values)), "std": float(np.std(values)),
            "values": [float(v) for v in values], "runs": len(values)}


def covariance_warning(videos: int, dim: int, paper: int = PAPER_VIDEOS) -> str | None:
    """One line when ``videos`` clips per run are fewer than the protocol's (the paper's 256)
    and too few for a full-rank covariance of ``dim`` features; None otherwise. (256 videos give
    a rank-255 covariance of 400 logits too: that is the protocol every FVD table shares, so
    values at 256 compare; values at 8 compare with nothing but other runs at 8.)"""
    if videos > dim or videos >= paper:
        return None
    return (f"FVD on {videos} videos per run: the covariance of {dim} I3D features has rank "
            f"<= {videos - 1} < {dim}, so the value is biased upward and depends on the number "
            f"of videos; compare it only at equal N (the paper: {paper} per run; raise "
            f"evaluate.fvd.videos and evaluate.num_videos)")


__all__ = ["PAPER_VIDEOS", "covariance_warning", "features_key", "fvd_over_runs", "real_features"]
