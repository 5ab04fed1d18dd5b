"""The local runner: a real model server process, real measurements over loopback, and clean failures (bad
configuration, out of memory, crash, hang) that always leave no process behind."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from shadowscale.agent.profiling.driver import DriverSettings, run_search
from shadowscale.agent.profiling.loadtest import Step, find_capacity
from shadowscale.agent.profiling.local import LocalSettings, LocalTrialRunner
from shadowscale.policies.profiling.objective import CostTerm, Objective, Pricing
from shadowscale.policies.profiling.planner import PlannerSettings, Search
from shadowscale.policies.profiling.space import Levels, SearchSpace
from shadowscale.policies.profiling.types import Trial, TrialStatus

QUICK = LocalSettings(step_s=0.4, start_rps=40.0, bisect_steps=1, server_args=("--hidden", "128", "--layers", "2"))


def run(runner: LocalTrialRunner, config: dict[str, int], slo_ms: float = 200.0, timeout_s: float = 30.0) -> object:
    return asyncio.run(runner.run_trial(Trial("t-1", "mlp", config, slo_ms, timeout_s)))  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_real_server_is_measured() -> None:
    r = run(LocalTrialRunner(QUICK), {"threads": 1, "batch": 8})
    assert r.status is TrialStatus.MEASURED, r.error  # type: ignore[attr-defined]
    assert r.throughput >= 40.0 and 0 < r.p99_ms <= 200.0  # type: ignore[attr-defined]
    assert r.details["steps"] >= 2  # type: ignore[attr-defined]


def test_slo_that_cannot_be_met_is_zero_capacity() -> None:
    r = run(LocalTrialRunner(QUICK), {"threads": 1, "batch": 1}, slo_ms=0.001)
    assert r.status is TrialStatus.MEASURED and r.throughput == 0.0 and r.p99_ms > 0.001  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("config", "args", "message"),
    [
        ({"threads": 0, "batch": 4}, (), "exit code 2"),
        ({"threads": 1, "batch": 4}, ("--memory-mb", "1"), "out of memory"),
        ({"batch": 4}, (), "lacks threads"),
    ],
)
def test_failed_start_is_a_failed_trial(config: dict[str, int], args: tuple[str, ...], message: str) -> None:
    runner = LocalTrialRunner(LocalSettings(server_args=args))
    r = run(runner, config)
    assert r.status is TrialStatus.FAILED and message in r.error  # type: ignore[attr-defined]


FAKE = """
import os, sys, time, socket
open(sys.argv[1], "w").write(str(os.getpid()))
mode = sys.argv[2]
if mode == "crash":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
    print("READY", s.getsockname()[1], flush=True)
    time.sleep(0.3)
    sys.exit(9)
if mode == "silent":
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
    print("READY", s.getsockname()[1], flush=True)
    conns = []
    while True:
        c, _ = s.accept(); conns.append(c)
time.sleep(3600)
"""


@pytest.mark.parametrize(
    ("mode", "timeout_s", "message"),
    [
        ("crash", 20.0, "died during the load test (exit code 9)"),
        ("never-ready", 20.0, "not ready within 1 s"),
        ("silent", 1.5, "timed out after 1.5 s"),
    ],
)
def test_crash_and_hang_fail_cleanly_and_kill_the_server(
    tmp_path: Path, mode: str, timeout_s: float, message: str
) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    pid_file = tmp_path / "pid"
    settings = LocalSettings(
        command=(sys.executable, str(script), str(pid_file), mode), step_s=5.0, ready_timeout_s=1.0
    )
    r = run(LocalTrialRunner(settings), {"threads": 1, "batch": 1}, timeout_s=timeout_s)
    assert r.status is TrialStatus.FAILED and message in r.error, r.error  # type: ignore[attr-defined]
    assert not alive(int(pid_file.read_text()))


def test_find_capacity_doubles_then_bisects() -> None:
    seen: list[float] = []

    async def measure(rate: float) -> Step:
        seen.append(rate)
        return Step(rate, 100, 100, 10.0 if rate <= 300 else 50.0)

    cap = asyncio.run(find_capacity(measure, 20.0, start_rps=50, max_rps=10_000, bisect_steps=3))
    assert seen == [50, 100, 200, 400, 300, 350, 325]
    assert cap.rate == 300 and cap.p99_ms == 10.0


def test_a_whole_search_through_the_local_runner() -> None:
    """The loop end to end on this machine: planner → driver → real server processes → profile."""
    space = SearchSpace((Levels("threads", (1, 2), integer=True), Levels("batch", (1, 16), log=True, integer=True)))
    objective = Objective(slo_ms=100.0, pricing=Pricing((CostTerm("threads", 1.0),)))
    search = Search.start(space, objective, PlannerSettings(budget=3, initial_points=2), seed=0)
    runner = LocalTrialRunner(QUICK)
    final, profile = asyncio.run(run_search("mlp", search, runner, DriverSettings(trial_timeout_s=60)))
    assert len(final.observations) == 3 and profile.stopped.startswith("trial budget")
    assert all(o.result.measured for o in final.observations), [o.result.error for o in final.observations]
    assert profile.chosen is not None and profile.capacity > 0
    assert len(profile.predictions) == 4
