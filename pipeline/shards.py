"""Clip shards: writing them (``prepare``) and reading them back (every later stage).

Format (docs/CONTRACTS.md "Clip shards"): webdataset tar files ``{root}/{split}/clips-%05d.tar``;
a sample is the tar members ``<key>.frames.npy`` (uint8 T×H×W×3), ``<key>.audio.npy`` (float32
mono), ``<key>.positions.npy`` (float32 T×2, NaN where unknown), ``<key>.layout.npy`` (uint8
T×H×W) and ``<key>.json`` (meta), with ``key = <video_id>_<clip:04d>`` (no dots: webdataset cuts
the key at the first dot).

Writing: :class:`ShardWriter` fills ``clips-%05d.tar.tmp`` and renames it to ``clips-%05d.tar``
when it closes, starting a new shard before a sample would push it past ``max_bytes``; tar headers
carry fixed owner/time, so the same clips give byte-identical shards.

Reading: :func:`clip_dataset` is a ``torch.utils.data.IterableDataset`` that splits the shards
over distributed ranks (``torch.distributed``) and DataLoader workers (by shard when there are
enough shards, by sample otherwise, so no worker idles on a one-shard split), with optional
shuffling; :func:`iter_clips` is the plain sequential reader for evaluation code. Shards are
opened with webdataset's ``gopen``, so URLs (``http://``, ``pipe:``, brace patterns) work too.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence, Union

import numpy as np

SHARD_PATTERN = "clips-%05d.tar"
ARRAY_FIELDS = ("frames", "audio", "positions", "layout")


class ShardError(ValueError):
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
        buffer = io.BytesIO()
        np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
        return cls(buffer.getvalue(), array)

    def __len__(self) -> int:
        return len(self.header) + self.array.nbytes

    def tobytes(self) -> bytes:
        return self.header + self.array.tobytes()


Member = Union[bytes, Npy]


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


def decode_sample(key: str, members: dict[str, bytes], where: str = "") -> dict[str, Any]:
    """Members of one sample (``{"frames.npy": b"...", ...}``) → ``{"key", "frames", ..., "meta"}``."""
    out: dict[str, Any] = {"key": key}
    for name, data in members.items():
        field, _, ext = name.partition(".")
        try:
            if ext == "npy":
                out[field] = np.load(io.BytesIO(data), allow_pickle=False)
            elif name == "json":
                out["meta"] = json.loads(data.decode("utf-8"))
            else:
                out[name] = data
        except (ValueError, OSError, UnicodeDecodeError) as err:
            raise ShardError(f"{where}: sample {key}: cannot decode {name} ({err})") from None
    if "frames" not in out:
        raise ShardError(f"{where}: sample {key} has no frames.npy")
    out.setdefault("meta", {})
    return out


def sample_nbytes(sample: dict[str, Any]) -> int:
    """Bytes ``sample`` adds to a tar (a 512-byte header per member + data padded to 512)."""
    total = 0
    for name, value in sample.items():
        if name.startswith("__"):
            continue
        total += 512 + -(-len(value) // 512) * 512
    return total


# --------------------------------------------------------------------------- writing


def write_sample(handle: Any, sample: dict[str, Any]) -> int:
    """Write ``sample``'s tar members (header, data, padding each) to the binary file ``handle``;
    return the bytes written (``sample_nbytes(sample)``). Owner, group and mtime are fixed, so
    the same clip always gives the same bytes."""
    key = sample["__key__"]
    total = 0
    for name in sorted(k for k in sample if not k.startswith("__")):
        data = sample[name]
        if isinstance(data, str):
            data = data.encode("utf-8")
        # the tar header, then the data straight from its buffer (tarfile.addfile would copy
        # it again in 16 kB pieces)
        info = tarfile.TarInfo(f"{key}.{name}")
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        info.uname = info.gname = ""
        handle.write(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
        if isinstance(data, Npy):
            handle.write(data.header)
            handle.write(memoryview(data.array).cast("B"))
        else:
            handle.write(data)
        pad = -len(data) % tarfile.BLOCKSIZE
        handle.write(b"\0" * pad)
        total += tarfile.BLOCKSIZE + len(data) + pad
    return total


def _copy_range(source: Any, target: Any, offset: int, size: int) -> None:
    """Copy ``size`` bytes from ``source`` at ``offset`` to the end of ``target`` (both open
    binary files; ``target`` flushed)."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < size:
                n = os.copy_file_range(source.fileno(), target.fileno(), size - done, offset + done)
                if n <= 0:
                    break
                done += n
        except OSError:  # e.g. across file systems on old kernels: copy by hand below
            pass
        target.seek(0, os.SEEK_END)
    source.seek(offset + done)
    while done < size:
        block = source.read(min(1 << 22, size - done))
        if not block:
            raise ShardError(f"{getattr(source, 'name', source)}: fragment shorter than expected")
        target.write(block)
        done += len(block)


class ShardWriter:
    """Size-capped webdataset shards for one split: ``folder/clips-00000.tar``, ``-00001``...

    A shard is written as ``*.tar.tmp`` and renamed when full or on :meth:`close`, so readers
    (and DVC) never see half a shard. ``write`` returns the shard's name relative to the
    dataset root (``train/clips-00000.tar``) for the manifest.
    """

    def __init__(self, folder: str | Path, max_bytes: int, pattern: str = SHARD_PATTERN):
        if max_bytes <= 0:
            raise ValueError(f"shard max_bytes must be positive, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.pattern = pattern
        self.shards: list[Path] = []  # finished shards, in order
        self.samples = 0
        self._index = 0
        self._file: Any = None
        self._size = 0
        self._count = 0

    @property
    def _current(self) -> Path:
        return self.folder / (self.pattern % self._index)

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self._current.with_name(self._current.name + ".tmp"), "wb")
        self._size, self._count = 1024, 0  # the end-of-archive blocks

    def _finish(self) -> None:
        if self._file is None:
            return
        # end of archive: two zero blocks, then zeros up to a whole record (as tarfile does)
        written = self._file.tell() + 2 * tarfile.BLOCKSIZE
        self._file.write(b"\0" * (2 * tarfile.BLOCKSIZE + (-written % tarfile.RECORDSIZE)))
        self._file.close()
        tmp = self._current.with_name(self._current.name + ".tmp")
        os.replace(tmp, self._current)
        self.shards.append(self._current)
        self._file = None
        self._index += 1

    def _make_room(self, size: int) -> None:
        if self._file is not None and self._count and self._size + size > self.max_bytes:
            self._finish()
        if self._file is None:
            self._open()

    def _added(self, size: int) -> str:
        self._size += size
        self._count += 1
        self.samples += 1
        return f"{self.folder.name}/{self._current.name}"

    def write(self, sample: dict[str, Any]) -> str:
        """Append one encoded sample (:func:`encode_sample`); return its shard's relative name."""
        size = sample_nbytes(sample)
        self._make_room(size)
        write_sample(self._file, sample)
        return self._added(size)

    def write_raw(self, source: Any, offset: int, size: int) -> str:
        """Append ``size`` bytes at ``offset`` of the open binary file ``source``: one sample's
        members as :func:`write_sample` wrote them (a decoding process's fragment). Copied by the
        kernel where it can (``os.copy_file_range``), so the pixels never pass through Python."""
        self._make_room(size)
        self._file.flush()
        _copy_range(source, self._file, offset, size)
        return self._added(size)

    def close(self) -> list[Path]:
        """Finish the open shard; return every shard written."""
        self._finish()
        return self.shards

    def abort(self) -> None:
        """Drop the shard being written (its ``.tmp`` file) after an error."""
        if self._file is not None:
            self._file.close()
            tmp = self._current.with_name(self._current.name + ".tmp")
            tmp.unlink(missing_ok=True)
            self._file = None

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- reading


def _is_url(text: str) -> bool:
    return "://" in text or text.startswith("pipe:")


def list_shards(root_or_urls: str | Path | Sequence[str | Path], split: str | None = None) -> list[str]:
    """Shard URLs/paths: a dataset root (``root/split/clips-*.tar``), a split folder, a single
    shard, a brace pattern (``clips-{00000..00009}.tar``) or a list of any of these."""
    if isinstance(root_or_urls, (list, tuple)):
        return [u for item in root_or_urls for u in list_shards(item, split)]
    text = str(root_or_urls)
    if "{" in text:
        import braceexpand

        return list(braceexpand.braceexpand(text))
    if _is_url(text):
        return [text]
    path = Path(text)
    if path.is_dir():
        folder = path / split if split and (path / split).is_dir() else path
        if split and folder == path and path.name != split:
            if (path / "manifest.parquet").exists():  # a prepare output with an empty split
                return []
            raise ShardError(f"{path}: no '{split}' folder of shards")
        return [str(p) for p in sorted(folder.glob("*.tar"))]
    if path.is_file():
        return [str(path)]
    raise ShardError(f"{path}: no such shard or folder")


