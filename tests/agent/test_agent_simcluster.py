"""The simulated cluster behind the actuator port, and the replayer's per-pod windows."""

from __future__ import annotations

import asyncio

import msgspec
import numpy as np
import pytest
from agent_fakes import VirtualClock

from shadowscale.agent.events import TrafficEvent
from shadowscale.policies.types import ServiceConfig
from shadowscale.replay import Replayer
from shadowscale.simulators.actuator import SimulatedCluster
from shadowscale.simulators.catalog import load_catalog
from shadowscale.simulators.traces import load_trace
from shadowscale.simulators.workload import make_workload


def services() -> list[ServiceConfig]:
    prof = load_catalog().cnn("resnet50")
    return [ServiceConfig("a", prof, 0, 4, cold_start_s=10.0), ServiceConfig("b", prof, 1, 8, cold_start_s=0.0)]


def test_scale_is_absolute_clamped_and_honours_cold_start() -> None:
    clock = VirtualClock(100.0)
    c = SimulatedCluster(services(), clock)
    assert c.state("a").replicas == 1 and c.state("a").ready == 1
    res = asyncio.run(c.scale({"a": 9, "b": 0, "zz": 1}))
    assert res.applied == {"a": 4, "b": 1} and res.missing == ("zz",)
    assert (c.state("a").replicas, c.state("a").ready) == (4, 1)  # three still starting
    clock.t = 110.0
    assert c.state("a").ready == 4
    asyncio.run(c.scale({"a": 4}))  # idempotent
    assert c.state("a").replicas == 4 and len(c.calls) == 2
    clock.t = 111.0
    asyncio.run(c.scale({"a": 5}))
    asyncio.run(c.scale({"a": 4}))  # the not-ready newcomer goes first
    assert c.state("a").ready == 4


def test_serve_conserves_requests_and_respects_capacity() -> None:
    clock = VirtualClock(0.0)
    c = SimulatedCluster(services(), clock, initial={"a": 2, "b": 1})
    cap = services()[0].profile.capacity_rps
    pods = c.serve("a", 30, 30.0, 1.0, 1.0)
    assert len(pods) == 2 and sum(p.arrivals for p in pods) == 30
    assert all(0 <= p.busy_s <= p.ready_s <= 1.0 for p in pods)
    # far over capacity: busy saturates, a backlog builds, latency grows
    heavy = c.serve("a", int(cap * 10), cap * 10, 2.0, 1.0)
    assert all(p.busy_s == pytest.approx(1.0) for p in heavy)
    assert sum(p.queue_depth for p in heavy) > cap * 5 and heavy[0].latency_p99_ms > pods[0].latency_p99_ms
    # scaled to zero: the activator reports the arrivals and what waits
    asyncio.run(c.scale({"a": 0}))
    (act,) = c.serve("a", 5, 5.0, 3.0, 1.0)
    assert act.pod == "a-activator" and act.ready_s == 0.0 and act.arrivals == 5 and act.queue_depth >= 5


def test_replayer_windows_add_up_to_the_trace() -> None:
    w = load_trace("azure-llm-2023-conv", hours=0.05)
    clock = VirtualClock(1000.0)
    cluster = SimulatedCluster(w.services, clock, initial={w.services[0].model: 3})
    r = Replayer(w, cluster, clock, window_s=2.0, speed=4.0, start=1000.0)
    events = [msgspec.json.decode(v, type=TrafficEvent) for k in range(r.n_windows) for _, v in r.window(k)]
    assert sum(e.arrivals for e in events) == w.n_requests
    assert len(events) == 3 * r.n_windows and {e.window_s for e in events} == {0.5}
    assert events[-1].event_time == pytest.approx(1000.0 + r.n_windows * 2.0 / 4.0)


def test_replayer_paces_by_the_clock_and_stops() -> None:
    prof = services()[0].profile
    w = make_workload(
        name="t",
        duration_s=10.0,
        services=(ServiceConfig("m", prof),),
        arrival_s=np.array([0.5, 1.5, 9.5]),
        model=np.zeros(3, np.int64),
        size=np.ones(3),
    )
    clock = VirtualClock(0.0)
    cluster = SimulatedCluster(w.services, clock)
    sent: list[int] = []

    async def send(batch: object) -> None:
        sent.append(len(batch))  # type: ignore[arg-type]

    stats = asyncio.run(Replayer(w, cluster, clock).run(send, asyncio.Event()))
    assert stats.windows == 10 and stats.requests == 3 and sent == [1] * 10
