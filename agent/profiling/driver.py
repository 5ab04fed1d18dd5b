"""The search loop: ask the planner, run trials through a runner, record what comes back, until it says stop.

- At most ``max_parallel`` trials run at once, and the GPU share the running trials hold stays within
  ``gpu_share_cap`` (a trial's share is read from the configuration: ``gpu_share_dimension`` × ``gpu_share_unit``);
  a configuration that alone exceeds the cap is recorded as a failed trial, never run.
- A trial that raises, or whose result does not arrive within ``trial_timeout_s``, is recorded as a failed trial
  (the runner's task is cancelled, which makes a runner clean up): the planner learns from it and goes on.
- The planner's model fitting runs on a worker thread, so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog

from policies.profiling.planner import Search
from policies.profiling.ports import TrialRunner
from policies.profiling.space import Point
from policies.profiling.types import Profile, Trial, TrialResult

log = structlog.get_logger("shadowscale.profiling")


@dataclass(frozen=True, slots=True)
class DriverSettings:
    max_parallel: int = 1
    trial_timeout_s: float = 900.0
    gpu_share_cap: float | None = None
    """Most GPU share (in GPUs) the running trials of this search may hold together; None = no cap."""
    gpu_share_dimension: str | None = None
    gpu_share_unit: float = 1.0
    """GPUs per unit of ``gpu_share_dimension`` (0.01 for a percentage)."""

    def __post_init__(self) -> None:
        if self.max_parallel < 1 or self.trial_timeout_s <= 0:
            raise ValueError("driver: max_parallel must be >= 1 and trial_timeout_s > 0")


async def run_search(
    model: str, search: Search, runner: TrialRunner, settings: DriverSettings | None = None, *, run_id: str = "t"
) -> tuple[Search, Profile]:
    """Run ``search`` to its end; returns the final search (every trial recorded) and the model's profile."""
    st = settings or DriverSettings()
    running: dict[asyncio.Task[TrialResult], Point] = {}
    count = 0
    stopped = ""
    try:
        while True:
            free = st.max_parallel - len(running)
            if free > 0 and not stopped:
                search, sug = await asyncio.to_thread(search.ask, free)
                if sug.stop:
                    stopped = sug.reason
                for p in sug.points:
                    share = _share(search, p, st)
                    if st.gpu_share_cap is not None and share > st.gpu_share_cap:
                        search = search.record(p, TrialResult.failed(f"needs {share:g} GPU, above the shadow cap"))
                        continue
                    held = sum(_share(search, q, st) for q in running.values())
                    if st.gpu_share_cap is not None and held + share > st.gpu_share_cap:
                        search = search.release(p)  # wait for running trials to free their share
                        continue
                    count += 1
                    trial = Trial(
                        f"{run_id}-{model}-{count}",
                        model,
                        search.space.config(p),
                        search.objective.slo_ms,
                        timeout_s=st.trial_timeout_s,
                    )
                    log.info("trial started", model=model, trial=trial.trial_id, config=dict(trial.config))
                    running[asyncio.create_task(_guarded(runner, trial), name=trial.trial_id)] = p
            if not running:
                if stopped:
                    break
                if free > 0 and not sug.points:
                    stopped = sug.reason or "no configuration can run"
                    break
                continue
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                p = running.pop(task)
                result = task.result()
                log.info(
                    "trial done",
                    model=model,
                    trial=task.get_name(),
                    status=str(result.status),
                    throughput=result.throughput,
                    p99_ms=result.p99_ms,
                    error=result.error,
                )
                search = search.record(p, result)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
    profile = await asyncio.to_thread(search.profile, model, stopped)
    return search, profile


def _share(search: Search, p: Point, st: DriverSettings) -> float:
    if st.gpu_share_dimension is None:
        return 0.0
    v = search.space.config(p).get(st.gpu_share_dimension, 0.0)
    return float(v) * st.gpu_share_unit if not isinstance(v, str) else 0.0


async def _guarded(runner: TrialRunner, trial: Trial) -> TrialResult:
    """The runner's result, or a failed result if it raises or does not answer within the trial's timeout."""
    t0 = time.perf_counter()
    try:
        return await asyncio.wait_for(runner.run_trial(trial), trial.timeout_s)
    except TimeoutError:
        return TrialResult.failed(f"no result within {trial.timeout_s:g} s", time.perf_counter() - t0)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # a runner bug must not stop the search
        return TrialResult.failed(f"runner raised {type(e).__name__}: {e}", time.perf_counter() - t0)
