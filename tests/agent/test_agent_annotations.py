"""Per-workload target and SLO (annotations ``shadowscale.io/target-rps`` and ``shadowscale.io/slo-ms``, read by
the actuator from the workload): the decision core plans with them from the next observation on, without a
restart, and falls back to the configured (or profiled) values once they are removed."""

from __future__ import annotations

import msgspec
import numpy as np
from agent_fakes import config, traffic

from shadowscale.agent.core import DecisionCore
from shadowscale.agent.events import TrafficEvent
from shadowscale.policies.ports import WorkloadState


def state(replicas: int = 1, **kw: float | None) -> dict[str, WorkloadState]:
    return {"m1": WorkloadState("m1", replicas, replicas, **kw)}  # type: ignore[arg-type]


def test_target_rps_replaces_the_capacity_while_set_and_a_profile_applies_after() -> None:
    """Catches: ignoring target-rps (capacity stays the configured 10 req/s), keeping it after the annotation is
    removed, and a profile's capacity (set at every reconcile tick) overwriting the workload's own target."""
    core = DecisionCore(config(["m1"], policy="shadowscale"))
    assert core.capacity_rps[0] == 10.0
    core.observe(state(target_rps=40.0))
    assert core.capacity_rps[0] == 40.0 and core.signals(1.0).capacity_rps[0] == 40.0  # type: ignore[index]
    core.set_capacity(0, 25.0, "profile")
    assert core.capacity_rps[0] == 40.0 and "target-rps" in str(core.capacity_notes[0])
    core.observe(state())
    assert core.capacity_rps[0] == 25.0 and core.capacity_notes[0] == "profile"


def test_target_rps_changes_what_the_policy_asks_for() -> None:
    """Catches: a target read but not given to the policy (the decision would not move with it)."""
    want = {}
    for target in (None, 100.0):
        core = DecisionCore(config(["m1"], policy="shadowscale"))
        core.observe(state(target_rps=target))
        for k in range(60):  # 60 s of 200 req/s on one replica
            ev = msgspec.json.decode(traffic("m1", float(k), arrivals=200, busy_s=1.0), type=TrafficEvent)
            core.ingest([ev])
            core.decide(float(k), "tick", [0], {"m1"})
        want[target] = core.decide(60.0, "tick", [0], {"m1"})[0].recommended
    assert want[None] > want[100.0] >= 1, want


def test_slo_ms_reaches_the_policy_that_plans_against_an_slo_and_is_restored() -> None:
    """Catches: ignoring slo-ms (the shadowscale policy keeps the configured SLO) and keeping it once removed."""
    core = DecisionCore(config(["m1"], policy="shadowscale"))
    configured = float(core.state.slo[0])
    core.observe(state(slo_ms=250.0))
    assert np.isclose(core.state.slo[0], 0.25)
    core.observe(state())
    assert np.isclose(core.state.slo[0], configured)


def test_slo_ms_on_a_policy_without_an_slo_is_harmless() -> None:
    """A baseline (KPA) keeps no SLO: the annotation changes nothing there and raises nothing."""
    core = DecisionCore(config(["m1"], policy="kpa"))
    before = core.state
    core.observe(state(slo_ms=250.0))
    assert core.state is before
