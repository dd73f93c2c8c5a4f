"""Fixture writers for the dataset readers: tiny datasets in each dataset's real on-disk format.

- TFRecords: the real framing (length, masked CRC32C of the length, data, masked CRC32C of the
  data) with a bitwise CRC32C written here (independent of the reader's ``google_crc32c``), and
  ``tf.train.Example`` messages serialized by the ``protobuf`` runtime from the real
  ``example.proto`` / ``feature.proto`` schema (built here as a descriptor, no TensorFlow).
- Media: AVI (MPEG-4 part 2, like UCF-101's Xvid files and Weizmann's) written with PyAV (mp4
  with sound: ``conftest_media.good_video``); PNG frames and label maps written with Pillow.
"""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np
from PIL import Image

# --------------------------------------------------------------------------- TFRecord framing


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli, reflected 0x82F63B78), byte-at-a-time; crc32c(b"123456789") = 0xE3069283."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked(crc32c(length))) + data
            + struct.pack("<I", masked(crc32c(data))))


def write_tfrecord(path: Path, records: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(frame_record(r) for r in records))
    return path


# --------------------------------------------------------------------------- tf.train.Example


def example_class():
    """The ``tf.train.Example`` message class, built by protobuf from the schema of
    tensorflow/core/example/{example,feature}.proto (package ``tensorflow``)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="ccvs_test_example.proto", package="tensorflow",
                                               syntax="proto3")

    def message(name, *fields):
        msg = proto.message_type.add(name=name)
        for number, fname, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", (1, "value", F.TYPE_BYTES, rep, None))
    message("FloatList", (1, "value", F.TYPE_FLOAT, rep, None))
    message("Int64List", (1, "value", F.TYPE_INT64, rep, None))
    feature = message("Feature", (1, "bytes_list", F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
                      (2, "float_list", F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
                      (3, "int64_list", F.TYPE_MESSAGE, opt, ".tensorflow.Int64List"))
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = message("Features", (1, "feature", F.TYPE_MESSAGE, rep,
                                     ".tensorflow.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt,
                    type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message("Example", (1, "features", F.TYPE_MESSAGE, opt, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


def example_bytes(features: dict) -> bytes:
    """Serialize ``{name: bytes | list[bytes] | float array | int array}`` as a tf.train.Example."""
    Example = example_class()
    ex = Example()
    for name, value in features.items():
        feature = ex.features.feature[name]
        if isinstance(value, bytes):
            feature.bytes_list.value.append(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            feature.bytes_list.value.extend(value)
        else:
            arr = np.asarray(value)
            if arr.dtype.kind == "f":
                feature.float_list.value.extend(arr.astype(np.float32).tolist())
            else:
                feature.int64_list.value.extend(arr.astype(np.int64).tolist())
    return ex.SerializeToString()


# --------------------------------------------------------------------------- BAIR


def bair_camera() -> np.ndarray:
    """A 2×4 affine camera: end-effector (x, y, z, 1) in metres → 64×64 pixel (x, y)."""
    return np.array([[-70.0, 25.0, 5.0, 40.0], [10.0, 15.0, -60.0, 30.0]])


def bair_trajectory(seed: int, frames: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (T, 64, 64, 3) uint8, end-effector (T, 3) float32, actions (T, 4) float32)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, frames)[:, None]
    start, end = rng.uniform([-0.1, -0.1, 0.1], [0.1, 0.1, 0.3], (2, 3))
    state = (start + (end - start) * t).astype(np.float32)
    xy = np.c_[state, np.ones(frames)] @ bair_camera().T
    yy, xx = np.mgrid[0:64, 0:64]
    images = np.zeros((frames, 64, 64, 3), np.uint8)
    images[..., 0] = (xx * 3 + seed * 17) % 256
    images[..., 1] = (yy * 3) % 256
    for i, (x, y) in enumerate(xy):
        disc = (xx - x) ** 2 + (yy - y) ** 2 < 16
        images[i][disc] = 255
    actions = rng.normal(size=(frames, 4)).astype(np.float32)
    return images, state, actions


def bair_record(images: np.ndarray, state: np.ndarray, actions: np.ndarray) -> bytes:
    """One softmotion30_44k record: per timestep t, ``t/image_main/encoded`` and
    ``t/image_aux1/encoded`` (raw uint8 64×64×3 bytes), ``t/endeffector_pos`` (3 floats) and
    ``t/action`` (4 floats)."""
    features = {}
    for t in range(len(images)):
        features[f"{t}/image_aux1/encoded"] = images[t].tobytes()
        features[f"{t}/image_main/encoded"] = (255 - images[t]).tobytes()  # the other camera
        features[f"{t}/endeffector_pos"] = state[t]
        features[f"{t}/action"] = actions[t]
    return example_bytes(features)


# --------------------------------------------------------------------------- media


def pattern_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """(T, H, W, 3) uint8: a smooth seed-dependent gradient with a bright bar moving right."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([(xx * 180 // max(width - 1, 1) + 37 * seed) % 256,
                     yy * 180 // max(height - 1, 1), np.full_like(xx, 40 + 20 * (seed % 5))], -1)
    frames = np.repeat(base[None].astype(np.uint8), num_frames, axis=0)
    for t in range(num_frames):
        x0 = (3 * t) % max(width - 8, 1)
        frames[t, :, x0 : x0 + 8] = 250
    return frames


def write_avi(path: Path, frames: np.ndarray, fps: int = 25) -> Path:
    """An AVI with MPEG-4 part 2 video (the Xvid/DivX family UCF-101 and Weizmann use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
