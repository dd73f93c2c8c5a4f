"""A real S3 API on 127.0.0.1 for the tests: moto's server mode, started and stopped by the test.

``local_s3()`` starts ``moto.server.ThreadedMotoServer`` on a free loopback port, points the
standard AWS variables at it (``AWS_ENDPOINT_URL``, dummy keys; a subprocess inherits them, so a
stage run with ``subprocess`` talks to the same server), creates a bucket and yields its
``s3://`` URL; on exit the server stops and the variables are put back.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

import pytest

_VARS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
         "AWS_SESSION_TOKEN", "AWS_PROFILE")


def _clear_s3fs_cache() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextlib.contextmanager
def aws_env(endpoint: str) -> Iterator[None]:
    """The AWS variables pointing at ``endpoint`` with dummy credentials (restored on exit)."""
    saved = {k: os.environ.get(k) for k in _VARS}
    for k in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(k, None)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    _clear_s3fs_cache()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _clear_s3fs_cache()


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """Yield ``s3://<new bucket>`` on a moto S3 server that lives for the ``with`` block."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        with aws_env(f"http://{host}:{port}"):
            import fsspec

            bucket = f"ccvs-{uuid.uuid4().hex[:8]}"
            fsspec.filesystem("s3").mkdir(bucket)
            yield f"s3://{bucket}"
    finally:
        server.stop()
