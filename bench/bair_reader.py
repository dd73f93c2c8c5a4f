"""BAIR TFRecords without TensorFlow: how fast the listing walks the record headers and how fast a
trajectory is read, CRC-checked, parsed and decoded (pipeline/data/datasets/{tfrecord,bair}.py).

Writes ``--records`` softmotion30_44k-style trajectories (30 frames, both cameras, end-effector,
action: ~0.74 MB each, the real record size) into a temporary TFRecord file, then times
``record_spans`` (the listing) and ``read_record`` + ``parse_example`` + ``decode_trajectory`` (what a
``prepare`` worker does per trajectory), best of ``--repeats``. Results in BENCHMARKS.md.

    python -m bench.bair_reader --records 64
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.data.datasets.bair import decode_trajectory
from pipeline.data.datasets.tfrecord import masked_crc32c, parse_example, read_record, record_spans


def _example(seed: int) -> bytes:
    """A 30-step record in the softmotion30_44k layout (hand-framed protobuf: a bench needs no
    protobuf runtime; tests/conftest_datasets.py builds the same bytes with it)."""
    rng = np.random.default_rng(seed)

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def field(number: int, payload: bytes) -> bytes:
        return varint(number << 3 | 2) + varint(len(payload)) + payload

    entries = b""
    for t in range(30):
        for name, kind, value in (
            (f"{t}/image_aux1/encoded", 1, field(1, rng.integers(0, 256, 12288, np.uint8).tobytes())),
            (f"{t}/image_main/encoded", 1, field(1, rng.integers(0, 256, 12288, np.uint8).tobytes())),
            (f"{t}/endeffector_pos", 2, field(1, rng.normal(size=3).astype("<f4").tobytes())),
            (f"{t}/action", 2, field(1, rng.normal(size=4).astype("<f4").tobytes())),
        ):
            entries += field(1, field(1, name.encode()) + field(2, field(kind, value)))
    return field(1, entries)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traj_0_to_63.tfrecords"
        with open(path, "wb") as handle:
            for i in range(args.records):
                data = _example(i)
                length = struct.pack("<Q", len(data))
                handle.write(length + struct.pack("<I", masked_crc32c(length)) + data
                             + struct.pack("<I", masked_crc32c(data)))
        size = path.stat().st_size / 1e6
        listing, decoding = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            spans, problem = record_spans(path)
            listing.append(time.perf_counter() - start)
            assert problem is None and len(spans) == args.records
            start = time.perf_counter()
            for offset, length in spans:
                frames, state = decode_trajectory(parse_example(read_record(path, offset, length)))
            decoding.append(time.perf_counter() - start)
            assert frames.shape == (30, 64, 64, 3) and state.shape == (30, 3)
    n = args.records
    print(f"{n} records, {size:.1f} MB")
    print(f"listing (record_spans): {min(listing) / n * 1e6:.0f} µs/record "
          f"(44k BAIR trajectories: {min(listing) / n * 43_520:.1f} s)")
    print(f"read + CRC + parse + decode: {min(decoding) / n * 1e3:.1f} ms/record, "
          f"{n * 30 / min(decoding):.0f} frames/s per process")


if __name__ == "__main__":
    main()
