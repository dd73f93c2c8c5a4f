"""The ``engine`` section of ``params.yaml``: which runner the data stages use (a leaf module).

DVC does not track this section: where the work runs never changes a byte of the outputs
(``tests/test_engine.py`` checks it), so switching engines reruns nothing.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class EngineParams:
    """Who runs ``prepare``, ``tokenize`` and ``evaluate``'s per-item work."""

    kind: Literal["local", "dask"]  # local: this machine as before (prepare.workers processes);
    # dask: the workers of a Dask cluster (dask.distributed)
    address: str  # dask: the scheduler to join (tcp://host:8786); "" = start a local cluster
    workers: int  # dask local cluster: worker processes (1 thread each)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.address and self.kind != "dask":
            raise ValueError(f"address {self.address!r} is only used with kind: dask")


LOCAL = EngineParams(kind="local", address="", workers=1)
