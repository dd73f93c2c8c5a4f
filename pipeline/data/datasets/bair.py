"""BAIR robot pushing (§4 "Datasets": 43k training and 256 test videos of a robot arm pushing
objects, seen from a fixed camera), read from the original ``softmotion30_44k`` TFRecords without
TensorFlow (``data.source: bair``).

On disk (``bair_robot_pushing_dataset_v0.tar``): ``softmotion30_44k/{train,test}/
traj_<a>_to_<b>.tfrecords``, each record one trajectory, a ``tf.train.Example`` holding for every
timestep t = 0…29: ``t/image_aux1/encoded`` and ``t/image_main/encoded`` (64×64×3 uint8 RGB as raw
bytes, the two cameras), ``t/endeffector_pos`` (3 floats: the gripper's x, y, z in the robot's
frame) and ``t/action`` (4 floats). We read the ``image_aux1`` camera, the one the BAIR
video-prediction benchmarks use (SVG, SAVP's FVD tables, VideoGPT); the test folder's 256
trajectories are the paper's test videos. ``val`` is ``data.val_fraction`` of the training
trajectories, drawn by a hash of their id. A video id is ``<split>-<file stem>-<record:03d>``
(``train-traj_0_to_255-003``); its ``source`` is ``train/traj_0_to_255.tfrecords#3``.

**Positions (state-conditioned synthesis).** The paper hand-labels the gripper's (x, y) in 500
frames and trains a position estimator (§4, App. A). The records carry the gripper's 3-D position
in every frame, but no camera calibration. With a fixed camera and a workspace a few tens of cm
deep seen from about a metre, an *affine camera* is a good model of the projection:
``(u, v) = P · (x, y, z, 1)`` with P a 2×4 matrix. Give ≥ 4 hand-labelled frames (not all on one
plane of the workspace) in ``data.annotations`` (CSV ``video,frame,x,y``, video = the id or the
source above, x, y in pixels of the 64×64 frame, x right, y down, pixel centres) and the reader fits
P by least squares on them (it prints the fit's RMS residual in pixels), then gives *every* frame of
*every* trajectory a position: P applied to its ``endeffector_pos`` (a hand label, where there is
one, wins). So the positions stage trains on all frames, and a few labels stand in for the paper's
500. Without ``data.annotations`` the clips carry no positions.

The dataset's records store no frame rate; we label the clips with :data:`FPS` (10), the rate
video-prediction papers quote for BAIR. Nothing is resampled as long as ``prepare`` keeps every
frame (the ``bair64`` preset does).
"""

from __future__ import annotations

import dataclasses
import io
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from pipeline.data.datasets.common import dataset_root, relative
from pipeline.data.datasets.tfrecord import RecordError, parse_example, read_record, record_spans
from pipeline.data.media import MediaError, VideoInfo
from pipeline.data.sources import Listing, SourceError, VideoSource, read_annotations
from pipeline.data.splits import hash_split
from pipeline.params import DataParams

CAMERA = "image_aux1"  # the benchmarks' camera; "image_main" is the other one
SIZE = 64  # frames are SIZE × SIZE × 3
FPS = 10.0  # nominal: the records carry no timestamps
SPLITS = {"train": "train", "test": "test"}  # folder → split (val drawn from train)
_LAST: dict[tuple[str, int], tuple[np.ndarray, np.ndarray | None]] = {}  # the last decoded record


def _image(data: bytes, where: str) -> np.ndarray:
    if len(data) == SIZE * SIZE * 3:
        return np.frombuffer(data, np.uint8).reshape(SIZE, SIZE, 3)
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:2] == b"\xff\xd8":  # encoded variants
        with Image.open(io.BytesIO(data)) as image:
            array = np.asarray(image.convert("RGB"))
        if array.shape == (SIZE, SIZE, 3):
            return array
    raise ValueError(f"{where}: {len(data)} bytes is not a {SIZE}x{SIZE} RGB image")


def decode_trajectory(features: dict) -> tuple[np.ndarray, np.ndarray | None]:
    """An Example's features → frames (T, 64, 64, 3) uint8 and end-effector (T, 3) float32 (None
    when a timestep lacks it); T = the timesteps 0, 1, … that have a ``CAMERA`` image."""
    frames, states = [], []
    while f"{len(frames)}/{CAMERA}/encoded" in features:
        t = len(frames)
        value = features[f"{t}/{CAMERA}/encoded"]
        if not isinstance(value, list) or len(value) != 1:
            raise ValueError(f"{t}/{CAMERA}/encoded: expected one bytes value")
        frames.append(_image(value[0], f"{t}/{CAMERA}/encoded"))
        state = features.get(f"{t}/endeffector_pos")
        states.append(np.asarray(state, np.float32)[:3]
                      if isinstance(state, np.ndarray) and state.size >= 3 else None)
    if not frames:
        names = ", ".join(sorted(features)[:4]) or "none"
        raise ValueError(f"no '0/{CAMERA}/encoded' feature (features: {names}, ...)")
    state = np.stack(states) if all(s is not None for s in states) else None
    return np.stack(frames), state


