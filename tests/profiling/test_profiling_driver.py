"""The replay runner and the search driver: lookups, failed trials for crashes and hangs (never a stuck search),
at most N trials at once, the shadow GPU-share cap, and the trial gate that several searches share."""

from __future__ import annotations

import asyncio
import math

import pytest

from shadowscale.agent.profiling.driver import DriverSettings, TrialGate, run_search
from shadowscale.policies.profiling.objective import Objective
from shadowscale.policies.profiling.planner import PlannerSettings, Search
from shadowscale.policies.profiling.replay import Measured, ReplayRunner
from shadowscale.policies.profiling.space import Categorical, Levels, SearchSpace
from shadowscale.policies.profiling.types import Trial, TrialResult, TrialStatus

SPACE = SearchSpace((Levels("share", (25, 50, 100), integer=True), Categorical("gpu", ("a", "b", "c"))))
ROWS = {
    (s, g): Measured(throughput=s * {"a": 1.0, "b": 2.0, "c": 3.0}[g], latency_ms=10.0 + s / 10)
    for s in (25, 50, 100)
    for g in ("a", "b", "c")
}
ROWS[(100, "b")] = Measured(throughput=500.0, latency_ms=math.nan)  # never reached the SLO
OBJECTIVE = Objective(slo_ms=19.0)
SETTINGS = PlannerSettings(ei_threshold=0.0, restarts=0)


def trial(config: dict[str, object]) -> Trial:
    return Trial("t1", "m", config, slo_ms=19.0)  # type: ignore[arg-type]


def test_replay_runner_looks_results_up() -> None:
    r = ReplayRunner(SPACE, ROWS)
    got = r.measure(trial({"share": 50, "gpu": "c"}))
    assert got.status is TrialStatus.MEASURED and got.throughput == 150.0 and got.p99_ms == 15.0
    assert "not measured" in ReplayRunner(SPACE, {}).measure(trial({"share": 50, "gpu": "c"})).error
    never = r.measure(trial({"share": 100, "gpu": "b"}))
    assert never.status is TrialStatus.MEASURED and never.p99_ms == math.inf and not OBJECTIVE.feasible(never)
    assert "lacks dimension" in r.measure(trial({"gpu": "c"})).error
    assert asyncio.run(r.run_trial(trial({"share": 25, "gpu": "a"}))).throughput == 25.0


class Flaky:
    """Replays, except that GPU "c" raises and share 100 on "a" never answers; counts trials in flight."""

    def __init__(self) -> None:
        self.replay = ReplayRunner(SPACE, ROWS)
        self.in_flight = 0
        self.most = 0
        self.started: list[str] = []

    async def run_trial(self, t: Trial) -> TrialResult:
        self.started.append(t.trial_id)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(0.01)
            if t.config["gpu"] == "c":
                raise RuntimeError("server crashed")
            if t.config == {"share": 100, "gpu": "a"}:
                await asyncio.Event().wait()  # hangs
            return self.replay.measure(t)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("parallel", [1, 3])
def test_crashes_and_hangs_become_failed_trials(parallel: int) -> None:
    runner = Flaky()
    search = Search.start(SPACE, OBJECTIVE, SETTINGS, seed=0)
    settings = DriverSettings(max_parallel=parallel, trial_timeout_s=0.3)
    final, profile = asyncio.run(asyncio.wait_for(run_search("m", search, runner, settings), 30))
    assert len(final.observations) == 9 and profile.stopped == "every configuration was tried"
    errors = {o.point: o.result.error for o in final.observations if not o.result.measured}
    assert all("RuntimeError: server crashed" in errors[(s, "c")] for s in (25, 50, 100))
    assert "no result within 0.3 s" in errors[(100, "a")]
    assert (100, "b") not in errors  # measured: it never met the SLO
    assert profile.chosen == (50, "b") and profile.capacity == 100.0
    assert runner.most == parallel and runner.in_flight == 0
    assert len(set(runner.started)) == 9


def test_gpu_share_cap_limits_what_runs_at_once() -> None:
    runner = Flaky()
    search = Search.start(SPACE, OBJECTIVE, SETTINGS, seed=1)
    settings = DriverSettings(
        max_parallel=4, trial_timeout_s=0.3, gpu_share_cap=0.8, gpu_share_dimension="share", gpu_share_unit=0.01
    )
    final, _ = asyncio.run(asyncio.wait_for(run_search("m", search, runner, settings), 30))
    capped = [o for o in final.observations if "above the shadow cap" in o.result.error]
    assert {o.point[0] for o in capped} == {100}
    assert len(final.observations) == 9
    assert runner.most <= 3  # 25 + 50 fit under 0.8 GPU, 50 + 50 does not exist twice


class Shared:
    """A replay runner for several searches at once: records how many trials of all of them run together and the GPU
    share they hold (``share`` % of a GPU)."""

    def __init__(self) -> None:
        self.replay = ReplayRunner(SPACE, ROWS)
        self.in_flight: dict[str, int] = {}
        self.held = 0.0
        self.most = 0
        self.most_held = 0.0
        self.overlapped = False
        """A moment when trials of two models ran together."""

    async def run_trial(self, t: Trial) -> TrialResult:
        share = float(t.config["share"]) / 100
        self.in_flight[t.model] = self.in_flight.get(t.model, 0) + 1
        self.held += share
        self.most = max(self.most, sum(self.in_flight.values()))
        self.most_held = max(self.most_held, self.held)
        self.overlapped |= sum(1 for n in self.in_flight.values() if n) > 1
        try:
            # until two models' trials have run together, a trial waits (up to 2 s) for the other search: on a
            # loaded machine one search's planning can otherwise outlast all of the other's 20 ms trials
            deadline = asyncio.get_running_loop().time() + 2.0
            while not self.overlapped and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.02)
            return self.replay.measure(t)
        finally:
            self.in_flight[t.model] -= 1
            self.held -= share


