"""Spec moves in the simulator (``Decisions.spec``): a model at one replica is rolled to another spec by a surge
that is charged, serves on its old spec until the new replica is ready, is cancelled by a scale; a model at zero
moves at once. The fast engine and the event-loop reference agree on all of it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pytest

from shadowscale.policies.scaling import Demand, make_policy
from shadowscale.policies.scaling.base import Decisions, Signals
from shadowscale.policies.types import IntArray, ModelProfile, ServiceConfig
from shadowscale.simulators.engine import Engine, SimConfig, SimResult
from shadowscale.simulators.reference import simulate_reference

BIG = ModelProfile("m@0.5", "test", (1, 2), (0.1, 0.12), 2.0, 2, gpu_fraction=0.5)
SMALL = ModelProfile("m@0.2", "test", (1, 2), (0.3, 0.36), 2.0, 2, gpu_fraction=0.2)
COLD = 60.0
DURATION = 1800.0


@dataclass(frozen=True)
class Scripted:
    """Replicas and spec as functions of time; records the capacity each tick reports."""

    script: Callable[[float], tuple[int, int]]

    @property
    def name(self) -> str:
        return "scripted"

    @property
    def tick_s(self) -> float:
        return 2.0

    @property
    def hindsight(self) -> bool:
        return False

    def init(self, services: Sequence[ServiceConfig]) -> tuple[IntArray, list[tuple[float, float]]]:
        return np.ones(len(services), np.int64), []

    def decide(self, signals: Signals, state: list[tuple[float, float]]) -> tuple[Decisions, list[tuple[float, float]]]:
        replicas, spec = self.script(signals.now)
        assert signals.capacity_rps is not None, "a service with alternative specs reports the running capacity"
        state.append((signals.now, float(signals.capacity_rps[0])))
        n = signals.n_models
        z = np.zeros(n)
        return (
            Decisions(
                self.name,
                signals.now,
                np.full(n, replicas, np.int64),
                np.zeros(n, np.int64),
                z,
                z,
                z,
                np.full(n, spec, np.int64),
            ),
            state,
        )


def _arrivals() -> np.ndarray:
    """A request every 10 s."""
    return np.arange(5.0, DURATION, 10.0)


def _run(script: Callable[[float], tuple[int, int]]) -> tuple[SimResult, SimResult]:
    """One model at 0.5 GPU (specs 0.5 and 0.2), a request every 10 s; the engine's and the reference's results."""
    services = (ServiceConfig("m", BIG, cold_start_s=COLD, specs=(BIG, SMALL)),)
    a = _arrivals()
    m = np.zeros(a.size, np.int64)
    s = np.ones(a.size)
    config = SimConfig(record_decisions=True, vector_min_requests=0)
    fast = Engine(services, a, m, s, DURATION, config).run(Scripted(script))
    ref = simulate_reference(services, a, m, s, DURATION, Scripted(script), config)
    np.testing.assert_allclose(fast.latency_s, ref.latency_s, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fast.gpu_s, ref.gpu_s, rtol=1e-9, atol=1e-6)
    assert fast.cold_starts == ref.cold_starts
    assert fast.decisions == ref.decisions
    return fast, ref


def test_a_surge_rollout_serves_on_the_old_spec_until_the_new_replica_is_ready_and_charges_both() -> None:
    """Asked at t = 600 to move to the 0.2 share: the old replica serves (0.1 s) until the surge replica is ready at
    660, the new one (0.3 s) from then on; the surge's share is charged from 600, and one cold start is counted.

    Mutations caught: swapping at once instead of after the cold start (requests in 600–660 take 0.3 s); not
    charging the surge replica during its cold start (GPU time short by 0.2 × 60 s); the engine reporting the
    initial capacity after the move (``capacity_rps`` stays at the 0.5 share's)."""
    fast, _ = _run(lambda t: (1, 1 if t >= 600.0 else -1))
    a = _arrivals()
    np.testing.assert_allclose(fast.latency_s[a < 660.0], 0.1)
    np.testing.assert_allclose(fast.latency_s[a > 662.0], 0.3)
    assert fast.gpu_s[0] == pytest.approx(0.5 * 660.0 + 0.2 * (DURATION - 600.0))
    assert fast.cold_starts == 1


def test_the_running_spec_s_capacity_is_reported_after_the_move() -> None:
    """Mutation caught: ``Signals.capacity_rps`` left at the spec the run started with."""
    services = (ServiceConfig("m", BIG, cold_start_s=COLD, specs=(BIG, SMALL)),)
    a = _arrivals()
    policy = Scripted(lambda t: (1, 1 if t >= 600.0 else -1))
    run = Engine(services, a, np.zeros(a.size, np.int64), np.ones(a.size), DURATION, SimConfig()).run(policy)
    cap = dict(run.final_state)
    assert cap[598.0] == pytest.approx(BIG.capacity_rps)
    assert cap[700.0] == pytest.approx(SMALL.capacity_rps)


def test_a_scale_during_the_rollout_cancels_it_and_its_surge_time_is_still_charged() -> None:
    """Asked at 600, scaled to 2 replicas at 620: the rollout is cancelled (the old spec serves on, 0.1 s), the
    surge replica's 20 s are charged. Mutation caught: not cancelling on a scale (the move completes)."""
    fast, _ = _run(lambda t: (2 if 620.0 <= t < 640.0 else 1, 1 if 600.0 <= t < 640.0 else -1))
    a = _arrivals()
    np.testing.assert_allclose(fast.latency_s[a > 700.0], 0.1)
    # one replica all along, a second from 620 to 640 (draining nothing), the surge from 600 to 620
    assert fast.gpu_s[0] == pytest.approx(0.5 * DURATION + 0.5 * 20.0 + 0.2 * 20.0)


def test_a_model_at_zero_takes_the_new_spec_at_once_without_a_surge() -> None:
    """At zero from 300 to 900 and asked for the 0.2 share at 600: it comes back at 900 on the 0.2 share, with one
    cold start (the scale from zero) and no surge charged. Mutation caught: moving a model at zero by a surge."""
    fast, _ = _run(lambda t: (0 if 300.0 <= t < 900.0 else 1, 1 if t >= 600.0 else -1))
    a = _arrivals()
    np.testing.assert_allclose(fast.latency_s[a > 962.0], 0.3)
    assert fast.cold_starts == 1
    assert fast.gpu_s[0] == pytest.approx(0.5 * 300.0 + 0.2 * (DURATION - 900.0))


def test_shadowscale_moves_specs_and_both_engines_agree() -> None:
    """shadowscale with ``spec_learn_s`` 300 on four on/off models whose specs run from 1.0 down to 0.2 of a GPU: it
    moves some and the fast engine and the reference agree request by request (decisions, latencies, GPU time)."""
    rng = np.random.default_rng(5)
    whole = ModelProfile("w", "test", (1, 2, 4), (0.05, 0.06, 0.08), 1.0, 4, gpu_fraction=1.0)
    specs = tuple(
        replace(
            whole, name=f"w@{f}", gpu_fraction=f, batch_latency_s=tuple(x * (0.6 + 0.4 / f) for x in (0.05, 0.06, 0.08))
        )
        for f in (1.0, 0.5, 0.2)
    )
    services = tuple(ServiceConfig(f"m{i}", specs[0], cold_start_s=20.0, specs=specs) for i in range(4))
    duration = 1500.0
    arr, mdl = [], []
    for i in range(4):
        start = 100.0 * i
        rate = np.where(
            (np.arange(int(duration)) >= start) & ((np.arange(int(duration)) // 200) % 2 == 0), 0.5 + i, 0.0
        )
        cnt = rng.poisson(rate)
        arr.append(np.repeat(np.arange(int(duration)), cnt) + rng.random(cnt.sum()))
        mdl.append(np.full(cnt.sum(), i))
    a = np.concatenate(arr)
    o = np.argsort(a, kind="stable")
    a, m = a[o], np.concatenate(mdl).astype(np.int64)[o]
    s = np.ones(a.size)
    policy = replace(make_policy("shadowscale", Demand(a, m, s, services, duration)), spec_learn_s=300.0)
    config = SimConfig(record_decisions=True, vector_min_requests=0)
    fast = Engine(services, a, m, s, duration, config).run(policy)
    ref = simulate_reference(services, a, m, s, duration, policy, config)
    assert fast.decisions == ref.decisions
    np.testing.assert_allclose(fast.latency_s, ref.latency_s, rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_array_equal(fast.met, ref.met)
    np.testing.assert_allclose(fast.gpu_s, ref.gpu_s, rtol=1e-9, atol=1e-6)
    assert fast.cold_starts == ref.cold_starts
    still = Engine(services, a, m, s, duration, config).run(replace(policy, move_specs=False))
    assert fast.gpu_s.sum() < 0.8 * still.gpu_s.sum(), "the scenario must make shadowscale move specs down"
