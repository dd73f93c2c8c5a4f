"""What a demo-world video is made of: the world's configuration, its motion classes, the objects
placed in a scene and the rendered result with its ground truth.

A leaf module shared by the physics and sound (``pipeline.data.demo_world``) and the renderer
(``pipeline.data.demo_render``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "sweep_horizontal", "sweep_vertical", "zigzag", "random_walk")

# Saturated object colours (RGB in [0, 1]), far from the gripper's dark grey.
PALETTE = np.array(
    [
        [0.86, 0.18, 0.16],  # red
        [0.15, 0.62, 0.25],  # green
        [0.16, 0.38, 0.86],  # blue
        [0.95, 0.80, 0.15],  # yellow
        [0.95, 0.50, 0.10],  # orange
        [0.60, 0.25, 0.80],  # purple
        [0.10, 0.72, 0.78],  # cyan
    ],
    dtype=np.float32,
)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Size and dynamics of the demo world. Lengths are given for a 64-pixel frame and scaled."""

    resolution: int = 64  # frames are resolution × resolution (even, for H.264)
    num_frames: int = 32  # T, frames per video
    fps: int = 10  # frames per second (sets the audio length: num_frames / fps seconds)
    min_objects: int = 2  # objects per video are drawn in [min_objects, max_objects]
    max_objects: int = 4
    audio_rate: int = 16000  # audio samples per second
    min_speed: float = 1.5  # gripper speed range in pixels per frame (at 64 px)
    max_speed: float = 3.0
    gripper_radius: float = 4.5  # radius of the gripper head (at 64 px)
    arm_width: float = 1.6  # half-width of the arm (at 64 px)
    object_radius: tuple[float, float] = (4.0, 6.5)  # object size range (at 64 px)
    margin: float = 8.0  # the gripper stays this far inside the frame (at 64 px)
    substeps: int = 4  # physics / audio steps per frame (pushes cannot tunnel through objects)

    def __post_init__(self) -> None:
        if self.resolution < 16 or self.resolution % 2:
            raise ValueError(f"resolution must be an even number >= 16, got {self.resolution}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2, got {self.num_frames}")
        if not 0 <= self.min_objects <= self.max_objects <= len(PALETTE):
            raise ValueError(
                f"need 0 <= min_objects <= max_objects <= {len(PALETTE)}, "
                f"got {self.min_objects}, {self.max_objects}"
            )
        if self.fps <= 0 or self.audio_rate <= 0 or self.substeps <= 0:
            raise ValueError("fps, audio_rate and substeps must be positive")

    @property
    def scale(self) -> float:
        return self.resolution / 64.0


@dataclasses.dataclass(frozen=True)
class DemoVideo:
    """One rendered video with its ground truth."""

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB
    audio: np.ndarray  # float32 (num_frames / fps * audio_rate,) mono in [-1, 1]
    positions: np.ndarray  # float32 (T, 2) gripper head centre (x, y) in pixels
    layout: np.ndarray  # uint8 (T, H, W): 0 background, 1 gripper, 2 + i object i
    label: int  # index into CLASSES
    object_positions: np.ndarray  # float32 (T, N, 2) object centres (x, y)
    contacts: np.ndarray  # bool (T,) the gripper pushed some object during frame t → t+1
    speed: np.ndarray  # float32 (T,) gripper speed in pixels per frame from frame t to t + 1
    click_times: np.ndarray  # float32 (M,) seconds at which a push starts (a click in the audio)

    @property
    def label_name(self) -> str:
        return CLASSES[self.label]


@dataclasses.dataclass(frozen=True)
class SceneObjects:
    """The objects of one video as placed at frame 0 (positions change as they are pushed)."""

    centre: np.ndarray  # (N, 2) float64
    radius: np.ndarray  # (N,) collision radius
    half: np.ndarray  # (N,) half side (boxes) or radius (discs)
    is_box: np.ndarray  # (N,) bool
    angle: np.ndarray  # (N,) box rotation
    colour: np.ndarray  # (N, 3)
