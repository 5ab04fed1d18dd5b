"""The search loop: ask the planner, run trials through a runner, record what comes back, until it says stop.

- At most ``max_parallel`` trials of a search run at once, and the GPU share they hold stays within
  ``gpu_share_cap`` (a trial's share is read from the configuration: ``gpu_share_dimension`` × ``gpu_share_unit``);
  a configuration that alone exceeds the cap is recorded as a failed trial, never run.
- Several searches (one per model) share a :class:`TrialGate`: at most its ``max_trials`` trials run at once
  cluster-wide and the shadows hold at most its ``gpu_share_cap`` GPUs together. A trial starts only when both its
  search's limits and the gate allow it; the gate serves searches first come, first served, so a search whose
  trial needs a large share is not starved by others' small ones.
- A trial that raises, or whose result does not arrive within ``trial_timeout_s``, is recorded as a failed trial
  (the runner's task is cancelled, which makes a runner clean up): the planner learns from it and goes on.
- A trial whose shadow could not be scheduled (:attr:`TrialStatus.UNSCHEDULABLE`: no node had room) is not a
  result: its configuration is held back for ``unschedulable_retry_s`` and then offered again, at most
  ``unschedulable_retries`` times; it is never scored, so a full cluster cannot teach the planner that a good
  configuration is bad.
- The planner's model fitting runs on a worker thread, so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

from shadowscale.policies.profiling.planner import Search
from shadowscale.policies.profiling.ports import TrialRunner
from shadowscale.policies.profiling.space import Point
from shadowscale.policies.profiling.types import Profile, Trial, TrialResult, TrialStatus

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
    unschedulable_retry_s: float = 120.0
    """How long a configuration whose shadow could not be scheduled is held back before it is tried again ..."""
    unschedulable_retries: int = 3
    """... and how many times; after that it stays untried (never scored) for the rest of the search."""

    def __post_init__(self) -> None:
        if self.max_parallel < 1 or self.trial_timeout_s <= 0:
            raise ValueError("driver: max_parallel must be >= 1 and trial_timeout_s > 0")
        if not self.unschedulable_retry_s >= 0 or self.unschedulable_retries < 0:
            raise ValueError("driver: unschedulable_retry_s and unschedulable_retries must be >= 0")
        if self.gpu_share_cap is not None and not self.gpu_share_cap > 0:
            raise ValueError(f"driver: gpu_share_cap must be positive (or None for no cap), got {self.gpu_share_cap}")


class Permit:
    """One trial's place in a :class:`TrialGate` (its GPU share); released once, by :meth:`TrialGate.release`."""

    __slots__ = ("released", "share")

    def __init__(self, share: float) -> None:
        self.share = share
        self.released = False


class TrialGate:
    """Trial limits shared by concurrent searches: at most ``max_trials`` running trials and at most
    ``gpu_share_cap`` GPUs held by them together (None: no cap).

    :meth:`acquire` waits first come, first served: while anyone waits, :meth:`try_acquire` gives nothing, so a
    trial that needs a large share gets its turn as the running ones finish instead of being overtaken forever.
    Single event loop; no locks needed.
    """

    def __init__(self, max_trials: int, gpu_share_cap: float | None = None) -> None:
        if max_trials < 1:
            raise ValueError(f"trial gate: max_trials must be >= 1, got {max_trials}")
        if gpu_share_cap is not None and not gpu_share_cap > 0:
            raise ValueError(f"trial gate: gpu_share_cap must be positive, got {gpu_share_cap}")
        self.max_trials = max_trials
        self.gpu_share_cap = gpu_share_cap
        self.running = 0
        self.held = 0.0
        self._waiters: deque[tuple[float, asyncio.Future[Permit]]] = deque()
        self._changed = asyncio.Event()

    def too_big(self, share: float) -> bool:
        """Whether a trial needing ``share`` GPUs can never run under this gate."""
        return self.gpu_share_cap is not None and share > self.gpu_share_cap + 1e-9

    def _fits(self, share: float) -> bool:
        cap = self.gpu_share_cap
        return self.running < self.max_trials and (cap is None or self.held + share <= cap + 1e-9)

    def _grant(self, share: float) -> Permit:
        self.running += 1
        self.held += share
        return Permit(share)

    def try_acquire(self, share: float) -> Permit | None:
        """A permit now if the limits allow it and nobody is waiting; otherwise None."""
        if self.too_big(share):
            raise ValueError(f"trial gate: {share:g} GPU is above the cap of {self.gpu_share_cap:g}")
        if self._waiters or not self._fits(share):
            return None
        return self._grant(share)

    async def acquire(self, share: float) -> Permit:
        """A permit, waiting in line for it."""
        got = self.try_acquire(share)
        if got is not None:
            return got
        fut: asyncio.Future[Permit] = asyncio.get_running_loop().create_future()
        entry = (share, fut)
        self._waiters.append(entry)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # granted just as we were cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, permit: Permit) -> None:
        """Give a permit back (a second release of the same permit does nothing) and serve the waiters."""
        if permit.released:
            return
        permit.released = True
        self.running -= 1
        self.held = max(0.0, self.held - permit.share)
        self._wake()
        self._changed.set()
        self._changed = asyncio.Event()

    def _wake(self) -> None:
        while self._waiters:
            share, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if not self._fits(share):
                return
            self._waiters.popleft()
            fut.set_result(self._grant(share))

    async def changed(self) -> None:
        """Return at the next release (a search that could not start a trial tries again then)."""
        await self._changed.wait()


