"""Leader election on a Lease, against kmock's emulator through kubernetes-asyncio."""

from __future__ import annotations

import asyncio
import time

import pytest
from agent_k8s import K8s
from kubernetes_asyncio import client

from shadowscale.agent.config import LeaderConfig
from shadowscale.agent.leader import LeaderElector

pytestmark = pytest.mark.asyncio

CFG = LeaderConfig(enabled=True, namespace="ops", name="shadowscale", lease_duration_s=1.0, renew_period_s=0.1)


async def until(event: asyncio.Event, timeout_s: float = 5.0) -> None:
    await asyncio.wait_for(event.wait(), timeout_s)
    event.clear()


async def test_one_leader_and_handover_on_stop(k8s: K8s) -> None:
    async with client.ApiClient(client.Configuration(host=k8s.url)) as api:
        a = LeaderElector(CFG, "agent-a", api)
        b = LeaderElector(CFG, "agent-b", api)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        task_a = asyncio.create_task(a.run(stop_a), name="elector-a")
        await until(a.changed)
        task_b = asyncio.create_task(b.run(stop_b), name="elector-b")
        for _ in range(5):  # several renew periods: b stays a follower
            await b.try_acquire_or_renew()
        assert a.is_leader() and not b.is_leader()
        lease = k8s.get("leases", "ops", "shadowscale")
        assert lease["spec"]["holderIdentity"] == "agent-a" and lease["spec"]["leaseDurationSeconds"] == 1

        t0 = time.monotonic()
        stop_a.set()
        await task_a  # releases the lease
        assert not a.is_leader()
        await until(b.changed)
        assert b.is_leader() and time.monotonic() - t0 < 0.9  # took over before the lease could expire
        assert k8s.get("leases", "ops", "shadowscale")["spec"]["holderIdentity"] == "agent-b"
        assert k8s.get("leases", "ops", "shadowscale")["spec"]["leaseTransitions"] == 1
        stop_b.set()
        await task_b


async def test_a_dead_holder_is_replaced_after_the_lease_duration(k8s: K8s) -> None:
    await k8s.create(
        "leases",
        "ops",
        {
            "metadata": {"name": "shadowscale"},
            "spec": {
                "holderIdentity": "crashed",
                "leaseDurationSeconds": 1,
                "renewTime": "2020-01-01T00:00:00.000000Z",
            },
        },
    )
    async with client.ApiClient(client.Configuration(host=k8s.url)) as api:
        b = LeaderElector(CFG, "agent-b", api)
        stop = asyncio.Event()
        t0 = time.monotonic()
        task = asyncio.create_task(b.run(stop), name="elector-b")
        await until(b.changed)
        # the holder's old renewTime is not trusted: b waits a full lease duration from its own first look
        assert b.is_leader() and time.monotonic() - t0 >= 1.0
        stop.set()
        await task
        assert k8s.get("leases", "ops", "shadowscale")["spec"]["holderIdentity"] == ""
