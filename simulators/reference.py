"""The event-loop reference simulator: one heap of timed events, counters integrated between events.

It implements the semantics documented in :mod:`simulators.engine` the plain way (SimPy-style heap ordered by
``(time, priority, sequence)``) and is slow; tests run both on the same workloads and require the same
per-request latencies and the same decisions. Priorities at one instant: batch ends and cold-start ends,
then arrivals, then batch formation, then the policy tick (and batch formation for replicas it started warm),
then request time-outs. A request the replica reaches when it can no longer meet its SLO is dropped then.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from typing import Any

import numpy as np

from shadowscale.policies.scaling.base import ScalingPolicy, Signals
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig
from shadowscale.simulators.cluster import Replicas
from shadowscale.simulators.engine import SimConfig, SimResult, model_timeout, spec_index

_DONE, _END, _READY, _ARRIVAL, _DISPATCH, _TICK, _DISPATCH_AFTER_TICK, _EXPIRE = range(8)


class _M:
    def __init__(self, table: list[float], max_batch: int, end: float, warm: float = 0.0) -> None:
        self.end = end
        self.warm = warm
        self.q: deque[int] = deque()
        self.reps = Replicas()
        self.table = table
        self.max_batch = max_batch
        self.last = 0.0
        self.n_out = 0
        self.n_busy = 0
        self.n_ready = 0
        self.n_held = 0
        self.arrivals = 0
        self.busy_s = 0.0
        self.ready_s = 0.0
        self.inflight_s = 0.0
        self.gpu_s = 0.0

    def integrate(self, t: float, frac: float) -> None:
        dt = t - self.last
        if dt > 0:
            self.inflight_s += self.n_out * dt
            self.busy_s += self.n_busy * dt
            self.ready_s += self.n_ready * dt
            lo = max(min(self.last, self.end), self.warm)  # GPU time counts after the warm-up, until the trace ends
            self.gpu_s += self.n_held * frac * max(0.0, min(t, self.end) - lo)
            self.last = t


def simulate_reference(
    services: tuple[ServiceConfig, ...],
    arrival_s: FloatArray,
    model: IntArray,
    size: FloatArray,
    duration_s: float,
    policy: ScalingPolicy[Any],
    config: SimConfig = SimConfig(),
) -> SimResult:
    if any(s.llm is not None for s in services):
        raise ValueError(
            "simulate_reference serves batch-latency profiles only; LLM services (continuous batching) have their "
            "own reference, simulators.llm.simulate_iterations"
        )
    wall0 = time.perf_counter()
    n = len(services)
    arr = arrival_s.tolist()
    sz = size.tolist()
    mdl = model.tolist()
    frac = [s.profile.gpu_fraction for s in services]
    # spec moves (the engine's semantics): the running spec, the capacity it reports and the rollouts under way
    movable = any(len(s.specs) > 1 for s in services)
    spec_now = [spec_index(s) for s in services]
    cap = [s.profile.capacity_rps for s in services]
    rollouts: dict[int, tuple[int, float, float, float]] = {}  # model -> (spec, start, ready at, fraction)
    warm = config.warmup_s
    ms = [_M(s.profile.latency_table().tolist(), s.profile.max_batch, duration_s, warm) for s in services]
    lat = [math.nan] * len(arr)
    state_of = [0] * len(arr)  # 0 queued, 1 started, 2 dropped
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0

    def push(t: float, prio: int, a: int, b: int) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, prio, seq, a, b))
        seq += 1

    def cold_of(i: int) -> float:
        return services[i].cold_start_s if config.cold_start_s is None else config.cold_start_s

    def cold(i: int) -> float:
        return 0.0 if policy.hindsight else cold_of(i)

    timeouts = [model_timeout(config, cold_of(i)) for i in range(n)]
    l1 = [s.profile.latency_table()[1] for s in services]
    slo_of = [s.profile.slo_s for s in services]

    def surge_s(start: float, t: float) -> float:
        return max(0.0, min(t, duration_s) - max(start, warm))

    def switch(i: int, k: int) -> None:
        p = services[i].specs[k]
        table = p.latency_table().tolist()
        ms[i].table, ms[i].max_batch = table, p.max_batch
        l1[i], slo_of[i], frac[i], cap[i], spec_now[i] = table[1], p.slo_s, p.gpu_fraction, p.capacity_rps, k

    def dispatch(i: int, t: float) -> None:
        m = ms[i]
        reps = m.reps
        timeout = timeouts[i]
        while m.q:
            s = reps.earliest()
            if s < 0:
                return
            avail = max(reps.free[s], reps.ready[s])
            if avail > t:
                return
            # drop what already timed out (their expiry events come later at this instant or were skipped)
            while m.q and arr[m.q[0]] + timeout < t:
                j = m.q.popleft()
                _drop(i, j, arr[j] + timeout)
            if not m.q:
                return
            # requests that can no longer meet their SLO even alone are dropped as the replica reaches them
            batch: list[int] = []
            while m.q and len(batch) < m.max_batch:
                j = m.q.popleft()
                if t + l1[i] * sz[j] - arr[j] > slo_of[i] * sz[j]:
                    _drop(i, j, t)
                else:
                    batch.append(j)
            if not batch:
                continue
            b = len(batch)
            dur = m.table[b] * max(sz[j] for j in batch)
            reps.free[s] = t + dur
            reps.batch[s] = b
            m.n_busy += 1
            for j in batch:
                state_of[j] = 1
                done = t + m.table[b] * sz[j]  # each request leaves when its own work is done
                lat[j] = done - arr[j]
                push(done, _DONE, i, j)
            push(t + dur, _END, i, b)

    def _drop(i: int, j: int, at: float) -> None:
        # integrate up to the drop time would need past time; the drop happened at ``at`` <= now:
        # correct the integral for the time it was counted after it left.
        m = ms[i]
        m.inflight_s -= m.last - at
        m.n_out -= 1
        state_of[j] = 2

    initial, state = policy.init(services)
    for i in range(n):
        for _ in range(int(initial[i])):
            ms[i].reps.add(0.0, 0.0)
        ms[i].n_ready = ms[i].n_held = int(initial[i])
    for j in range(len(arr)):
        push(arr[j], _ARRIVAL, mdl[j], j)
    tick = policy.tick_s
    n_ticks = max(1, math.ceil(duration_s / tick - 1e-9))
    for k in range(n_ticks):
        push(k * tick, _TICK, k, 0)

    scale_events = 0
    cold_starts = 0
    log: list[tuple[float, int, int]] = []
    rec_rep = np.zeros(n_ticks, np.int64)
    rec_ready = np.zeros(n_ticks, np.int64)
    rec_gpu = np.zeros(n_ticks)
    last_tick_t = 0.0

    while heap:
        t, prio, _, a, b = heapq.heappop(heap)
        if prio == _DONE:
            m = ms[a]
            m.integrate(t, frac[a])
            m.n_out -= 1
        elif prio == _END:
            m = ms[a]
            m.integrate(t, frac[a])
            m.n_busy -= 1
            # a draining replica lets go of its GPU when its batch ends
            for idx, (f, nb, _) in enumerate(m.reps.draining):
                if f == t and nb == b:
                    del m.reps.draining[idx]
                    m.n_held -= 1
                    break
            push(t, _DISPATCH, a, 0)
        elif prio == _READY:
            m = ms[a]
            m.integrate(t, frac[a])
            m.n_ready = m.reps.ready_count(t)
            push(t, _DISPATCH, a, 0)
        elif prio == _ARRIVAL:
            m = ms[a]
            m.integrate(t, frac[a])
            m.q.append(b)
            m.n_out += 1
            m.arrivals += 1
            push(t, _DISPATCH, a, 0)
            push(t + timeouts[a], _EXPIRE, a, b)
        elif prio in (_DISPATCH, _DISPATCH_AFTER_TICK):
            ms[a].integrate(t, frac[a])
            dispatch(a, t)
        elif prio == _EXPIRE:
            if state_of[b] == 0:
                m = ms[a]
                m.integrate(t, frac[a])
                assert m.q and m.q[0] == b, "FIFO: the request timing out is the oldest queued"
                m.q.popleft()
                m.n_out -= 1
                state_of[b] = 2
        else:  # tick
            for i in range(n):
                ms[i].integrate(t, frac[i])
            for i in sorted(rollouts):
                k_new, start, ready_at, f_new = rollouts[i]
                reps = ms[i].reps
                if ready_at > t or len(reps) != 1 or reps.free[0] > t or reps.draining:
                    continue
                del rollouts[i]
                ms[i].gpu_s += f_new * surge_s(start, t)
                reps.remove_one(t)
                switch(i, k_new)
                reps.add(t, 0.0)
                ms[i].n_ready = reps.ready_count(t)
            signals = Signals(
                t,
                np.array([len(m.reps) for m in ms], np.int64),
                np.array([m.n_ready for m in ms], np.int64),
                np.array([float(m.arrivals) for m in ms]),
                np.array([m.busy_s for m in ms]),
                np.array([m.ready_s for m in ms]),
                np.array([m.inflight_s for m in ms]),
                np.array([m.n_out for m in ms], np.int64),
                capacity_rps=np.array(cap) if movable else None,
            )
            decisions, state = policy.decide(signals, state)
            for i in range(n):
                m = ms[i]
                reps = m.reps
                want = int(decisions.replicas[i])
                if want == len(reps):
                    continue
                if t >= warm:
                    scale_events += 1
                if config.record_decisions:
                    log.append((t, i, want))
                c = cold(i)
                while len(reps) < want:
                    reps.add(t, c)
                    m.n_held += 1
                    if c > 0:
                        if t >= warm:
                            cold_starts += 1
                        push(t + c, _READY, i, 0)
                while len(reps) > want:
                    before = len(reps.draining)
                    reps.remove_one(t)
                    if len(reps.draining) == before:
                        m.n_held -= 1
                m.n_ready = reps.ready_count(t)
                push(t, _DISPATCH_AFTER_TICK, i, 0)
            if decisions.spec is not None and movable:
                want_spec = decisions.spec
                for i in sorted(rollouts):
                    if len(ms[i].reps) != 1 or int(want_spec[i]) != rollouts[i][0]:
                        _, start, _, f_new = rollouts.pop(i)
                        ms[i].gpu_s += f_new * surge_s(start, t)
                for i in range(n):
                    k_new = int(want_spec[i])
                    if k_new < 0 or k_new == spec_now[i] or i in rollouts or k_new >= len(services[i].specs):
                        continue
                    if len(ms[i].reps) == 0:
                        switch(i, k_new)
                    elif len(ms[i].reps) == 1:
                        c = cold(i)
                        rollouts[i] = (k_new, t, t + c, services[i].specs[k_new].gpu_fraction)
                        if c > 0 and t >= warm:
                            cold_starts += 1
                        # the new replica's readiness is checked at the ticks (it takes over at a tick)
            rec_rep[a] = sum(len(m.reps) for m in ms)
            rec_ready[a] = sum(m.n_ready for m in ms)
            rec_gpu[a] = sum(len(m.reps) * frac[i] for i, m in enumerate(ms))
            last_tick_t = t

    del last_tick_t
    gpu_s = np.zeros(n)
    for i, m in enumerate(ms):
        m.integrate(max(duration_s, m.last), frac[i])  # GPU time is capped at the end of the trace
        gpu_s[i] = m.gpu_s
    for i, (_, start, _, f_new) in rollouts.items():  # surge replicas still starting at the end
        gpu_s[i] += f_new * surge_s(start, duration_s)
    lat_a = np.array(lat, dtype=np.float64)
    dropped = np.isnan(lat_a)
    slo = np.array([s.profile.slo_s for s in services])[model] * size
    met = ~dropped & (np.nan_to_num(lat_a, nan=math.inf) <= slo + 1e-12)
    return SimResult(
        policy=policy.name,
        latency_s=lat_a,
        dropped=dropped,
        met=met,
        gpu_s=gpu_s,
        gpus_held_s=float("nan"),  # placement is accounted by the fast engine only
        scale_events=scale_events,
        cold_starts=cold_starts,
        tick_t=np.arange(n_ticks, dtype=np.float64) * tick,
        tick_replicas=rec_rep,
        tick_ready=rec_ready,
        tick_gpu=rec_gpu,
        decisions=log,
        wall_s=time.perf_counter() - wall0,
        scored=arrival_s >= warm if warm > 0 else None,
    )