@pytest.mark.parametrize("shared_gate", [True, False])
def test_a_shared_gate_bounds_trials_and_gpu_share_across_searches(shared_gate: bool) -> None:
    runner = Shared()
    gate = TrialGate(max_trials=3, gpu_share_cap=1.0) if shared_gate else None
    settings = DriverSettings(
        max_parallel=3, trial_timeout_s=5, gpu_share_cap=1.5, gpu_share_dimension="share", gpu_share_unit=0.01
    )

    async def both() -> list[tuple[Search, object]]:
        searches = [
            run_search(model, Search.start(SPACE, OBJECTIVE, SETTINGS, seed=seed), runner, settings, gate=gate)
            for seed, model in enumerate(("resnet", "bert"))
        ]
        return list(await asyncio.gather(*searches))

    results = asyncio.run(asyncio.wait_for(both(), 60))
    for final, _ in results:
        assert len(final.observations) == 9  # every configuration ran: a 1-GPU trial was not starved
        assert all(o.result.measured for o in final.observations)
    assert runner.overlapped  # the two searches did run at the same time
    if gate is not None:
        assert runner.most == 3 and runner.most_held <= 1.0 + 1e-9
        assert gate.running == 0 and gate.held == 0.0
    else:  # the same searches without the gate: each keeps only its own limits, so together they go over
        assert runner.most > 3 and runner.most_held > 1.0


def test_trial_gate_serves_in_order_and_survives_cancellation() -> None:
    async def scenario() -> None:
        gate = TrialGate(max_trials=2, gpu_share_cap=1.0)
        a = gate.try_acquire(0.5)
        b = gate.try_acquire(0.25)
        assert a is not None and b is not None and gate.try_acquire(0.25) is None  # two trials at most
        big = asyncio.ensure_future(gate.acquire(1.0))
        await asyncio.sleep(0)
        gate.release(b)
        assert gate.try_acquire(0.25) is None  # the 1-GPU trial waits first; a small one may not overtake it
        gate.release(b)  # a second release changes nothing
        assert gate.running == 1 and gate.held == 0.5
        gate.release(a)
        permit = await big
        assert gate.running == 1 and gate.held == 1.0
        waiter = asyncio.ensure_future(gate.acquire(0.5))
        await asyncio.sleep(0)
        waiter.cancel()  # a search cancelled while waiting leaves nothing behind
        with pytest.raises(asyncio.CancelledError):
            await waiter
        gate.release(permit)
        assert gate.running == 0 and gate.held == 0.0 and gate.try_acquire(1.0) is not None
        with pytest.raises(ValueError, match="above the cap"):
            gate.try_acquire(1.5)

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="max_trials must be >= 1"):
        TrialGate(0)
    with pytest.raises(ValueError, match="gpu_share_cap must be positive"):
        TrialGate(2, gpu_share_cap=0)


class Crowded:
    """Replays, but the cluster has no room for GPU "c" shadows the first ``full_for`` times one is tried."""

    def __init__(self, full_for: int) -> None:
        self.replay = ReplayRunner(SPACE, ROWS)
        self.full_for = full_for
        self.tries: dict[tuple[object, ...], int] = {}

    async def run_trial(self, t: Trial) -> TrialResult:
        await asyncio.sleep(0.005)
        key = (t.config["share"], t.config["gpu"])
        self.tries[key] = self.tries.get(key, 0) + 1
        if t.config["gpu"] == "c" and self.tries[key] <= self.full_for:
            return TrialResult.unschedulable("0/3 nodes are available: 3 Insufficient nvidia.com/gpu")
        return self.replay.measure(t)


def test_unschedulable_shadows_are_retried_not_scored() -> None:
    """A full cluster is not a verdict on the configuration: GPU "c" (the best) is unschedulable twice, held back,
    offered again and then measured, so the search still chooses it. Mutation: recording the unschedulable result
    as a failed trial scores GPU "c" as broken after one try each and the search settles for (50, "b");
    ``Search.record`` refuses an unschedulable result outright."""
    runner = Crowded(full_for=2)
    search = Search.start(SPACE, OBJECTIVE, SETTINGS, seed=0)
    settings = DriverSettings(trial_timeout_s=5, unschedulable_retry_s=0.01, unschedulable_retries=3)
    final, profile = asyncio.run(asyncio.wait_for(run_search("m", search, runner, settings), 30))
    assert len(final.observations) == 9 and all(
        o.result.status is not TrialStatus.UNSCHEDULABLE for o in final.observations
    )
    assert {k: n for k, n in runner.tries.items() if k[1] == "c"} == {(25, "c"): 3, (50, "c"): 3, (100, "c"): 3}
    assert profile.chosen == (50, "c")
    with pytest.raises(ValueError, match="unschedulable trial is not a result"):
        final.record((25, "a"), TrialResult.unschedulable("full"))


def test_a_configuration_that_never_fits_is_given_up_unscored() -> None:
    runner = Crowded(full_for=100)
    search = Search.start(SPACE, OBJECTIVE, SETTINGS, seed=0)
    settings = DriverSettings(trial_timeout_s=5, unschedulable_retry_s=0.01, unschedulable_retries=1)
    final, profile = asyncio.run(asyncio.wait_for(run_search("m", search, runner, settings), 30))
    assert sorted(o.point for o in final.observations) == [(s, g) for s in (25, 50, 100) for g in ("a", "b")]
    assert all(runner.tries[(s, "c")] == 2 for s in (25, 50, 100))  # tried, retried once, given up
    assert profile.chosen is not None and profile.chosen == (50, "b")
