"""Executors: local processes (any --jobs N) and a Dask cluster (distributed.LocalCluster on loopback)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shadowscale.cli import main
from shadowscale.errors import UsageError
from shadowscale.simulators.executor import DaskExecutor, LocalExecutor, make_executor


def _job(shared: dict[str, Any], item: int) -> tuple[int, int, int]:
    """(item, item * factor, the worker's pid): top-level, so it pickles."""
    return item, item * shared["factor"], os.getpid()


def _count_shared_pickles(shared: _Counted, item: int) -> int:
    return shared.value + item


class _Counted:
    """Counts how often it is unpickled (in this process: each worker unpickles its own copy)."""

    pickles = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        type(self).pickles += 1
        return (_Counted, (self.value,))


@pytest.mark.parametrize("jobs", [1, 3])
def test_local_executor_keeps_item_order_for_any_n(jobs: int) -> None:
    items = list(range(7))
    seen: list[tuple[int, int]] = []
    out = LocalExecutor(jobs).map(_job, {"factor": 3}, items, lambda d, t: seen.append((d, t)))
    assert [(i, v) for i, v, _ in out] == [(i, 3 * i) for i in items]
    assert seen[-1] == (7, 7) and len(seen) == 7
    pids = {pid for _, _, pid in out}
    assert (pids == {os.getpid()}) if jobs == 1 else (os.getpid() not in pids)


def test_local_executor_sends_the_shared_input_once_per_worker() -> None:
    """Mutation caught: passing ``shared`` with every job (pool.submit(fn, shared, item)) pickles it 20 times."""
    _Counted.pickles = 0
    out = LocalExecutor(2).map(_count_shared_pickles, _Counted(100), list(range(20)))
    assert out == [100 + i for i in range(20)]
    assert _Counted.pickles <= 2  # fork: 0 (inherited); spawn: once per worker


def test_jobs_and_dask_are_exclusive_and_jobs_must_be_positive() -> None:
    with pytest.raises(UsageError, match="not both"):
        make_executor(2, "tcp://127.0.0.1:1")
    with pytest.raises(UsageError, match="at least 1"):
        LocalExecutor(0)
    assert make_executor(None, None, default=1).jobs == 1  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        worker_dashboard_address=None,
    )
    try:
        yield str(cluster.scheduler_address)
    finally:
        cluster.close()


def test_dask_executor_maps_over_the_scattered_input(dask_address: str) -> None:
    with DaskExecutor(dask_address) as ex:
        seen: list[int] = []
        out = ex.map(_job, {"factor": 5}, list(range(9)), lambda d, t: seen.append(d))
    assert [(i, v) for i, v, _ in out] == [(i, 5 * i) for i in range(9)]
    assert sorted(seen) == list(range(1, 10))
    assert os.getpid() not in {pid for _, _, pid in out}  # ran on the cluster's worker processes


def test_unreachable_scheduler_is_a_usage_error() -> None:
    pytest.importorskip("distributed")
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler"):
        DaskExecutor("tcp://127.0.0.1:9", timeout_s=2.0)


def test_sweep_on_dask_gives_the_local_summary(dask_address: str, tmp_path: Path) -> None:
    """``simulate --sweep --dask ADDRESS`` writes the same summary.json as the local run (but wall_s).
    Mutation caught: DaskExecutor returning its results in any order but the items' (tried: reversed) mixes up
    the sweep points."""
    args = [
        "simulate",
        "--trace",
        "azure-functions-2019",
        "--hours",
        "0.1",
        "--models",
        "4",
        "--policies",
        "hpa,kpa,shadowscale",
        "--sweep",
        "--no-plots",
        "--quiet",
    ]
    assert main([*args, "--out", str(tmp_path / "local"), "--jobs", "1"]) == 0
    assert main([*args, "--out", str(tmp_path / "dask"), "--dask", dask_address]) == 0
    local = json.loads((tmp_path / "local" / "summary.json").read_text())
    dask = json.loads((tmp_path / "dask" / "summary.json").read_text())
    del local["wall_s"], dask["wall_s"]
    assert dask == local
    assert len(local["sweep"]["hpa"]) >= 10 and local["fair_ratio"] is not None and local["frontier"]["hpa"]
