"""Parity: one trace slice through the agent's decision loop (fake ports, virtual clock) and through the policy
directly in the simulator gives the same decisions, tick by tick, with the same reasons.

The simulator (:class:`simulators.engine.Engine`) runs the policy on its own signals; a recording wrapper keeps what
the policy saw and said. The same counters, turned into per-pod traffic events (split over several pods, shuffled
within each poll and with redelivered duplicates), go through the agent's decoder, windows, policy, guard rails
(neutral here) and actuator port; the fake actuator reports the simulator's ready replicas.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from agent_fakes import MemorySink, Msg, RecordingActuator, ScriptedSource, Step, VirtualClock, record

from shadowscale.agent.config import parse_config
from shadowscale.agent.core import services_of
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode
from shadowscale.agent.loop import Agent
from shadowscale.policies.scaling import Decisions, Signals, make_policy
from shadowscale.policies.types import ServiceConfig
from shadowscale.simulators.engine import Engine, SimConfig
from shadowscale.simulators.traces import load_trace


class Recording:
    """A policy wrapper that keeps every (signals, decisions) pair."""

    def __init__(self, inner: Any, services: Sequence[ServiceConfig] | None = None) -> None:
        self.inner = inner
        self.services = services
        """What the policy is initialised with: the agent's view of the models (its configuration), not the
        simulator's measured profiles."""
        self.seen: list[tuple[Signals, Decisions]] = []

    @property
    def name(self) -> str:
        return str(self.inner.name)

    @property
    def tick_s(self) -> float:
        return float(self.inner.tick_s)

    @property
    def hindsight(self) -> bool:
        return False

    def init(self, services: Sequence[ServiceConfig]) -> Any:
        return self.inner.init(self.services if self.services is not None else services)

    def decide(self, signals: Signals, state: Any) -> Any:
        d, s = self.inner.decide(signals, state)
        self.seen.append((signals, d))
        return d, s


class Pods:
    """Turns counter samples into per-pod windows whose sums the agent accumulates back into the same counters.

    Increments are taken against what was already sent (never negative: the simulator's counters can step back by
    float noise, a pod cannot), so the agent's running sums track the simulator's counters.
    """

    def __init__(self, models: list[str], tick: float) -> None:
        self.models = models
        self.tick = tick
        self.sent = np.zeros((4, len(models)))

    def events(self, cur: Signals) -> list[bytes]:
        counters = np.stack([cur.arrivals, cur.busy_s, cur.ready_s, cur.inflight_s])
        delta = np.maximum(counters - self.sent, 0.0)
        delta[0] = np.round(delta[0])
        self.sent += delta
        out = []
        tick = self.tick
        for i, m in enumerate(self.models):
            d_arr, d_busy, d_ready, d_conc = (float(x) for x in delta[:, i])
            pods = max(1, math.ceil(max(d_busy, d_ready) / tick - 1e-9))
            for k in range(pods):
                last = k == pods - 1
                out.append(
                    encode(
                        TrafficEvent(
                            schema=TRAFFIC_V1,
                            model=m,
                            pod=f"{m}-pod-{k}",
                            event_time=float(cur.now),
                            window_s=tick,
                            arrivals=int(d_arr) if k == 0 else 0,
                            completions=int(d_arr) if k == 0 else 0,
                            queue_depth=int(cur.outstanding[i]) if k == 0 else 0,
                            busy_s=d_busy - (pods - 1) * (d_busy / pods) if last else d_busy / pods,
                            ready_s=d_ready - (pods - 1) * (d_ready / pods) if last else d_ready / pods,
                            concurrency_s=d_conc if k == 0 else 0.0,
                        )
                    )
                )
        return out


@pytest.mark.parametrize(
    ("trace", "policy", "hours"),
    [
        ("azure-functions-2019", "kpa", 0.5),
        ("azure-llm-2023-conv", "hpa", 1.0),
        ("azure-llm-2023-conv", "keda", 1.0),
        ("azure-functions-2019", "shadowscale", 0.5),
    ],
)
def test_agent_loop_matches_the_simulator(trace: str, policy: str, hours: float) -> None:
    workload = load_trace(trace, hours=hours, models=6, cold_start_s=30.0)
    models = [s.model for s in workload.services]
    cfg = parse_config(
        {
            "policy": policy,
            "agent_id": "parity",
            "models": [
                {
                    "name": s.model,
                    "capacity_rps": s.profile.capacity_rps,
                    "slo_ms": s.profile.slo_s * 1000.0,
                    "cold_start_s": s.cold_start_s,
                    "min_replicas": s.min_replicas,
                    "max_replicas": s.max_replicas,
                }
                for s in workload.services
            ],
            "guards": {"scale_down_cooldown_s": 0.0},
            "trigger": {"enabled": False},
            "ingest": {"pod_stale_s": 1e9, "dedupe_s": 1e9, "max_age_s": 1e9},
            "kafka": {"commit_interval_s": 0.0},
            "http": {"enabled": False},
        }
    )
    rec = Recording(make_policy(policy), services_of(cfg))
    Engine(
        workload.services,
        workload.arrival_s,
        workload.model,
        workload.size,
        workload.duration_s,
        SimConfig(),
        workload.prompt_tokens,
        workload.output_tokens,
    ).run(rec)
    tick = rec.tick_s

    # The same counters as traffic events, one poll per tick, shuffled, with duplicates redelivered.
    rng = random.Random(7)
    steps: list[Step] = []
    offset = 0
    previous: list[Msg] = []
    pods = Pods(models, tick)
    for sig, _ in rec.seen:
        values = pods.events(sig)
        recs = [record(v, offset + j) for j, v in enumerate(values)]
        offset += len(recs)
        batch = recs + rng.sample(previous, min(3, len(previous)))  # redelivered duplicates
        rng.shuffle(batch)
        steps.append(Step(sig.now, batch))
        previous = recs
    ready_at = {s.now: s.ready for s, _ in rec.seen}

    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    source = ScriptedSource(clock, steps, stop)
    initial, _ = make_policy(policy).init(services_of(cfg))
    index = {m: i for i, m in enumerate(models)}
    act = RecordingActuator(
        {m: int(initial[i]) for i, m in enumerate(models)}, ready_fn=lambda m, r: int(ready_at[clock.t][index[m]])
    )
    sink = MemorySink()
    agent = Agent(cfg, source, act, sink, clock)
    asyncio.run(agent.run(stop))

    audits = [json.loads(v) for _, v in sink.records["shadowscale.decisions"]]
    assert len(audits) == len(rec.seen) * len(models)
    got = np.array([r["target"] for r in audits]).reshape(len(rec.seen), len(models))
    want = np.array([d.replicas for _, d in rec.seen])
    changes = int((np.diff(want, axis=0) != 0).sum())
    assert changes >= 3, f"the slice should exercise scaling ({changes} changes)"
    np.testing.assert_array_equal(got, want)
    reasons = [r["reason"] for r in audits]
    assert reasons == [d.explain(i) for _, d in rec.seen for i in range(len(models))]
    assert agent.core.windows.stats.duplicates > 0
