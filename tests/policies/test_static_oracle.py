"""Hindsight baselines sized from the whole trace: a static deployment for the peak, and the oracle schedule.

Every service here has a capacity at the SLO of 20 requests/s per replica (see ``policy_harness.profile``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from policy_harness import Load, demand, drive, service, uniform

from shadowscale.policies.scaling import ORACLE_BIN_S, Oracle, Reason, Static, make_policy, oracle_schedule
from shadowscale.policies.scaling.static import peak_replicas

SVC = [service()]


def test_profile_capacity_is_what_the_tests_assume() -> None:
    assert SVC[0].profile.capacity_rps == pytest.approx(20.0)


# (requests, services, expected replicas per model)
STATIC = [
    pytest.param(uniform(0, 600, 6000), SVC, [1], id="10rps->ceil(0.5)=1"),
    pytest.param(uniform(0, 600, 6000) + uniform(60, 120, 3000), SVC, [3], id="peak-minute-(600+3000)/60=60rps->3"),
    pytest.param(uniform(120, 180, 1200, size=2.0), SVC, [2], id="size-2-requests-count-double->40rps->2"),
    pytest.param([], SVC, [1], id="no-requests->at-least-1"),
    pytest.param(uniform(0, 60, 60), [service(min_replicas=4)], [4], id="min-replicas-4"),
    pytest.param(uniform(0, 60, 6000), [service(max_replicas=2)], [2], id="max-replicas-2"),
    pytest.param(
        uniform(0, 60, 2400) + uniform(0, 60, 60, model=1),
        [service("a"), service("b")],
        [2, 1],
        id="two-models-independent",
    ),
]


@pytest.mark.parametrize(("requests", "services", "expected"), STATIC)
def test_static_is_sized_for_the_peak_minute(requests, services, expected: list[int]) -> None:
    """replicas = ceil(peak work in a 60 s window / 60 s / capacity), at least 1, within min/max."""
    dem = demand(requests, services, duration_s=600)
    assert list(peak_replicas(dem)) == expected
    policy = make_policy("static", dem)
    run = drive(policy, services, lambda t: Load(util=0.5, concurrency=3.0, outstanding=3), until=600)
    assert list(run.initial) == expected
    assert all(list(d.replicas) == expected for d in run.decisions), "static replicas must never change"
    assert all(int(r) == int(Reason.HOLD) for d in run.decisions for r in d.reason)


def test_static_ignores_the_signals() -> None:
    """A static deployment gives the same answer whatever the load: idle or saturated."""
    policy = Static(np.array([3], np.int64))
    idle = drive(policy, SVC, lambda t: Load(), until=300)
    busy = drive(policy, SVC, lambda t: Load(util=1.0, concurrency=1e4, outstanding=10**4), until=300)
    assert idle.series() == busy.series() == [3] * 6


def test_static_peak_uses_60s_bins_aligned_to_zero() -> None:
    """2400 requests over [30, 90) fall in two bins of 1200 (20 rps each) -> 1 replica at 20 rps capacity; the same
    burst over [60, 120) fills one bin (40 rps) -> 2 replicas."""
    assert list(peak_replicas(demand(uniform(30, 90, 2400), SVC, duration_s=600))) == [1]
    assert list(peak_replicas(demand(uniform(60, 120, 2400), SVC, duration_s=600))) == [2]


def bins(*counts: int, model: int = 0) -> list[tuple[float, int, float]]:
    """``counts[k]`` unit requests spread over the k-th 10 s bin."""
    out: list[tuple[float, int, float]] = []
    for k, c in enumerate(counts):
        if c:
            out += uniform(10 * k, 10 * (k + 1), c, model=model)
    return out


# (requests per 10 s bin, service, expected schedule)
ORACLE = [
    pytest.param((200, 201, 0, 250, 400, 401), SVC, [1, 2, 0, 2, 2, 3], id="ceil(work/(20rps*10s))-zero-when-empty"),
    pytest.param((0, 0, 10), SVC, [0, 0, 1], id="idle-start-is-zero"),
    pytest.param((0, 50, 0), [service(min_replicas=1)], [1, 1, 1], id="min-replicas-1-floor"),
    pytest.param((1000, 0), [service(max_replicas=3)], [3, 0], id="max-replicas-3-cap"),
]


@pytest.mark.parametrize(("counts", "services", "expected"), ORACLE)
def test_oracle_schedule_is_work_per_bin_over_capacity(counts, services, expected: list[int]) -> None:
    """schedule[k] = ceil(work arriving in bin k / (capacity × 10 s)), zero in empty bins, within min/max."""
    dem = demand(bins(*counts), services, duration_s=10.0 * len(counts))
    schedule = oracle_schedule(dem, ORACLE_BIN_S)
    assert schedule.shape == (len(counts), 1)
    assert list(schedule[:, 0]) == expected


def test_oracle_follows_its_schedule_bin_by_bin() -> None:
    """The oracle decides each bin's replicas at the bin start (tick 10 s): the need of bins k - 1 .. k + 2 with a
    20 s cold start (one cold start ahead, one bin of drain after); past the end it keeps the last bin. It pays
    cold starts (not hindsight)."""
    svc = [service(cold_start_s=20.0)]
    dem = demand(bins(200, 0, 0, 0, 0, 250, 0, 0, 0, 0), svc, duration_s=100)
    assert list(oracle_schedule(dem, 10.0)[:, 0]) == [1, 0, 0, 0, 0, 2, 0, 0, 0, 0]
    policy = make_policy("oracle", dem)
    assert policy.hindsight is False
    assert policy.tick_s == ORACLE_BIN_S == 10.0
    run = drive(policy, svc, lambda t: Load(util=1.0, outstanding=50), until=120)
    assert list(run.initial) == [1]
    assert run.series() == [1, 1, 0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0]
    assert all(int(d.reason[0]) == int(Reason.SCHEDULE) for d in run.decisions)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        pytest.param(0.0, 1, id="t0"),
        pytest.param(9.99, 1, id="t9.99"),
        pytest.param(10.0, 2, id="t10"),
        pytest.param(25.0, 0, id="t25"),
        pytest.param(1e6, 2, id="after-end"),
    ],
)
def test_oracle_decides_the_bin_containing_now(now: float, expected: int) -> None:
    """At any ``now`` (not only bin starts) the oracle answers the schedule of the bin containing ``now``."""
    dem = demand(bins(200, 201, 0, 250), SVC, duration_s=40)
    policy = Oracle(oracle_schedule(dem, 10.0), 10.0)
    _, state = policy.init(SVC)
    signals = drive(policy, SVC, lambda t: Load(), until=0).signals[0]
    decisions, _ = policy.decide(replace(signals, now=now), state)
    assert int(decisions.replicas[0]) == expected


def test_oracle_vectorises_over_models() -> None:
    """Two models get independent schedules."""
    svcs = [service("a"), service("b")]
    dem = demand(bins(400, 0) + bins(0, 30, model=1), svcs, duration_s=20)
    schedule = oracle_schedule(dem, 10.0)
    assert schedule.tolist() == [[2, 0], [0, 1]]
