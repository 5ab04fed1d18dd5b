"""Fixtures for the agent's tests: the bundled tansu broker (one per test session and xdist worker) and kmock's
Kubernetes emulator with the test-side fixes kmock 0.8 needs (``agent_k8s.fixed_guess_k8s``,
``agent_k8s.enforcing_resource_version``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from agent_k8s import K8s, enforcing_resource_version, fixed_guess_k8s
from durable_broker import s3  # noqa: F401 (the durable-storage fixture, shared with tests/profiling)

from shadowscale.agent.broker import LocalBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    b = LocalBroker()
    b.start()
    try:
        yield b
    finally:
        b.stop()


# -- Kubernetes: kmock's emulator ---------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def k8s(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[K8s]:
    import importlib.metadata

    import kmock
    from kmock._internal import parsing

    assert importlib.metadata.version("kmock") == "0.8", "the test-side fixes below are written for kmock 0.8"
    monkeypatch.setattr(parsing, "guess_k8s", fixed_guess_k8s(parsing.guess_k8s))
    emulator_cls: Any = kmock.KubernetesEmulator
    monkeypatch.setattr(emulator_cls, "_handle", enforcing_resource_version(emulator_cls._handle))
    async with kmock.KubernetesEmulator() as emu, kmock.Server(emu) as server:
        emulator: Any = emu
        emulator.resources["apps/v1/deployments"] = {}
        emulator.resources["apps/v1/statefulsets"] = {}
        emulator.resources["coordination.k8s.io/v1/leases"] = {}
        async with aiohttp.ClientSession() as http:
            yield K8s(emulator, str(server.url).rstrip("/"), http)
