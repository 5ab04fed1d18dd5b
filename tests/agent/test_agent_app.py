"""The whole agent as ``shadowscale agent`` runs it (``agent.app.serve``): Kafka in from the bundled broker,
Kubernetes out through kubernetes-asyncio to kmock's emulator, leader election on a Lease, clean stop."""

from __future__ import annotations

import asyncio
import time

import pytest
from agent_fakes import traffic
from agent_k8s import K8s

from shadowscale.agent.app import Running, serve
from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.config import parse_config
from shadowscale.agent.kafka import KafkaSink
from shadowscale.agent.kube import KubeActuator

pytestmark = pytest.mark.asyncio


async def test_events_to_scale_subresource_with_leader_election(k8s: K8s, broker: LocalBroker) -> None:
    await k8s.create(
        "deployments",
        "serving",
        {
            "metadata": {"name": "m1-server", "labels": {"shadowscale.io/model": "m1"}},
            "spec": {"replicas": 1},
            "status": {"readyReplicas": 1},
        },
    )
    n = time.monotonic_ns()
    cfg = parse_config(
        {
            "policy": "kpa",
            "agent_id": "app-test",
            "models": [{"name": "m1", "namespace": "serving", "capacity_rps": 10, "max_replicas": 6}],
            "kafka": {
                "bootstrap": broker.bootstrap,
                "group_id": f"app-{n}",
                "create_topics": True,
                "session_timeout_ms": 2000,
                "heartbeat_interval_ms": 500,
                "topics": {"traffic": f"t-{n}", "gpu": f"g-{n}", "decisions": f"d-{n}", "dead_letter": f"x-{n}"},
            },
            "actuator": {"kind": "kubernetes", "kubernetes": {"host": k8s.url, "retry_delays_s": [0.01, 0.05]}},
            "leader_election": {"enabled": True, "namespace": "ops", "lease_duration_s": 2, "renew_period_s": 0.2},
            "http": {"port": 0},
        }
    )
    stop = asyncio.Event()
    up = asyncio.Event()
    running: list[Running] = []

    def started(r: Running) -> None:
        running.append(r)
        up.set()

    task = asyncio.create_task(serve(cfg, stop, started=started), name="agent-app")
    try:
        await asyncio.wait_for(up.wait(), 30)
        r = running[0]
        await asyncio.wait_for(r.leader.changed.wait(), 10)
        assert (
            r.leader.is_leader()
            and k8s.get("leases", "ops", "shadowscale-agent")["spec"]["holderIdentity"] == "app-test"
        )

        sink = KafkaSink(cfg.kafka)
        await sink.start()
        await sink.write(
            cfg.kafka.topics.traffic,
            [(b"m1", traffic("m1", time.time(), arrivals=900, concurrency_s=900.0, namespace="serving"))],
        )
        await sink.stop()
        act = r.agent.actuator
        assert isinstance(act, KubeActuator)
        v = act.version
        while (await act.observe())["m1"].replicas == 1:
            v = await act.wait_changed(v, timeout_s=20)
        assert k8s.get("deployments", "serving", "m1-server")["spec"]["replicas"] == 6  # clamped to max_replicas
        assert any(req.url.path.endswith("/deployments/m1-server/scale") for req in k8s.requests("PATCH"))
        assert "shadowscale_leader 1.0" in r.agent.metrics.render().decode()
    finally:
        stop.set()
        status = await asyncio.wait_for(task, 20)
    assert status == 0
    assert k8s.get("leases", "ops", "shadowscale-agent")["spec"]["holderIdentity"] == ""  # released on stop
