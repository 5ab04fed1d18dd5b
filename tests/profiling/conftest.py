"""The profiler's GPs work on tiny matrices: BLAS threads only contend for the cores (several times slower on a
busy machine), so every test here runs with one."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "agent"))  # the durable broker helper lives there
from durable_broker import s3  # noqa: F401 (the durable-storage fixture, shared with tests/agent)


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield
