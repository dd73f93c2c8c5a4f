"""Clip shards: writing them (``prepare``) and reading them back (every later stage).

Format (docs/CONTRACTS.md "Clip shards"): webdataset tar files ``{root}/{split}/clips-%05d.tar``;
a sample is the tar members ``<key>.frames.npy`` (uint8 T×H×W×3), ``<key>.audio.npy`` (float32
mono), ``<key>.positions.npy`` (float32 T×2, NaN where unknown), ``<key>.layout.npy`` (uint8
T×H×W; :data:`NO_LAYOUT` on a frame nobody labelled) and ``<key>.json`` (meta), with ``key = <video_id>_<clip:04d>`` (no dots: webdataset cuts
the key at the first dot).

Writing (in :mod:`pipeline.data.shard_writing`, which describes it; re-exported here with
``ShardError`` and ``SHARD_PATTERN``, so ``from pipeline.data.shards import ShardWriter`` keeps working):
:class:`ShardWriter` fills size-capped, byte-reproducible shards, and decoding processes write
their clips in place (:func:`write_placed`).

Reading (this module): :func:`clip_dataset` is a ``torch.utils.data.IterableDataset`` that splits
the shards over distributed ranks (``torch.distributed``) and DataLoader workers (by shard when
there are enough shards, by sample otherwise, so no worker idles on a one-shard split), with
optional shuffling; :func:`iter_clips` is the plain sequential reader for evaluation code. Shards
are opened with webdataset's ``gopen``, so URLs (``http://``, ``pipe:``, brace patterns) work too.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from pipeline.data.shard_writing import (
    ShardError,
)

ARRAY_FIELDS = ("frames", "audio", "positions", "layout")
NO_LAYOUT = 255  # a layout.npy frame nobody labelled (Cityscapes: 29 of 30; its "ignore" id)

# the writing side's names stay importable from here (``ClipDataset`` is left out: it is built on
# first attribute access, see ``__getattr__``, and a star import should not import torch)
__all__ = [
    "ARRAY_FIELDS",
    "NO_LAYOUT",
    "clip_dataset",
    "decode_sample",
    "iter_clips",
    "iter_shard",
    "list_shards",
]


# --------------------------------------------------------------------------- samples


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
