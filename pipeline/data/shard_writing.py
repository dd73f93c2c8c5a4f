"""Clip shards, writing side: encoding clips as tar members and filling size-capped shards (``prepare``).

Format (docs/CONTRACTS.md "Clip shards"): see :mod:`pipeline.data.shards`, which re-exports everything
here and holds the reading side. ``ShardError`` and ``SHARD_PATTERN`` are defined here because the
writer raises/uses them too; the reading module imports them from here.

:class:`ShardWriter` fills ``clips-%05d.tar.tmp`` and renames it to ``clips-%05d.tar`` when it
closes, starting a new shard before a sample would push it past ``max_bytes``; tar headers carry
fixed owner/time, so the same clips give byte-identical shards. Space is handed out in order
(:meth:`ShardWriter.place`: shard, offset), and the bytes can be written there later by any
process (:func:`write_placed`, one ``pwritev`` per sample), so decoding processes write their clips
in place while the shard layout stays the one sequential writing gives.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, NamedTuple, Sequence, Union

import numpy as np
from pipeline.errors import UserError

SHARD_PATTERN = "clips-%05d.tar"


class ShardError(UserError, ValueError):
    """A shard or a sample that cannot be read; the message names the shard."""


# --------------------------------------------------------------------------- samples


class Npy(NamedTuple):
    """An ``.npy`` member not yet serialised: its header bytes and the (C-contiguous) array.

    The writer streams ``header`` then the array's own buffer to the tar, so a clip's pixels are
    copied once (into the file), not three times through ``np.save`` / ``BytesIO``.
    """

    header: bytes
    array: np.ndarray

    @classmethod
    def of(cls, array: np.ndarray) -> "Npy":
        array = np.ascontiguousarray(array)
        return cls(_npy_header(array.dtype.str, array.shape), array)

    def __len__(self) -> int:
        return len(self.header) + self.array.nbytes

    def tobytes(self) -> bytes:
        return self.header + self.array.tobytes()


Member = Union[bytes, Npy]


@functools.lru_cache(maxsize=256)
def _npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (format 1.0) header of a C-ordered array (the same few shapes recur: cached)."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}  # fmt: skip
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


_ZEROS = bytes(tarfile.BLOCKSIZE)
# a USTAR header for a regular file with mode 0444, uid/gid 0, mtime 0, no owner names: everything
# after the name and size fields is constant (type '0', empty link name, "ustar\0" "00", ...)
_USTAR_MODE_IDS = b"0000444\x000000000\x000000000\x00"
_USTAR_MTIME = b"00000000000\x00"
_USTAR_TAIL = b"0" + bytes(100) + b"ustar\x0000" + bytes(32 + 32 + 8 + 8 + 155 + 12)
_USTAR_CONSTANT_SUM = sum(_USTAR_MODE_IDS) + sum(_USTAR_MTIME) + 8 * ord(" ") + sum(_USTAR_TAIL)


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header ``write_sample`` gives a member (built directly: ``tarfile``'s
    generic ``TarInfo.tobuf`` costs more than writing the member's pixels). Names longer than
    100 bytes go through ``tarfile`` (prefix field, or its error for a name USTAR cannot hold)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 100 or not 0 <= size < 8**11:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, 0, 0o444
        info.uname = info.gname = ""
        return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    size_field = b"%011o\x00" % size
    checksum = _USTAR_CONSTANT_SUM + sum(raw) + sum(size_field)
    return b"".join((raw, bytes(100 - len(raw)), _USTAR_MODE_IDS, size_field, _USTAR_MTIME,
                     b"%06o\x00 " % checksum, _USTAR_TAIL))  # fmt: skip


def member_bytes(value: Member | str) -> bytes:
    """The bytes a member is stored as (``Npy`` serialised, ``str`` UTF-8 encoded)."""
    if isinstance(value, Npy):
        return value.tobytes()
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def encode_sample(
    key: str,
    frames: np.ndarray,
    meta: dict[str, Any],
    *,
    audio: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    layout: np.ndarray | None = None,
) -> dict[str, Any]:
    """A clip as webdataset members: ``{"__key__": key, "frames.npy": Npy, "json": b"..."}``.

    frames uint8 (T, H, W, 3); audio float32 (samples,); positions float32 (T, 2); layout uint8
    (T, H, W). Checked here so a malformed clip never reaches a shard.
    """
    if "." in key or "/" in key:
        raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{key}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    sample: dict[str, Any] = {"__key__": key, "frames.npy": Npy.of(frames)}
    if audio is not None:
        sample["audio.npy"] = Npy.of(np.asarray(audio, dtype=np.float32).reshape(-1))
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float32)
        if positions.shape != (frames.shape[0], 2):
            raise ValueError(f"{key}: positions must be (T, 2), got {positions.shape}")
        sample["positions.npy"] = Npy.of(positions)
    if layout is not None:
        if layout.dtype != np.uint8 or layout.shape != frames.shape[:3]:
            raise ValueError(f"{key}: layout must be uint8 {frames.shape[:3]}, got {layout.dtype} {layout.shape}")
        sample["layout.npy"] = Npy.of(layout)
    sample["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return sample


def sample_nbytes(sample: dict[str, Any]) -> int:
    """Bytes ``sample`` adds to a tar (a 512-byte header per member + data padded to 512)."""
    total = 0
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        total += 512 + -(-len(value) // 512) * 512
    return total


# --------------------------------------------------------------------------- writing


def sample_buffers(sample: dict[str, Any]) -> tuple[list[Any], int]:
    """``sample``'s tar members as a list of buffers (header, data, padding per member, members in
    name order) and their total size (``sample_nbytes(sample)``); array data is a view of the
    array, not a copy. Owner, group and mtime are fixed, so the same clip gives the same bytes."""
    key = sample["__key__"]
    buffers: list[Any] = []
    total = 0
    for name in sorted(k for k in sample if not k.startswith("__")):
        data = sample[name]
        if isinstance(data, str):
            data = data.encode("utf-8")
        size = len(data)
        buffers.append(tar_header(f"{key}.{name}", size))
        if isinstance(data, Npy):
            buffers.append(data.header)
            buffers.append(memoryview(data.array.reshape(-1)).cast("B"))
        else:
            buffers.append(data)
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            buffers.append(_ZEROS[:pad])
        total += tarfile.BLOCKSIZE + size + pad
    return buffers, total


def write_sample(handle: Any, sample: dict[str, Any]) -> int:
    """Write ``sample``'s tar members (header, data, padding each) to the binary file ``handle``;
    return the bytes written (``sample_nbytes(sample)``)."""
    buffers, total = sample_buffers(sample)
    for buffer in buffers:
        handle.write(buffer)
    return total


def write_at(fd: int, buffers: Sequence[Any], offset: int) -> None:
    """Write ``buffers`` back to back at ``offset`` of the open file descriptor ``fd`` (all of them:
    ``pwritev`` may write less than asked). Does not move the descriptor's position where
    ``pwritev``/``pwrite`` exist (POSIX); elsewhere seeks and writes."""
    views = [memoryview(b).cast("B") for b in buffers]
    views = [v for v in views if len(v)]
    while views:
        if hasattr(os, "pwritev"):
            done = os.pwritev(fd, views[:512], offset)
        elif hasattr(os, "pwrite"):
            done = os.pwrite(fd, views[0], offset)
        else:  # pragma: no cover - Windows
            os.lseek(fd, offset, os.SEEK_SET)
            done = os.write(fd, views[0])
        if done <= 0:
            raise OSError(f"could not write at offset {offset} (wrote {done} bytes)")
        offset += done
        while views and done >= len(views[0]):
            done -= len(views.pop(0))
        if done:
            views[0] = views[0][done:]


class Placement(NamedTuple):
    """Where one sample goes: ``size`` bytes at ``offset`` of the shard being written at ``path``
    (its ``.tmp`` name); ``shard`` is the name for the manifest (``train/clips-00000.tar``)."""

    path: str
    offset: int
    size: int
    shard: str
    index: int  # the shard's number, for ShardWriter.done


def write_placed(placements: Sequence[Placement], samples: Sequence[dict[str, Any]]) -> None:
    """Write each sample at its placement (from :meth:`ShardWriter.place`, maybe in another
    process): one ``pwritev`` per sample; the shard file is opened once per run of samples."""
    fd, path = -1, None
    try:
        for placement, sample in zip(placements, samples, strict=True):
            buffers, size = sample_buffers(sample)
            if size != placement.size:
                raise ShardError(f"{placement.path}: sample {sample['__key__']} is {size} bytes, "
                                 f"{placement.size} were placed")  # fmt: skip
            if placement.path != path:
                if fd >= 0:
                    os.close(fd)
                    fd = -1
                fd = os.open(placement.path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
                path = placement.path
            write_at(fd, buffers, placement.offset)
    finally:
        if fd >= 0:
            os.close(fd)


class _Shard:
    """A shard being written: its file (``.tmp``), bytes placed so far, placed-but-unwritten count."""

    def __init__(self, final: Path, index: int):
        self.final, self.index = final, index
        self.tmp = final.with_name(final.name + ".tmp")
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
        self.end = 0  # bytes of members placed
        self.count = 0  # samples placed
        self.unwritten = 0  # placed, not yet reported written (ShardWriter.done)
        self.sealed = False  # no more samples go here; finished once the last one is written


class ShardWriter:
    """Size-capped webdataset shards for one split: ``folder/clips-00000.tar``, ``-00001``...

    A shard is written as ``*.tar.tmp`` and renamed when full (and every sample placed in it is
    written) or on :meth:`close`, so readers (and DVC) never see half a shard. ``write`` returns
    the shard's name relative to the dataset root (``train/clips-00000.tar``) for the manifest.

    Two ways to fill it, giving the same bytes: :meth:`write` (encode and write now), or
    :meth:`place` (reserve ``size`` bytes, in order) then :func:`write_placed` anywhere (another
    process) then :meth:`done` for each placement.
    """

    def __init__(self, folder: str | Path, max_bytes: int, pattern: str = SHARD_PATTERN):
        if max_bytes <= 0:
            raise ValueError(f"shard max_bytes must be positive, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.pattern = pattern
        self.shards: list[Path] = []  # shards started, in order (all finished after close)
        self.samples = 0
        self._index = 0  # number of the shard being filled
        self._current: _Shard | None = None
        self._live: dict[int, _Shard] = {}  # shards not finished yet, by number

    def _seal(self) -> None:
        shard = self._current
        if shard is None:
            return
        shard.sealed = True
        self._current = None
        self._index += 1
        if not shard.unwritten:
            self._finish(shard)

    def _finish(self, shard: _Shard) -> None:
        # end of archive: two zero blocks, then zeros up to a whole record (as tarfile does)
        tail = 2 * tarfile.BLOCKSIZE
        tail += -(shard.end + tail) % tarfile.RECORDSIZE
        try:
            write_at(shard.fd, [bytes(tail)], shard.end)
        finally:
            os.close(shard.fd)
        os.replace(shard.tmp, shard.final)
        del self._live[shard.index]

    def place(self, size: int) -> Placement:
        """Reserve ``size`` bytes (one sample, :func:`sample_nbytes`) at the end of the current
        shard, or of a new one when it would push the current past ``max_bytes``."""
        shard = self._current
        if shard is not None and shard.count and shard.end + 2 * tarfile.BLOCKSIZE + size > self.max_bytes:
            self._seal()
            shard = None
        if shard is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            shard = self._current = _Shard(self.folder / (self.pattern % self._index), self._index)
            self._live[self._index] = shard
            self.shards.append(shard.final)
        placement = Placement(str(shard.tmp), shard.end, size, f"{self.folder.name}/{shard.final.name}",
                              self._index)  # fmt: skip
        shard.end += size
        shard.count += 1
        shard.unwritten += 1
        self.samples += 1
        return placement

    def done(self, placement: Placement) -> None:
        """The sample at ``placement`` is written; a sealed shard whose samples are all written is
        finished (end-of-archive blocks, renamed)."""
        shard = self._live[placement.index]
        shard.unwritten -= 1
        if shard.sealed and not shard.unwritten:
            self._finish(shard)

    def write(self, sample: dict[str, Any]) -> str:
        """Append one encoded sample (:func:`encode_sample`); return its shard's relative name."""
        buffers, size = sample_buffers(sample)
        placement = self.place(size)
        write_at(self._live[placement.index].fd, buffers, placement.offset)
        self.done(placement)
        return placement.shard

    def close(self) -> list[Path]:
        """Finish the open shard; return every shard written."""
        self._seal()
        if self._live:
            names = ", ".join(str(s.tmp) for s in self._live.values())
            raise ShardError(f"{names}: closed with samples placed but never written")
        return self.shards

    def abort(self) -> None:
        """Drop the shards being written (their ``.tmp`` files) after an error."""
        for shard in self._live.values():
            try:
                os.close(shard.fd)
            except OSError:
                pass
            shard.tmp.unlink(missing_ok=True)
            if shard.final in self.shards:
                self.shards.remove(shard.final)
        self._live.clear()
        self._current = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

