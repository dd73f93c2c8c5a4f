"""Where shards live: a local folder or any fsspec URL (``s3://``, ``gs://``, ``file://``, ...).

Clip shards (``prepare``) and token shards (``tokenize``) may be written to object storage, so a
dataset too large for one disk (Kinetics-600 is ~500k clips) streams to every training rank from
one place. Models and metrics stay DVC outputs in the repository's folders; only shards move.

Rules this module keeps:

* **Nothing partial is visible.** A shard is written whole to a local ``.tmp`` file first
  (``pipeline.data.shard_writing.ShardWriter``) and only then published: on an object store that
  is one PUT (S3 and GCS make an object visible whole or not at all); on a file system it is a
  copy to a hidden temporary name and a rename. A stage that dies leaves at worst an unlisted
  object; the stage's index (``shards.json``, see :mod:`pipeline.data.shard_index`) is written
  last, so a later stage never reads a shard of an unfinished run.
* **One-line errors naming the URL.** A URL that cannot be reached, a missing bucket or object,
  refused credentials, or a protocol whose fsspec backend is not installed (``gs://`` needs
  ``gcsfs``) raises :class:`StorageError` with the URL and the cause.
* **Credentials and endpoints come from the usual places**, never from ``params.yaml``: for S3 the
  ``AWS_*`` environment variables or ``~/.aws`` (``AWS_ENDPOINT_URL`` for MinIO, Ceph or a local
  test server), for GCS ``GOOGLE_APPLICATION_CREDENTIALS``; fsspec's ``FSSPEC_<PROTOCOL>_<KEY>``
  variables pass any other backend option.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

from pipeline.errors import UserError


class StorageError(UserError, OSError):
    """A URL that cannot be read or written; the message names it and the cause."""


def is_url(text: str | Path) -> bool:
    """True for ``scheme://...`` (not for a plain or Windows path, nor webdataset's ``pipe:``)."""
    text = str(text)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...`` for a URL or a path (URLs always use ``/``)."""
    if is_url(root):
        return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root).joinpath(*parts))


def _cause(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}" if type(err).__name__ not in text else text


def _fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of ``url``."""
    try:
        from fsspec.core import url_to_fs

        return url_to_fs(url)
    except ImportError as err:  # e.g. gs:// without gcsfs
        raise StorageError(f"{url}: no fsspec backend for this protocol ({_cause(err)}); "
                           f"install it (s3fs for s3://, gcsfs for gs://)") from None
    except (ValueError, OSError) as err:
        raise StorageError(f"{url}: {_cause(err)}") from None


def is_local(url: str | Path) -> bool:
    """A plain path or a URL on the local file system (``file://``)."""
    if not is_url(url):
        return True
    return str(url).startswith("file://")


def local_path(url: str | Path) -> Path:
    """The path of a local location (a plain path or a ``file://`` URL)."""
    text = str(url)
    return Path(text[len("file://"):]) if text.startswith("file://") else Path(text)


def open_read(url: str | Path) -> IO[bytes]:
    """A binary file object reading ``url`` (a path or an fsspec URL) from its start."""
    if is_local(url):
        path = local_path(url)
        try:
            return open(path, "rb")
        except OSError as err:
            raise StorageError(f"{path}: cannot be read ({_cause(err)})") from None
    fs, path = _fs(str(url))
    try:
        return fs.open(path, "rb")
    except Exception as err:  # the backends raise their own types (botocore, aiohttp, google)
        raise StorageError(f"{url}: cannot be read ({_cause(err)})") from None


def read_bytes(url: str | Path) -> bytes:
    with open_read(url) as handle:
        try:
            return handle.read()
        except Exception as err:
            raise StorageError(f"{url}: read failed ({_cause(err)})") from None


def exists(url: str | Path) -> bool:
    if is_local(url):
        return local_path(url).exists()
    fs, path = _fs(str(url))
    try:
        return bool(fs.exists(path))
    except Exception as err:
        raise StorageError(f"{url}: cannot be reached ({_cause(err)})") from None


def list_files(folder: str | Path, pattern: str = "*.tar") -> list[str]:
    """The files of ``folder`` matching ``pattern``, sorted, as URLs/paths in ``folder``'s form."""
    if is_local(folder):
        base = local_path(folder)
        found = sorted(base.glob(pattern)) if base.is_dir() else []
        prefix = "file://" if str(folder).startswith("file://") else ""
        return [f"{prefix}{p}" for p in found]
    fs, path = _fs(str(folder))
    try:
        found = sorted(fs.glob(f"{path.rstrip('/')}/{pattern}"))
    except Exception as err:
        raise StorageError(f"{folder}: cannot be listed ({_cause(err)})") from None
    protocol = str(folder).split("://", 1)[0]
    return [f"{protocol}://{p}" for p in found]


def publish(local: str | Path, url: str | Path) -> None:
    """Copy the finished file ``local`` to ``url`` so that readers see all of it or nothing."""
    local = Path(local)
    if is_local(url):
        dest = local_path(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, dest)
        except OSError as err:
            raise StorageError(f"{dest}: cannot be written ({_cause(err)})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return
    fs, path = _fs(str(url))
    try:  # one PUT (or one multipart upload completed at the end): atomic on S3 and GCS
        fs.put_file(str(local), path)
    except Exception as err:
        raise StorageError(f"{url}: cannot be written ({_cause(err)})") from None


def remove(url: str | Path) -> None:
    """Delete ``url`` if it exists."""
    if is_local(url):
        local_path(url).unlink(missing_ok=True)
        return
    fs, path = _fs(str(url))
    try:
        if fs.exists(path):
            fs.rm_file(path)
    except Exception as err:
        raise StorageError(f"{url}: cannot be deleted ({_cause(err)})") from None
