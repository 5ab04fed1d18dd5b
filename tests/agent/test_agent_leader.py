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


async def test_the_emulator_enforces_resource_version(k8s: K8s) -> None:
    """The test-side fix itself: a PUT carrying a stale resourceVersion is refused with 409, as by an API server."""
    await k8s.create("leases", "ops", {"metadata": {"name": "x"}, "spec": {"holderIdentity": ""}})
    url = f"{k8s.url}/apis/coordination.k8s.io/v1/namespaces/ops/leases/x"
    lease = await (await k8s.http.get(url)).json()
    fresh = await k8s.http.put(url, json=lease)
    assert fresh.status == 200
    stale = await k8s.http.put(url, json=lease)  # the same resourceVersion again: someone wrote in between
    assert stale.status == 409


async def test_of_two_candidates_racing_exactly_one_wins(k8s: K8s) -> None:
    """Catches: a replace without the read resourceVersion, or a 409 treated as a win — both candidates would
    believe they lead (the old emulator ignored resourceVersion, so this passed either way)."""
    await k8s.create("leases", "ops", {"metadata": {"name": "shadowscale"}, "spec": {"holderIdentity": ""}})
    async with client.ApiClient(client.Configuration(host=k8s.url)) as api:
        a = LeaderElector(CFG, "agent-a", api)
        b = LeaderElector(CFG, "agent-b", api)
        for _ in range(5):
            won = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
            assert sorted(won) == [False, True]
            assert [a.is_leader(), b.is_leader()].count(True) <= 1
        holder = k8s.get("leases", "ops", "shadowscale")["spec"]["holderIdentity"]
        assert (holder == "agent-a") == a.is_leader() and (holder == "agent-b") == b.is_leader() and holder


async def test_leadership_ends_at_the_renew_deadline_counted_from_the_request(k8s: K8s) -> None:
    """Catches: is_leader() using the whole lease duration (a leader that cannot renew would still act when a
    follower may already take over) and the renewal time taken after a slow answer instead of before the request."""
    async with client.ApiClient(client.Configuration(host=k8s.url)) as api:
        a = LeaderElector(CFG, "agent-a", api)  # lease 1.0 s: renew deadline 2/3 s
        read = a._coord.read_namespaced_lease

        async def slow_read(*args: object, **kw: object) -> object:
            await asyncio.sleep(0.3)
            return await read(*args, **kw)

        a._coord.read_namespaced_lease = slow_read
        await a.try_acquire_or_renew()  # creates the Lease (the read answers 404 after 0.3 s)
        assert await a.try_acquire_or_renew() and a.is_leader()  # renews: sent 0.3 s before the answer
        await asyncio.sleep(CFG.deadline_s - 0.3 + 0.08)
        assert not a.is_leader()


async def test_a_hung_api_server_does_not_hold_a_lease_call(k8s: K8s) -> None:
    """Catches: Lease calls without a time limit — a hung API server would hold the elector (and a leader's
    step-down) for as long as it hangs."""
    cfg = LeaderConfig(enabled=True, namespace="ops", name="shadowscale", lease_duration_s=1.0, request_timeout_s=0.2)
    async with client.ApiClient(client.Configuration(host=k8s.url)) as api:
        a = LeaderElector(cfg, "agent-a", api)

        async def hung(*args: object, **kw: object) -> object:
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

        a._coord.read_namespaced_lease = hung
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(a.try_acquire_or_renew(), 3.0)
        assert time.monotonic() - t0 < 1.0