async def run_search(
    model: str,
    search: Search,
    runner: TrialRunner,
    settings: DriverSettings | None = None,
    *,
    run_id: str = "t",
    gate: TrialGate | None = None,
) -> tuple[Search, Profile]:
    """Run ``search`` to its end; returns the final search (every trial recorded) and the model's profile.

    ``gate``, shared by the searches running at the same time, bounds their trials together (see the module doc).
    """
    st = settings or DriverSettings()
    own = TrialGate(st.max_parallel, st.gpu_share_cap)
    gates = (own,) if gate is None else (own, gate)
    running: dict[asyncio.Task[TrialResult], tuple[Point, list[Permit]]] = {}
    count = 0
    stopped = ""
    held: dict[Point, float] = {}
    """Unschedulable configurations, held back (still marked running in the search) until this monotonic time."""
    attempts: dict[Point, int] = {}
    given_up: set[Point] = set()
    try:
        while True:
            now = time.monotonic()
            for p in [p for p, until in held.items() if until <= now]:
                del held[p]
                search = search.release(p)  # offered again
            free = st.max_parallel - len(running)
            gated = False  # a point went back because the shared gate was full: ask again when it frees up
            if free > 0 and not stopped:
                search, sug = await asyncio.to_thread(search.ask, free)
                if sug.stop:
                    stopped = sug.reason
                for p in sug.points:
                    share = _share(search, p, st)
                    over = [g.gpu_share_cap for g in gates if g.too_big(share) and g.gpu_share_cap is not None]
                    if over:
                        error = f"needs {share:g} GPU, above the shadow cap of {min(over):g}"
                        search = search.record(p, TrialResult.failed(error))
                        continue
                    permits, shared_full = await _admit(own, gate, share, wait=not running)
                    if permits is None:
                        gated = gated or shared_full
                        search = search.release(p)  # wait for running trials to free their place
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
                    running[asyncio.create_task(_guarded(runner, trial), name=trial.trial_id)] = (p, permits)
            if not running:
                if stopped:
                    break
                if free > 0 and not sug.points:
                    if held:  # wait for the cluster to have room for a held-back configuration
                        await asyncio.sleep(max(0.0, min(held.values()) - time.monotonic()))
                        continue
                    stopped = sug.reason or "no configuration can run"
                    break
                continue
            waiting: set[asyncio.Future[Any]] = set(running)
            changed = asyncio.ensure_future(gate.changed()) if gated and gate is not None else None
            if changed is not None:
                waiting.add(changed)
            try:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if changed is not None and not changed.done():
                    changed.cancel()
            for task in [t for t in running if t in done]:
                p, permits = running.pop(task)
                for g, permit in zip(gates, permits, strict=True):
                    g.release(permit)
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
                if result.status is TrialStatus.UNSCHEDULABLE:
                    attempts[p] = attempts.get(p, 0) + 1
                    if attempts[p] <= st.unschedulable_retries:
                        held[p] = time.monotonic() + st.unschedulable_retry_s
                        log.warning("shadow unschedulable; will retry", model=model, trial=task.get_name())
                    else:
                        given_up.add(p)  # stays marked running in the search: never suggested again, never scored
                        log.warning("shadow unschedulable; giving up on this configuration", model=model)
                    continue
                search = search.record(p, result)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for _, permits in running.values():
            for g, permit in zip(gates, permits, strict=True):
                g.release(permit)
    profile = await asyncio.to_thread(search.profile, model, stopped)
    return search, profile


async def _admit(
    own: TrialGate, gate: TrialGate | None, share: float, *, wait: bool
) -> tuple[list[Permit] | None, bool]:
    """Permits from the search's own limits and the shared gate, or None (nothing held) if either is full, and
    whether it was the shared gate that was full.

    ``wait``: the search runs nothing, so it waits its turn at the shared gate instead of giving up (its own limits
    always admit a trial when nothing of it runs)."""
    mine = own.try_acquire(share)
    if mine is None:
        return None, False
    if gate is None:
        return [mine], False
    try:
        shared = await gate.acquire(share) if wait else gate.try_acquire(share)
    except BaseException:
        own.release(mine)
        raise
    if shared is None:
        own.release(mine)
        return None, True
    return [mine, shared], False


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
