"""TFRecord files and ``tf.train.Example`` messages, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as

    uint64 length (little-endian) · uint32 masked CRC32C of the length bytes
    · data (length bytes) · uint32 masked CRC32C of the data

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2³²)`` and CRC32C the
Castagnoli polynomial (``google_crc32c``, a C implementation with a pure-Python fallback).
:func:`record_spans` walks the frames reading only the 12-byte headers (so listing 44k BAIR
trajectories reads a few MB, not 30 GB); :func:`read_record` reads one record and checks both CRCs.

A ``tf.train.Example`` (and the ``context`` of a ``SequenceExample``, same field number) is the
protobuf message ``{1: Features}``, ``Features = {1: map<string, Feature>}`` (map entries
``{1: key, 2: value}``), ``Feature = oneof {1: BytesList, 2: FloatList, 3: Int64List}``, each list
``{1: repeated value}`` (floats and ints packed or not). :func:`parse_example` decodes exactly
that with a ~50-line wire-format reader into ``{name: list[bytes] | float32 array | int64 array}``.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import google_crc32c
import numpy as np

_MASK_DELTA = 0xA282EAD8
_HEADER = 12  # uint64 length + uint32 masked CRC


class RecordError(ValueError):
    """A TFRecord frame or an Example message that cannot be read; one line."""


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def record_spans(path: str | os.PathLike) -> tuple[list[tuple[int, int]], str | None]:
    """``[(offset of the data, length), …]`` of every record of ``path``, from the headers only,
    and ``None`` or the reason the walk stopped early (a bad header, a truncated last record):
    the records before that point are listed."""
    spans: list[tuple[int, int]] = []
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        offset = 0
        while offset < size:
            header = handle.read(_HEADER)
            if len(header) < _HEADER:
                return spans, f"truncated record header at byte {offset}"
            (length,) = struct.unpack("<Q", header[:8])
            (crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != crc:
                return spans, f"bad length checksum at byte {offset} (not a TFRecord file, or corrupt)"
            end = offset + _HEADER + length + 4
            if end > size:
                return spans, f"record at byte {offset} needs {length} bytes, the file ends first"
            spans.append((offset + _HEADER, length))
            handle.seek(end)
            offset = end
    return spans, None


def read_record(path: str | os.PathLike, offset: int, length: int) -> bytes:
    """The data of the record at ``offset`` (from :func:`record_spans`), its CRC checked."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(length + 4)
    if len(data) != length + 4:
        raise RecordError(f"record at byte {offset - _HEADER} is truncated")
    (crc,) = struct.unpack("<I", data[length:])
    if masked_crc32c(data[:length]) != crc:
        raise RecordError(f"record at byte {offset - _HEADER}: data checksum mismatch (corrupt file)")
    return data[:length]


def iter_records(path: str | os.PathLike) -> Iterator[bytes]:
    """Every record of ``path`` in order (CRCs checked); a broken frame raises :class:`RecordError`."""
    spans, problem = record_spans(path)
    for offset, length in spans:
        yield read_record(path, offset, length)
    if problem:
        raise RecordError(problem)


# --------------------------------------------------------------------------- protobuf wire format


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise RecordError("truncated varint in an Example message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise RecordError("varint longer than 10 bytes in an Example message")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of a message: value is an int for varints and fixed
    widths (raw bits), a memoryview for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > len(buf):
                raise RecordError("truncated 64-bit field in an Example message")
            value, pos = int.from_bytes(buf[pos : pos + 8], "little"), pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise RecordError("truncated length-delimited field in an Example message")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            if pos + 4 > len(buf):
                raise RecordError("truncated 32-bit field in an Example message")
            value, pos = int.from_bytes(buf[pos : pos + 4], "little"), pos + 4
        else:
            raise RecordError(f"unsupported wire type {wire} in an Example message")
        yield number, wire, value


def _feature(buf: memoryview) -> list[bytes] | np.ndarray:
    for number, wire, value in _fields(buf):
        if wire != 2 or number not in (1, 2, 3):
            continue
        items: list = []
        for inner, inner_wire, item in _fields(value):  # the list's repeated field 1
            if inner != 1:
                continue
            if number == 1:
                items.append(bytes(item))
            elif number == 2:
                items.append(np.frombuffer(item, "<f4") if inner_wire == 2
                             else np.array([item], "<u4").view("<f4"))
            else:
                if inner_wire == 2:  # packed varints
                    pos, values = 0, []
                    while pos < len(item):
                        v, pos = _varint(item, pos)
                        values.append(v)
                    items.append(np.array(values, np.uint64).view(np.int64))
                else:
                    items.append(np.array([item], np.uint64).view(np.int64))
        if number == 1:
            return items
        dtype = np.float32 if number == 2 else np.int64
        return np.concatenate(items).astype(dtype) if items else np.zeros(0, dtype)
    return []  # a Feature with no kind set


def parse_example(data: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """A serialized ``tf.train.Example`` → ``{feature name: value}``: bytes features as a list of
    ``bytes``, float features as a float32 array, int64 features as an int64 array."""
    out: dict[str, list[bytes] | np.ndarray] = {}
    for number, wire, features in _fields(memoryview(data)):
        if number != 1 or wire != 2:
            continue
        for entry_number, entry_wire, entry in _fields(features):
            if entry_number != 1 or entry_wire != 2:
                continue
            name, value = None, memoryview(b"")
            for part, part_wire, item in _fields(entry):
                if part == 1 and part_wire == 2:
                    name = bytes(item).decode("utf-8", errors="replace")
                elif part == 2 and part_wire == 2:
                    value = item
            if name is not None:
                out[name] = _feature(value)
    return out


__all__ = ["RecordError", "iter_records", "masked_crc32c", "parse_example", "read_record",
           "record_spans"]
