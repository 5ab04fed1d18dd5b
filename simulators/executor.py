"""Where sweeps and benchmarks run their independent jobs: this process, local worker processes, or a Dask cluster.

Every job is ``fn(shared, item)``: ``shared`` is the big read-only input (a workload, a dataset), sent to each worker
once; ``item`` is the small per-job argument. ``fn`` must be a top-level (picklable) function.

* :class:`LocalExecutor` (``--jobs N``): N worker processes; ``shared`` goes to each worker once, through the
  pool's initializer. With N = 1 everything runs in this process.
* :class:`DaskExecutor` (``--dask tcp://scheduler:8786``, the ``dask`` extra): ``shared`` is scattered to every
  worker once (``Client.scatter(broadcast=True)``) and the jobs are mapped over it. Workers need shadowscale (and
  any data a job reads) installed.

Results come back in the order of ``items`` whatever the order they finish in, so a run gives the same answer on
any executor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from shadowscale.errors import MissingExtra, UsageError

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[int, int], None]
"""``progress(done, total)``, called as jobs finish."""


class Executor(Protocol):
    """Runs ``fn(shared, item)`` for every item; results in item order."""

    def map(
        self, fn: Callable[[S, T], R], shared: S, items: Sequence[T], progress: Progress | None = None
    ) -> list[R]: ...

    def close(self) -> None: ...


_SHARED: dict[int, Any] = {}
"""In a local worker process: the shared input of the current map, by map id."""


def _init_worker(key: int, shared: Any) -> None:
    _SHARED.clear()
    _SHARED[key] = shared


def _call_local(fn: Callable[[Any, Any], Any], key: int, item: Any) -> Any:
    return fn(_SHARED[key], item)


class _Base:
    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class LocalExecutor(_Base):
    """``jobs`` worker processes on this machine (1: run in this process)."""

    def __init__(self, jobs: int = 1) -> None:
        if jobs < 1:
            raise UsageError(f"--jobs must be at least 1, got {jobs}")
        self.jobs = jobs

    def __repr__(self) -> str:
        return f"LocalExecutor(jobs={self.jobs})"

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T], progress: Progress | None = None) -> list[R]:
        total = len(items)
        if self.jobs == 1 or total <= 1:
            out = []
            for item in items:
                out.append(fn(shared, item))
                if progress is not None:
                    progress(len(out), total)
            return out
        from concurrent.futures import ProcessPoolExecutor

        key = id(shared)
        workers = min(self.jobs, total)
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, initargs=(key, shared)) as pool:
            futures = [pool.submit(_call_local, fn, key, item) for item in items]
            results: list[R] = []
            for f in futures:
                results.append(f.result())
                if progress is not None:
                    progress(len(results), total)
        return results


class DaskExecutor(_Base):
    """Jobs on the Dask cluster whose scheduler is at ``address`` (``tcp://HOST:8786``)."""

    def __init__(self, address: str, *, timeout_s: float = 30.0) -> None:
        try:
            import distributed
        except ImportError as e:
            raise MissingExtra("--dask", "dask", "distributed") from e
        self._distributed: Any = distributed  # partly typed: used through Any
        self.address = address
        try:
            self.client: Any = self._distributed.Client(address, timeout=timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as e:
            raise UsageError(f"--dask {address}: cannot reach the Dask scheduler: {e}") from None

    def __repr__(self) -> str:
        return f"DaskExecutor({self.address!r})"

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T], progress: Progress | None = None) -> list[R]:
        total = len(items)
        if total == 0:
            return []
        scattered = self.client.scatter(shared, broadcast=True)
        futures = self.client.map(fn, [scattered] * total, list(items), pure=False)
        try:
            results: list[R] = []
            for f in futures:  # in item order, whatever order they finish in
                results.append(f.result())
                if progress is not None:
                    progress(len(results), total)
        finally:
            self.client.cancel([*futures, scattered])
        return results

    def close(self) -> None:
        self.client.close()


def default_jobs() -> int:
    """The local default: every CPU this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def make_executor(
    jobs: int | None = None, dask: str | None = None, default: int | None = None
) -> LocalExecutor | DaskExecutor:
    """``--dask ADDRESS`` if given, else ``--jobs N`` local processes (default: ``default``, at most the CPUs this
    process may use; without ``default``, all of them)."""
    if dask:
        if jobs is not None:
            raise UsageError("give --jobs or --dask, not both (a Dask cluster has its own workers)")
        return DaskExecutor(dask)
    if jobs is None:
        jobs = default_jobs() if default is None else max(1, min(default, default_jobs()))
    return LocalExecutor(jobs)


def add_arguments(parser: Any, *, default_help: str = "all CPUs") -> None:
    """``--jobs N`` and ``--dask ADDRESS`` on an argparse parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--jobs",
        type=_jobs,
        metavar="N",
        help=f"run the jobs in N local worker processes (default: {default_help})",
    )
    group.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the jobs on the Dask cluster whose scheduler is at ADDRESS, e.g. tcp://scheduler:8786 "
        "(needs the dask extra; the workers need shadowscale installed)",
    )


def _jobs(text: str) -> int:
    import argparse

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return n
