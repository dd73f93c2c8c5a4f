"""The runners behind ``engine.kind``: this process, or the workers of a Dask cluster.

One call shape for both, ``engine.ordered(fn, items, describe=..., shared=(...))``: ``fn(item,
*shared)`` runs for every item and the results come back **in input order**, so the stage that
consumes them writes the same bytes whoever computed them. ``shared`` objects (the upstream models
of ``tokenize``, T and the autoencoder of ``evaluate``) are sent to every worker once.

Why Dask (``dask.distributed``) rather than Ray: the work here is a handful of coarse, ordered
Python tasks (a video, a group of clips, a batch of inputs), which a Dask ``Client`` maps with
plain futures; ``dask[distributed]`` is pure Python (installs wherever pip does, no object store or
extra daemons), a local cluster of 2 workers starts in seconds on a laptop, and the same code
joins a scheduler on Kubernetes, Slurm (dask-jobqueue) or a cloud (``engine.address``). Prefect,
which runs the DAG, has a Dask task runner too (prefect-dask), so one cluster can serve both.

Failures: an exception inside ``fn`` comes back with its type (a ``UserError`` still ends the
stage in one line); a worker that dies is replaced and its task retried on another worker
(Dask's ``allowed-failures``); a task that keeps killing workers stops the stage with
:class:`EngineError` naming the item and the last worker; nothing is written for items not
returned, and a rerun does the work again. An unreachable scheduler is named in one line.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Callable, Iterable, Iterator, TypeVar

from pipeline.engine.config import LOCAL, EngineParams
from pipeline.errors import UserError
from pipeline.params import load_section, read_yaml

Item = TypeVar("Item")


class EngineError(UserError, RuntimeError):
    """The engine cannot run the work (scheduler unreachable, a worker keeps dying)."""


class LocalEngine:
    """Everything in this process, in order (the single-machine path)."""

    kind = "local"
    workers = 1

    def ordered(self, fn: Callable[..., Any], items: Iterable[Item], *,
                describe: Callable[[Item], str] = str, shared: tuple = (),
                window: int | None = None) -> Iterator[tuple[Item, Any]]:
        for item in items:
            yield item, fn(item, *shared)

    def close(self) -> None:
        pass


class DaskEngine:
    """The workers of a Dask cluster: a new local one, or the scheduler at ``params.address``."""

    kind = "dask"

    def __init__(self, params: EngineParams, stage: str):
        try:
            from distributed import Client, LocalCluster
        except ImportError as err:  # pragma: no cover - a dependency of the project
            raise EngineError(f"engine.kind: dask needs dask[distributed] ({err})") from None
        self.stage = stage
        self.cluster = None
        if params.address:
            try:
                self.client = Client(params.address, timeout="30s")
            except (OSError, TimeoutError) as err:
                raise EngineError(f"engine.address {params.address}: cannot reach the Dask "
                                  f"scheduler ({' '.join(str(err).split())})") from None
        else:  # one thread per worker process: the work is numpy / torch, not Python threads
            import dask

            # worker-saturation 1.0: a worker holds only the task it runs, so a worker that dies
            # was running exactly the task the error names (Dask's default 1.1 queues a second
            # task on a one-thread worker); set it on your own scheduler for the same guarantee
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
                self.cluster = LocalCluster(n_workers=params.workers, threads_per_worker=1,
                                            processes=True, host="127.0.0.1",
                                            dashboard_address=None, silence_logs=logging.ERROR,
                                            env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
            self.client = Client(self.cluster)
        self.workers = max(len(self.client.scheduler_info()["workers"]), 1)

    @property
    def address(self) -> str:
        return self.client.scheduler.address

    def ordered(self, fn: Callable[..., Any], items: Iterable[Item], *,
                describe: Callable[[Item], str] = str, shared: tuple = (),
                window: int | None = None) -> Iterator[tuple[Item, Any]]:
        """Run ``fn(item, *shared)`` for the items and yield ``(item, result)`` in input order.

        One task per worker thread runs at a time (so a worker that dies was running exactly
        one task: the one named in the error), and at most ``window`` (4 per thread) results
        wait for an earlier item before more work is taken from ``items``."""
        from distributed import KilledWorker, as_completed

        threads = sum(w.get("nthreads", 1) for w in self.client.scheduler_info()["workers"].values())
        threads = max(threads, 1)
        window = max(window or 4 * threads, threads)
        # a task that returns the object (not a scatter): the scheduler keeps the task, so a copy
        # lost with a dying worker is recomputed; workers fetch it once and keep it
        on_workers = [self.client.submit(_identity, obj, pure=False) for obj in shared]
        source = iter(items)
        waiting: dict[int, tuple[Item, Any]] = {}  # index → (item, future), not yet yielded
        running: dict[Any, int] = {}  # future → index
        finished = as_completed()
        submitted = yielded = 0
        exhausted = False
        try:
            while True:
                while (not exhausted and len(running) < threads
                       and submitted - yielded < window):
                    item = next(source, _END)
                    if item is _END:
                        exhausted = True
                        break
                    future = self.client.submit(fn, item, *on_workers, pure=False)
                    waiting[submitted] = (item, future)
                    running[future] = submitted
                    finished.add(future)
                    submitted += 1
                if yielded in waiting and waiting[yielded][1] not in running:
                    item, future = waiting.pop(yielded)
                    yielded += 1
                    yield item, future.result()
                    continue
                if not running:
                    return
                future = next(finished)
                index = running.pop(future)
                if future.status == "error":  # fail at once, whichever item it is
                    item = waiting[index][0]
                    try:
                        future.result()
                    except KilledWorker as err:
                        worker = re.search(r"(tcp|tls|inproc)://[\w.\-\[\]]+:\d+", str(err))
                        raise EngineError(
                            f"a Dask worker died running {describe(item)} (and so did every "
                            f"retry; last worker {worker.group(0) if worker else 'unknown'}): see "
                            f"that worker's log; a rerun does the work again") from None
        finally:
            for _, future in waiting.values():
                future.cancel()
            for future in on_workers:
                future.release()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close()


_END = object()


def _identity(obj: Any) -> Any:
    return obj


def engine_params(params_path: str) -> EngineParams:
    """The ``engine`` section of ``params_path`` (strictly), or the local engine when the file
    has no such section (a params file written before the section existed)."""
    if "engine" not in read_yaml(params_path):
        return LOCAL
    return load_section("engine", params_path)


@contextlib.contextmanager
def open_engine(params: EngineParams, stage: str) -> Iterator[LocalEngine | DaskEngine]:
    """The runner ``params`` names, closed (a local cluster stopped) on exit."""
    engine: LocalEngine | DaskEngine = (DaskEngine(params, stage) if params.kind == "dask"
                                        else LocalEngine())
    try:
        yield engine
    finally:
        engine.close()
