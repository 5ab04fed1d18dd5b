"""Suite-wide isolation: structlog's global configuration does not leak from one test to the next.

Tests that run the agent in-process (``serve``) configure structlog for it — a level filter, JSON or console
output. Without a reset, a later test in the same worker inherits that filter, and ``structlog.testing.
capture_logs`` (which swaps the processors, not the level filter) then sees no warnings at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