@dataclasses.dataclass(frozen=True)
class BairTrajectory:
    """One trajectory: the record at ``offset`` (``length`` bytes) of the TFRecord file ``path``
    (a :class:`pipeline.data.stored_video.StoredVideo`)."""

    path: str
    offset: int
    length: int
    projection: tuple[tuple[float, ...], ...] | None = None  # 2×4 affine camera, see module doc

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(frames, end-effector states) of the record; :class:`MediaError` if it is broken."""
        try:
            return decode_trajectory(parse_example(read_record(self.path, self.offset, self.length)))
        except (RecordError, ValueError, OSError) as err:
            raise MediaError(self.path, f"record at byte {self.offset - 12}: {err}") from None

    @property
    def _decoded(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``read()``, kept for the next call (probe, frames and positions decode once): one
        trajectory per process, never one per listed video (the parent holds 44k of them)."""
        key = (self.path, self.offset)
        if key not in _LAST:
            _LAST.clear()
            _LAST[key] = self.read()
        return _LAST[key]

    def probe(self) -> VideoInfo:
        frames = self._decoded[0]
        return VideoInfo(path=self.path, num_frames=len(frames), fps=FPS, height=SIZE, width=SIZE,
                         has_audio=False, start_time=0.0)

    def iter_frames(self, frame_step: int, chunk_size: int) -> Iterator[np.ndarray]:
        frames = self._decoded[0][::frame_step]
        for begin in range(0, len(frames), chunk_size):
            yield frames[begin : begin + chunk_size]

    def layouts(self) -> None:
        return None

    def positions(self) -> np.ndarray | None:
        state = self._decoded[1]
        if self.projection is None or state is None:
            return None
        return project(np.asarray(self.projection), state)


def project(camera: np.ndarray, state: np.ndarray) -> np.ndarray:
    """(T, 3) end-effector positions → (T, 2) float32 pixels through the 2×4 affine ``camera``."""
    return (np.c_[state, np.ones(len(state))] @ camera.T).astype(np.float32)


def fit_camera(state: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares 2×4 affine camera with ``pixels ≈ P · (state, 1)``; (P, RMS residual px).
    Raises :class:`SourceError` when the points cannot determine P."""
    design = np.c_[state.astype(np.float64), np.ones(len(state))]
    if len(state) < 4 or np.linalg.matrix_rank(design, tol=1e-6) < 4:
        raise SourceError(
            f"data.annotations: {len(state)} annotated BAIR frame(s) cannot fix the end-effector → "
            f"pixel camera; label at least 4 frames whose gripper positions are not on one plane"
        )
    solution, *_ = np.linalg.lstsq(design, pixels.astype(np.float64), rcond=None)
    camera = solution.T
    rms = float(np.sqrt(np.mean(np.sum((design @ solution - pixels) ** 2, axis=1))))
    return camera, rms


def list_bair(data: DataParams) -> Listing:
    """Every trajectory of ``data.path`` (``softmotion30_44k`` or the folder holding it)."""
    base = Path(data.path)
    if (base / "softmotion30_44k").is_dir():
        base = base / "softmotion30_44k"
    root = dataset_root(str(base), "BAIR robot pushing (softmotion30_44k)", "train", "test")
    videos, rejected = [], []
    for folder, split in SPLITS.items():
        for file in sorted((root / folder).glob("*.tfrecord*")):
            spans, problem = record_spans(file)
            name = f"{folder}/{file.name}"
            if problem:
                rejected.append((f"{name}#{len(spans)}", f"{problem}; the rest of the file is skipped"))
            for index, (offset, length) in enumerate(spans):
                vid = f"{folder}-{file.name.split('.')[0]}-{index:03d}"
                videos.append(VideoSource(
                    video_id=vid, path=str(file), source=f"{name}#{index}", label="", label_id=-1,
                    split=split if split == "test" else hash_split(vid, data.val_fraction, 0.0),
                    stored=BairTrajectory(str(file), offset, length),
                ))  # fmt: skip
    if not videos:
        raise SourceError(f"data.path: no TFRecord trajectory under {root}/train or {root}/test")
    if data.annotations:
        videos = _with_positions(videos, data.annotations)
    else:
        print(f"bair: {len(videos)} trajectories, no data.annotations: the clips carry no "
              f"positions (label ≥ 4 frames to fit the end-effector → pixel camera)", file=sys.stderr)
    return Listing(videos, rejected, [])


def _with_positions(videos: list[VideoSource], annotations: str) -> list[VideoSource]:
    table = read_annotations(annotations)
    by_name = {name: i for i, v in enumerate(videos) for name in (v.video_id, v.source)}
    unknown = sorted(set(table) - set(by_name))
    if unknown:
        raise SourceError(f"{annotations}: video {unknown[0]!r} is no BAIR trajectory here (ids look "
                          f"like {videos[0].video_id!r} or {videos[0].source!r})")
    states, pixels = [], []
    labels: dict[int, list] = {}
    for name, rows in table.items():
        index = by_name[name]
        labels.setdefault(index, []).extend(rows)
        _, state = videos[index].stored.read()
        for frame, x, y in rows:
            if state is None or frame >= len(state):
                raise SourceError(f"{annotations}: {name} has no end-effector state for frame {frame}")
            states.append(state[frame])
            pixels.append((x, y))
    camera, rms = fit_camera(np.array(states), np.array(pixels))
    print(f"bair: end-effector → pixel camera fitted on {len(states)} annotated frames "
          f"({relative(Path(annotations), Path.cwd())}), RMS residual {rms:.2f} px", file=sys.stderr)
    projection = tuple(tuple(float(v) for v in row) for row in camera)
    return [dataclasses.replace(
        video, positions=tuple(sorted(labels.get(i, ()))),
        stored=dataclasses.replace(video.stored, projection=projection),
    ) for i, video in enumerate(videos)]  # fmt: skip


__all__ = ["BairTrajectory", "CAMERA", "FPS", "decode_trajectory", "fit_camera", "list_bair",
           "project"]
