"""The profiler's GPs work on tiny matrices: BLAS threads only contend for the cores (several times slower on a
busy machine), so every test here runs with one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    with threadpool_limits(limits=1):
        yield
