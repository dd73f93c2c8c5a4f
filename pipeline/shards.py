"""Clip shards: writing them (``prepare``) and reading them back (every later stage).

Format (docs/CONTRACTS.md "Clip shards"): webdataset tar files ``{root}/{split}/clips-%05d.tar``;
a sample is the tar members ``<key>.frames.npy`` (uint8 T×H×W×3), ``<key>.audio.npy`` (float32
mono), ``<key>.positions.npy`` (float32 T×2, NaN where unknown), ``<key>.layout.npy`` (uint8
T×H×W) and ``<key>.json`` (meta), with ``key = <video_id>_<clip:04d>`` (no dots: webdataset cuts
the key at the first dot).

Writing: :class:`ShardWriter` fills ``clips-%05d.tar.tmp`` and renames it to ``clips-%05d.tar``
when it closes, starting a new shard before a sample would push it past ``max_bytes``; tar headers
carry fixed owner/time, so the same clips give byte-identical shards. Space is handed out in order
(:meth:`ShardWriter.place`: shard, offset), and the bytes can be written there later by any
process (:func:`write_placed`, one ``pwritev`` per sample), so decoding processes write their clips
in place while the shard layout stays the one sequential writing gives.

Reading: :func:`clip_dataset` is a ``torch.utils.data.IterableDataset`` that splits the shards
over distributed ranks (``torch.distributed``) and DataLoader workers (by shard when there are
enough shards, by sample otherwise, so no worker idles on a one-shard split), with optional
shuffling; :func:`iter_clips` is the plain sequential reader for evaluation code. Shards are
opened with webdataset's ``gopen``, so URLs (``http://``, ``pipe:``, brace patterns) work too.
"""

from __future__ import annotations

import functools
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
