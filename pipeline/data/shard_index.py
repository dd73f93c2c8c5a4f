"""``shards.json``: where a stage's shards live when they are not in its output folder.

A data stage whose shards go to object storage (``prepare.shards`` / ``tokenize.shards`` set to
an fsspec URL such as ``s3://bucket/ccvs/clips``) still writes its small outputs (manifest,
``classes.json``, ``vocab.json``, ...) to its DVC output folder, plus this index::

    {"root": "s3://bucket/ccvs/clips",
     "splits": {"train": [{"name": "train/clips-00000.tar", "bytes": 49999872,
                           "samples": 251, "sha1": "..."}, ...], "val": [...], "test": [...]}}

Readers (``pipeline.data.shards.list_shards``) resolve a folder with an index to the URLs it
lists, so every later stage reads the remote shards through the same ``--clips data/clips`` it
always took. The index is written last and atomically: it only ever lists shards that were
published whole, and because it carries each shard's size and SHA-1, DVC's hash of the output
folder changes whenever the shards do (DVC tracks the index; the bytes stay in the bucket).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.atomic import write_json
from pipeline.data.storage import join
from pipeline.errors import UserError

INDEX_FILE = "shards.json"


class ShardIndexError(UserError, ValueError):
    """A ``shards.json`` that cannot be read; the message names it."""


def write_index(folder: str | Path, root: str, splits: dict[str, list[dict[str, Any]]]) -> Path:
    """Write ``folder/shards.json`` listing, per split, the shards published under ``root``."""
    return write_json(Path(folder) / INDEX_FILE, {"root": root, "splits": splits})


def read_index(folder: str | Path) -> dict[str, Any] | None:
    """The index of ``folder`` (None when it has none: its shards are in the folder itself)."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(index.get("root"), str) or not isinstance(index.get("splits"), dict):
            raise ValueError("needs 'root' (a URL) and 'splits'")
    except (ValueError, AttributeError) as err:
        raise ShardIndexError(f"{path}: not a shard index ({err}); rerun the stage that wrote it") from None
    return index


def index_urls(index: dict[str, Any], split: str | None) -> list[str]:
    """The shard URLs of ``split`` (every split's, in split order, when ``split`` is None)."""
    splits = [split] if split else list(index["splits"])
    return [join(index["root"], entry["name"]) for s in splits
            for entry in index["splits"].get(s, [])]
