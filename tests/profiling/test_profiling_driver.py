"""The replay runner and the search driver: lookups, failed trials for crashes and hangs (never a stuck search),
at most N trials at once, and the shadow GPU-share cap."""

from __future__ import annotations

import asyncio
import math

import pytest

from agent.profiling.driver import DriverSettings, run_search
from policies.profiling.objective import Objective
from policies.profiling.planner import PlannerSettings, Search
from policies.profiling.replay import Measured, ReplayRunner
from policies.profiling.space import Categorical, Levels, SearchSpace
from policies.profiling.types import Trial, TrialResult, TrialStatus

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
