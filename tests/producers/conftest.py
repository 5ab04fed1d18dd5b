"""Fixtures for the producers' tests: the bundled tansu broker (one per test session and xdist worker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shadowscale.agent.broker import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    b = LocalBroker()
    b.start()
    try:
        yield b
    finally:
        b.stop()
