"""The position estimator's training task and its data helpers (used by ``stages/positions.py``).

Paper: §4 "Datasets" (the gripper's (x, y) hand-annotated in 500 BAIR frames) and App. A
"Position estimator" (a small regressor trained with an MSE). Holds the annotated frames of the
train clips (``Annotated``, ``load_annotated``: each (video_id, source frame) once, as clips
overlap), the held-out split by whole videos (``pipeline.data.splits``), the estimator's input and
augmentation (``to_input``, ``augment``: horizontal flip + colour jitter), the warm-up + cosine
learning rate, the ``TrainTask`` for ``pipeline.training.loop.fit`` (``PositionTask``), batched
inference (``predict``) and the seeded batch stream (``_batches``). ``StageError`` is the
stage's one-line error.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ccvs_models.position import PositionEstimator
from pipeline.params import PositionsParams
from pipeline.data.shard_writing import ShardError
from pipeline.data.shards import iter_clips
from pipeline.training.loop import epoch_batches
from pipeline.training.schedule import set_lr, warmup_cosine
from pipeline.training.task import StepContext, TrainTask, seeded_init
from pipeline.errors import StageError

_LABEL_BATCH = 256  # frames per forward pass when labelling
_ANNOTATION_SOURCE = (
    "the annotations reach the clips through `prepare` (data.annotations: a CSV video,frame,x,y; "
    "for the demo world, <data.path>/annotations.csv)"
)



# --------------------------------------------------------------------------- annotated frames


class NoAnnotations(StageError):
    """The train clips carry no annotated position: nothing to train the estimator on (the
    ``positions`` stage then writes a placeholder and T trains without state tokens)."""


@dataclasses.dataclass
class Annotated:
    """The deduplicated annotated frames of the train split."""

    frames: np.ndarray  # uint8 (N, H, W, 3)
    xy: np.ndarray  # float32 (N, 2) pixels
    ids: list[tuple[str, int]]  # (video_id, source frame) of each

    def fingerprint(self) -> str:
        digest = hashlib.sha1()
        for (vid, frame), (x, y) in zip(self.ids, self.xy.tolist()):
            digest.update(f"{vid}:{frame}:{x:.4f}:{y:.4f};".encode())
        return digest.hexdigest()[:16]


def _frame_id(meta: dict[str, Any], t: int, where: str) -> tuple[str, int]:
    try:
        return str(meta["video_id"]), int(meta["first_frame"]) + t * int(meta.get("frame_step", 1))
    except (KeyError, TypeError, ValueError):
        raise StageError(f"{where}: clip meta lacks video_id / first_frame") from None


def _split_clips(clips_dir: Path, split: str) -> Iterator[dict[str, Any]]:
    """The clips of ``split`` ([] when the split has no folder); shard errors as one line."""
    if Path(clips_dir).is_dir() and not (Path(clips_dir) / split).is_dir():
        return
    try:
        yield from iter_clips(clips_dir, split)
    except ShardError as err:
        raise StageError(str(err)) from None


def load_annotated(clips_dir: Path) -> Annotated:
    """Every annotated frame of the train clips, once each (clips overlap)."""
    seen: dict[tuple[str, int], int] = {}
    frames, xy = [], []
    for sample in _split_clips(clips_dir, "train"):
        pos = sample.get("positions")
        if pos is None:
            continue
        where = f"{clips_dir}/train: clip {sample['key']}"
        if pos.shape != (len(sample["frames"]), 2):
            raise StageError(f"{where}: positions {pos.shape} do not match {len(sample['frames'])} frames")
        for t in np.flatnonzero(np.isfinite(pos).all(axis=1)):
            fid = _frame_id(sample["meta"], int(t), where)
            if fid in seen:
                continue
            seen[fid] = len(frames)
            frames.append(sample["frames"][t])
            xy.append(pos[t])
    if not frames:
        raise NoAnnotations(
            f"no annotated frame in the train clips of {clips_dir} (every positions.npy row is "
            f"NaN or absent); {_ANNOTATION_SOURCE}")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise StageError(f"{clips_dir}: clips of different frame sizes {sorted(shapes)}")
    return Annotated(np.stack(frames), np.asarray(xy, dtype=np.float32), list(seen))


# --------------------------------------------------------------------------- training


def to_input(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) → float32 (B, 3, H, W) in [−1, 1] (the estimator's input)."""
    x = torch.as_tensor(frames)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def augment(frames: np.ndarray, xy: np.ndarray, params: PositionsParams,
            rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch: random horizontal flips (the target's x flips too) and colour jitter."""
    x = to_input(frames)
    y = torch.as_tensor(xy, dtype=torch.float32).clone()
    b, width = x.shape[0], x.shape[-1]
    if params.flip:
        flip = torch.from_numpy(rng.random(b) < 0.5)
        x[flip] = x[flip].flip(-1)
        y[flip, 0] = (width - 1) - y[flip, 0]
    if params.color_jitter > 0:
        j = params.color_jitter
        gain = torch.from_numpy(rng.uniform(1 - j, 1 + j, (b, 3, 1, 1))).float()
        offset = torch.from_numpy(rng.uniform(-j, j, (b, 3, 1, 1))).float()
        x = (x * gain + offset).clamp(-1.0, 1.0)
    return x, y


class PositionTask(TrainTask):
    """One Adam step on MSE(uv, target) (App. A); evaluation = held-out error in pixels."""

    def __init__(self, params: PositionsParams, fingerprint: str, size: tuple[int, int],
                 heldout: tuple[np.ndarray, np.ndarray]):
        self.params = params
        with seeded_init(params.loop.seed):
            self.model = PositionEstimator(params.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=params.lr)
        self.fingerprint = fingerprint
        self.size = size
        self.heldout = heldout

    def modules(self):
        return {"position": self.model}

    def optimizers(self):
        return {"adam": self.opt}

    def ema_modules(self):
        return ["position"]

    def config(self):
        # ``loop`` is left out so that a run with more ``loop.steps`` resumes (the cosine horizon
        # then stretches from the resumed step on); any other param, or other annotated data,
        # makes the checkpoints unusable and ``run`` trains afresh
        p = {k: v for k, v in dataclasses.asdict(self.params).items() if k != "loop"}
        return {"params": p, "annotations": self.fingerprint, "frame_size": list(self.size)}

    def train_step(self, batch, step, ctx: StepContext):
        set_lr(self.opt, warmup_cosine(step, self.params.lr, self.params.warmup_steps,
                                       self.params.loop.steps))
        x, y = ctx.to_device(batch)
        with ctx.autocast():
            out = ctx.modules["position"](x, y)
        ctx.optimize(out.loss, "adam")
        err = (out.xy.detach().float() - y).norm(dim=1).mean()
        return {"loss": out.loss.item(), "train_error_px": err.item(), "lr": self.opt.param_groups[0]["lr"]}

    def evaluate(self, step, ctx: StepContext):
        frames, xy = self.heldout
        if len(frames) == 0:
            return {}
        pred = predict(ctx.eval_module("position"), frames, ctx.device)
        return {"val/heldout_error_px": float(np.linalg.norm(pred - xy, axis=1).mean())}


def predict(model: torch.nn.Module, frames: np.ndarray, device: torch.device) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, 2) float32 predicted pixels (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), _LABEL_BATCH):
            x = to_input(frames[i : i + _LABEL_BATCH]).to(device)
            out.append(model(x).xy.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def _batches(params: PositionsParams, frames: np.ndarray, xy: np.ndarray):
    """``make_batches(start_step)`` for ``fit``: seeded epochs of augmented batches."""
    n, bs = len(frames), min(params.batch_size, len(frames))

    def make_epoch(epoch: int) -> list[tuple[int, int, np.ndarray]]:
        order = np.random.default_rng([params.loop.seed, epoch]).permutation(n)
        return [(epoch, i, order[s : s + bs]) for i, s in enumerate(range(0, n - bs + 1, bs))]

    def make_batches(start: int):
        for epoch, i, idx in epoch_batches(make_epoch, start):
            rng = np.random.default_rng([params.loop.seed, epoch, i, 1])
            yield augment(frames[idx], xy[idx], params, rng)

    return make_batches