def _open_shard(url: str):
    if _is_url(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Decoded samples of one shard, in order (members grouped by key)."""
    stream = _open_shard(url)
    try:
        try:
            archive = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.TarError as err:
            raise ShardError(f"{url}: not a tar shard ({err})") from None
        key, members = None, {}
        try:
            for info in archive:
                if not info.isfile():
                    continue
                base = info.name.rsplit("/", 1)[-1]
                prefix = info.name[: len(info.name) - len(base)]
                name_key, _, field = base.partition(".")
                name_key = prefix + name_key
                if key is not None and name_key != key:
                    yield decode_sample(key, members, url)
                    members = {}
                key = name_key
                members[field] = archive.extractfile(info).read()
        except tarfile.TarError as err:
            raise ShardError(f"{url}: truncated or corrupt shard ({err})") from None
        if key is not None:
            yield decode_sample(key, members, url)
    finally:
        stream.close()


def iter_clips(
    root_or_urls: str | Path | Sequence[str | Path], split: str | None = None, *, limit: int | None = None
) -> Iterator[dict[str, Any]]:
    """Every sample of ``split`` in shard order, in this process (no workers, no shuffling).

    Yields ``{"key", "frames", "positions", ["audio"], ["layout"], "meta"}`` with numpy arrays.
    """
    count = 0
    for url in list_shards(root_or_urls, split):
        for sample in iter_shard(url):
            if limit is not None and count >= limit:
                return
            yield sample
            count += 1


def _consumer() -> tuple[int, int]:
    """(index, count) of this reader among distributed ranks × DataLoader workers."""
    rank, world = 0, 1
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    worker, workers = 0, 1
    try:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        if info is not None:
            worker, workers = info.id, info.num_workers
    except ImportError:  # pragma: no cover
        pass
    return rank * workers + worker, world * workers


class _ClipIterable:
    """Body of :class:`ClipDataset` (kept free of torch so it can be used without it)."""

    def __init__(
        self,
        root_or_urls: str | Path | Sequence[str | Path],
        split: str | None = "train",
        *,
        shuffle: int = 0,
        seed: int = 0,
        fields: Iterable[str] | None = None,
    ):
        self.urls = list_shards(root_or_urls, split)
        self.split = split
        self.shuffle = shuffle
        self.seed = seed
        self.fields = None if fields is None else set(fields) | {"key", "meta"}
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffling order (call before each epoch, as with DistributedSampler)."""
        self.epoch = epoch

    def _assigned(self) -> Iterator[dict[str, Any]]:
        index, count = _consumer()
        urls = list(self.urls)
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(urls)  # same order on every rank
        if len(urls) >= count:  # whole shards per consumer
            for url in urls[index::count]:
                yield from iter_shard(url)
        else:  # fewer shards than consumers: everyone reads all, keeps every count-th sample
            position = 0
            for url in urls:
                for sample in iter_shard(url):
                    if position % count == index:
                        yield sample
                    position += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        samples = self._assigned()
        if self.fields is not None:
            samples = ({k: v for k, v in s.items() if k in self.fields} for s in samples)
        if not self.shuffle:
            yield from samples
            return
        index, _ = _consumer()
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if len(buffer) < self.shuffle:
                buffer.append(sample)
                continue
            pick = rng.randrange(len(buffer))
            buffer[pick], sample = sample, buffer[pick]
            yield sample
        rng.shuffle(buffer)
        yield from buffer


_dataset_class: type | None = None


def _clip_dataset_class() -> type:
    """``ClipDataset(_ClipIterable, torch.utils.data.IterableDataset)``, built on first use so
    that importing this module (e.g. in prepare's decoding processes) does not import torch."""
    global _dataset_class
    if _dataset_class is None:
        from torch.utils.data import IterableDataset

        _dataset_class = type(
            "ClipDataset",
            (_ClipIterable, IterableDataset),
            {"__doc__": "Clip samples of a split as a torch IterableDataset (see clip_dataset).",
             "__module__": __name__},
        )
    return _dataset_class


def __getattr__(name: str) -> Any:
    if name == "ClipDataset":
        return _clip_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def clip_dataset(
    root_or_urls: str | Path | Sequence[str | Path],
    split: str | None = "train",
    *,
    shuffle: int = 0,
    seed: int = 0,
    fields: Iterable[str] | None = None,
):
    """Clips of ``split`` as a torch ``IterableDataset`` for a ``DataLoader``.

    root_or_urls: the prepare output folder (``data/clips``), a split folder, shard paths/URLs
        or a brace pattern. Shards are split over ``torch.distributed`` ranks and DataLoader
        workers, so each sample is read by exactly one (rank, worker) per epoch.
    shuffle: size of the sample shuffle buffer (0 = shard order, deterministic); shards are
        shuffled too. Seeded by ``seed`` and ``set_epoch(epoch)``.
    fields: keep only these of frames/audio/positions/layout (key and meta always kept).
    Yields dicts ``{"key": str, "frames": uint8 (T, H, W, 3), "positions": float32 (T, 2),
    "audio": float32 (samples,), "layout": uint8 (T, H, W), "meta": dict}`` (optional arrays
    present when the shards hold them).
    """
    return _clip_dataset_class()(root_or_urls, split, shuffle=shuffle, seed=seed, fields=fields)
