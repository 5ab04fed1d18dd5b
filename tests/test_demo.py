"""The live demo's warm start: the agent resumes from the state the simulator learnt over the trace's earlier hours
(``DecisionCore.resume``, ``Shadowscale.rebase``), and the table's choice of timer-like functions."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shadowscale.agent.core import DecisionCore
from shadowscale.demo import applied_kinds, demo_config, parse_args, pick_models
from shadowscale.policies.scaling import Reason, Signals, make_policy
from shadowscale.simulators.engine import SimConfig
from shadowscale.simulators.run import engine_for
from shadowscale.simulators.traces import load_trace
from shadowscale.simulators.workload import Workload, make_workload

HISTORY_S = 7 * 3600.0
TIMER = "fn-cc47c08e36ce"
"""A timer-triggered function of the Azure Functions sample: two requests every 9 minutes (one of the demo's)."""


@pytest.fixture(scope="module")
def day() -> Workload:
    return load_trace("azure-functions-2019", hours=8.0, cold_start_s=30.0)


def _with_bounds(w: Workload) -> Workload:
    return replace(w, services=tuple(replace(s, min_replicas=0, max_replicas=50) for s in w.services))


def _synthetic() -> Workload:
    """Model 0: a timer every 600 s (1 s of jitter); model 1: memoryless gaps of 400 s on average; model 2: busy."""
    rng = np.random.default_rng(3)
    timer = np.arange(1, 48) * 600.0 + rng.uniform(0, 1, 47)
    poisson = np.cumsum(rng.exponential(400.0, 70))
    busy = np.sort(rng.uniform(0, 29_000, 5_000))
    t = np.concatenate([timer, poisson, busy])
    m = np.concatenate([np.zeros(47), np.ones(70), np.full(5_000, 2)]).astype(np.int64)
    order = np.argsort(t, kind="stable")
    base = load_trace("azure-functions-2019", hours=0.1, models=3)
    return make_workload(
        name="synthetic",
        duration_s=60_000.0,
        services=base.services,
        arrival_s=t[order],
        model=m[order],
        size=np.ones(len(t)),
    )


def test_pick_models_takes_the_most_regular_gaps_first_then_the_busiest() -> None:
    """The timer (gaps of 600 ± 1 s) is picked over a memoryless model with as many long gaps, and the rest of the
    table is the busiest. Mutations caught: ranking by the largest spread (picks the memoryless model), no minimum
    gap count (the busy model's few long gaps could rank), the busiest list not skipping a timer already chosen."""
    w = _synthetic()
    assert pick_models(w, 2, 1, 29_000.0) == [0, 2]
    assert pick_models(w, 3, 1, 29_000.0) == [0, 2, 1]
    assert pick_models(w, 5, 1, 29_000.0) == [0, 2, 1]  # more asked than there are: each model once
    assert pick_models(w, 2, 0, 29_000.0) == [2, 1]  # no timers: the busiest
    # a history too short for TIMER_MIN_GAPS gaps has no timers: the busiest fill the table
    assert pick_models(w, 2, 1, 3_000.0) == [2, 1]


def test_workload_select_and_since_keep_the_requests_they_say() -> None:
    w = _synthetic()
    sel = w.select([1, 0])
    assert [s.model for s in sel.services] == [w.services[1].model, w.services[0].model]
    assert sel.n_requests == 117 and set(sel.model.tolist()) == {0, 1}
    assert np.array_equal(sel.arrival_s[sel.model == 1], w.arrival_s[w.model == 0])
    later = w.since(10_000.0)
    assert later.duration_s == 50_000.0
    assert np.array_equal(later.arrival_s, w.arrival_s[w.arrival_s >= 10_000.0] - 10_000.0)
    with pytest.raises(ValueError, match="distinct"):
        w.select([0, 0])
    with pytest.raises(ValueError, match="start"):
        w.since(60_000.0)


def _shift(s: Signals, base: Signals) -> Signals:
    """``s`` as a source of counters that started at zero when ``base`` was sampled would report it."""
    return replace(
        s,
        arrivals=s.arrivals - base.arrivals,
        busy_s=s.busy_s - base.busy_s,
        ready_s=s.ready_s - base.ready_s,
        inflight_s=s.inflight_s - base.inflight_s,
    )


def test_rebase_then_counters_from_zero_decides_as_if_nothing_changed(day: Workload) -> None:
    """Shadowscale over a timer and a busy function: record the simulator's signals; at a tick inside an open
    burst window (just after an idle gap ended), re-base the state and go on with counters that restart at zero. Every
    later decision (replicas, reason, forecast) is the one the uninterrupted run made. Mutations caught: not zeroing
    ``last_arrivals`` (a huge negative rate), not shifting an open ``burst_open`` (the wake burst is mis-counted).
    Not caught here: ``last_inflight`` (this trace never triggers the latency correction)."""
    w = _with_bounds(day.select(pick_models(day, 2, 1, HISTORY_S)))
    policy = make_policy("shadowscale")
    seen: list[Signals] = []

    class Recording:
        name, tick_s, hindsight = policy.name, policy.tick_s, False

        def init(self, services: Any) -> Any:
            return policy.init(services)

        def decide(self, signals: Signals, state: Any) -> Any:
            seen.append(signals)
            return policy.decide(signals, state)

    engine_for(w, SimConfig()).run(Recording())
    arr = np.array([s.arrivals[0] for s in seen])
    t = np.array([s.now for s in seen])
    changed = np.flatnonzero(np.diff(arr) > 0) + 1
    # a tick whose requests end a gap of at least two minutes, past the first hour (plans exist by then)
    pairs = zip(changed[1:], changed[:-1], strict=True)
    wake = next(int(k) for k, prev in pairs if t[k] - t[prev] >= 120 and t[k] > 3600)
    state = policy.init(w.services)[1]
    for s in seen[: wake + 1]:
        _, state = policy.decide(s, state)
    assert not math.isnan(float(state.burst_open[0])), "the cut must fall inside an open burst window"
    cont, reb = state, policy.rebase(state)
    base = seen[wake]
    for s in seen[wake + 1 :]:
        d1, cont = policy.decide(s, cont)
        d2, reb = policy.decide(_shift(s, base), reb)
        assert np.array_equal(d1.replicas, d2.replicas) and np.array_equal(d1.reason, d2.reason), s.now
        np.testing.assert_allclose(d2.metric, d1.metric, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(reb.burst, cont.burst, rtol=1e-12)


def _walk(core: DecisionCore, start: float, until: float, replicas: Any) -> list[tuple[float, int, int]]:
    """Tick ``core`` every 2 s with no traffic from ``start`` to ``until``, applying each decision at once (a cluster
    whose replicas start instantly); ``(time, replicas, reason)`` per tick."""
    core.replicas[:] = replicas
    core.ready[:] = replicas
    core.known[:] = True
    out = []
    now = start
    while now <= until:
        for p in core.decide(now, "tick", range(len(core.models)), set(core.models)):
            if p.target != p.current:
                core.applied(p.index, p.target, now)
                core.ready[p.index] = p.target
        assert core.last_decisions is not None
        out.append((now, int(core.replicas[0]), int(core.last_decisions.reason[0])))
        now += 2.0
    return out


def test_an_agent_resumed_from_the_simulated_history_prewarms_a_timer_a_blank_one_does_not(
    day: Workload, tmp_path: Path
) -> None:
    """The demo's warm start: the simulator replays 7 h of a real timer-triggered function through the agent core's
    own policy; the core resumes from that state and, with no traffic at all, puts the function to sleep and
    pre-warms it (reason PREWARM) so that a replica is up when the trace's next fire comes. A core that starts blank
    never pre-warms in the same 30 minutes. Mutations caught: ``resume`` ignoring the state (blank behaviour), the
    history run on a different policy object than the core's (a type mismatch is refused), the pre-warm point past
    the fire."""
    names = [s.model for s in day.services]
    w = _with_bounds(day.select([names.index(TIMER)]))
    fires = w.arrival_s[w.arrival_s >= HISTORY_S + 120.0]
    cfg = demo_config(w, "127.0.0.1:9", "shadowscale", tmp_path / "audit.jsonl")
    resumed = DecisionCore(cfg)
    past = engine_for(w.truncate(HISTORY_S), SimConfig()).run(resumed.policy)
    resumed.resume(past.final_state)
    assert past.final_replicas is not None
    fire = float(fires[0])
    walked = _walk(resumed, HISTORY_S + 2.0, fire, past.final_replicas)
    prewarms = [t for t, _, r in walked if r == int(Reason.PREWARM)]
    assert any(n == 0 for _, n, _ in walked), "the timer should sleep in its predicted gap"
    assert prewarms and prewarms[0] < fire - 30.0, "pre-warmed a cold start (30 s) ahead of the fire"
    assert walked[-1][1] >= 1, "a replica is up at the fire"
    blank = DecisionCore(cfg)
    assert all(r != int(Reason.PREWARM) for _, _, r in _walk(blank, HISTORY_S + 2.0, fire, past.final_replicas))


def test_resume_refuses_a_state_it_cannot_use(day: Workload, tmp_path: Path) -> None:
    w = _with_bounds(day.select(pick_models(day, 2, 1, HISTORY_S)))
    cfg = demo_config(w, "127.0.0.1:9", "shadowscale", tmp_path / "audit.jsonl")
    core = DecisionCore(cfg)
    other = _with_bounds(day.select(pick_models(day, 3, 1, HISTORY_S)))
    _, three = make_policy("shadowscale").init(other.services)
    with pytest.raises(ValueError, match="shape"):
        core.resume(three)
    _, hpa_state = make_policy("hpa").init(w.services)
    with pytest.raises(ValueError, match="not a state"):
        core.resume(hpa_state)
    hpa_core = DecisionCore(demo_config(w, "127.0.0.1:9", "hpa", tmp_path / "audit.jsonl"))
    with pytest.raises(ValueError, match="cannot resume"):
        hpa_core.resume(hpa_state)


def test_applied_kinds_counts_each_kind_of_change() -> None:
    rec = [
        {"current": 1, "target": 3, "applied": True, "reason": "scale up"},
        {"current": 3, "target": 2, "applied": True, "reason": "scale down"},
        {"current": 2, "target": 0, "applied": True, "reason": "idle"},
        {"current": 0, "target": 1, "applied": True, "reason": "idle gap predicted to end; pre-warm"},
        {"current": 0, "target": 2, "applied": True, "reason": "activate"},
        {"current": 0, "target": 2, "applied": False, "reason": "activate"},
        {"current": 2, "target": 2, "applied": True, "reason": "hold"},
    ]
    assert applied_kinds(rec) == {"scale_up": 1, "scale_down": 1, "to_zero": 1, "from_zero": 1, "prewarm": 1}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--history", "-1"], "--history"),
        (["--history", "23.9"], "--history"),
        (["--timers", "9"], "--timers"),
        (["--history", "0", "--timers", "1"], "--timers"),
    ],
)
def test_demo_arguments_are_checked(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
