"""The fast simulator: tick-sliced, lazy per-model serving with vectorised policy evaluation.

Semantics (the event-loop reference in :mod:`simulators.reference` implements the same and tests compare them):

- Requests of a model wait in one FIFO queue (the Knative activator / a shared load balancer queue).
- A replica that is ready and idle takes up to ``max_batch`` requests from the queue; the batch runs for
  ``L(b) × max(size)`` (the profile's batch latency scaled by the largest request in it). Requests arriving at the
  same instant join the queue before a batch forms.
- A new replica serves only after its cold start. Time-outs as the serving stack has them (per model): a request
  still queued ``timeout`` after it arrived is dropped at that moment, where ``timeout`` is the stack's
  time-out (``SimConfig.timeout_s``, default 300 s: Knative Serving's revision ``timeoutSeconds`` default, up to
  which the activator holds a request while a replica cold-starts) but never shorter than the model's cold start;
  and a request a replica is about to take into a batch is dropped instead when it can no longer meet its SLO
  even alone (``now + L(1) × size > arrival + SLO × size``). Both are SLO misses; nothing else drops.
- The policy is evaluated every ``tick_s`` from t = 0 on the signals at that instant (everything that happened
  up to and including it) and its targets take effect at once (replicas created or removed at that instant).
- GPU time: every replica holds ``gpu_fraction`` of a GPU from creation (cold start included) until removal,
  or until the batch it was running when removed ends; counted up to the end of the trace.
- After the last tick the replicas stay as they are and every remaining request is served or dropped.
- Spec moves (``Decisions.spec``, an index into the service's ``specs``): a model at zero replicas takes the new
  spec at once (nothing runs). A model at one replica is rolled by a surge (maxSurge 1, maxUnavailable 0): a
  replica of the new spec is created (placed, its GPU share charged, a cold start counted) while the old one
  keeps serving; at the first tick at which the new one is ready and the old one is idle, the old one is removed
  and the new one serves from then on (its profile, share and capacity). A rollout is cancelled, its surge
  replica's time charged, when the model's replica count leaves one or the wanted spec changes; models with more
  replicas keep their spec until they are back at one. ``Signals.capacity_rps`` reports the running spec's
  capacity wherever a service has alternative specs.
- Services with ``llm`` set are served with continuous batching instead (:mod:`simulators.llm`: iteration-level
  steps, KV-cache admission, context limit, TTFT and TPOT objectives); the rest of the loop is the same.

Fast path: between two ticks only models with arrivals or work in flight are advanced (a pure-Python loop per
request); quiet models cost nothing but one vectorised counter update; the policy sees all models at once.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from heapq import heappop, heappush, heapreplace
from typing import Any

import numpy as np

from shadowscale.policies.llm import OUTPUT_TOKEN_BUCKETS
from shadowscale.policies.scaling.base import ScalingPolicy, Signals
from shadowscale.policies.types import FloatArray, IntArray, ServiceConfig
from shadowscale.simulators.cluster import Replicas
from shadowscale.simulators.gpus import GpuPool, to_milli
from shadowscale.simulators.llm import LlmModel, request_met

INF = math.inf


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Simulation knobs. ``cold_start_s`` overrides every service's own when set."""

    timeout_s: float = 300.0
    """The serving stack's request time-out (Knative's revision ``timeoutSeconds`` default, 300 s: ``config-defaults``
    ``revision-timeout-seconds``, knative/docs docs/serving/configuration/config-defaults.md); per model it is
    raised to the model's cold start when shorter, so a scale-from-zero never drops its requests by the clock."""
    cold_start_s: float | None = None
    record_decisions: bool = False
    vector_min_requests: int = 24
    """Tick intervals with at least this many arrivals take the vectorised path for idle single-replica models
    (tests set 0 to force it and a huge value to disable it; results are identical either way)."""
    warmup_s: float = 0.0
    """The first seconds of the trace warm the policies up and are not scored: requests that arrive before it,
    GPU time, scale events and cold starts before it are left out of the result (as a deployment that was running
    before the trace window began would not have started from one replica)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0.0):
            raise ValueError(f"simulation: timeout_s must be a finite number > 0, got {self.timeout_s!r}")
        if not (math.isfinite(self.warmup_s) and self.warmup_s >= 0.0):
            raise ValueError(f"simulation: warmup_s must be a finite number >= 0, got {self.warmup_s!r}")


@dataclass(slots=True)
class SimResult:
    policy: str
    latency_s: FloatArray
    """Per request: completion minus arrival; NaN when dropped."""
    dropped: npt_bool
    met: npt_bool
    gpu_s: FloatArray
    """Per model: GPU-seconds held (each replica's GPU fraction × time)."""
    gpus_held_s: float
    """GPU-seconds of whole GPUs holding at least one replica (simulated best-fit placement)."""
    scale_events: int
    cold_starts: int
    tick_t: FloatArray
    tick_replicas: IntArray
    tick_ready: IntArray
    tick_gpu: FloatArray
    decisions: list[tuple[float, int, int]] = field(default_factory=list)
    wall_s: float = 0.0
    scored: npt_bool | None = None
    """Per request: counted in the result (it arrived after the warm-up); None: every request."""
    ttft_s: FloatArray | None = None
    """Per request of an LLM service: time to first token (NaN when not served); None without LLM services."""
    rejected: npt_bool | None = None
    """Per request: refused on arrival because prompt + output exceed the model's context (LLM services)."""
    final_state: Any = None
    """The policy's state after the last tick: what it learnt from the run (the live demo starts the agent from it)."""
    final_replicas: IntArray | None = None
    """Per model: the replicas held after the last tick."""

    @property
    def requests(self) -> int:
        return int(self.latency_s.shape[0])


npt_bool = Any  # numpy bool arrays; numpy's typing of bool arrays is noisy under --strict


class _Model:
    """Serving state of one model: its queue, replicas and the raw sums behind its counters."""

    llm = False

    __slots__ = (
        "arrived",
        "busy_started",
        "end",
        "inflight_started",
        "l1",
        "max_batch",
        "ptr",
        "q",
        "q_sum_a",
        "reps",
        "slo",
        "table",
        "timeout",
    )

    def __init__(
        self, start: int, end: int, table: list[float], max_batch: int, slo: float, timeout: float = INF
    ) -> None:
        self.ptr = start
        self.end = end
        self.arrived = 0
        self.q: deque[int] = deque()
        self.q_sum_a = 0.0
        self.reps = Replicas()
        self.busy_started = 0.0
        self.inflight_started = 0.0
        self.table = table
        self.max_batch = max_batch
        self.slo = slo
        self.l1 = table[1]
        self.timeout = timeout


def model_timeout(config: SimConfig, cold_start_s: float) -> float:
    """The time-out of one model: the stack's, never shorter than the model's cold start."""
    return max(config.timeout_s, cold_start_s)


class Engine:
    """Runs one policy over one workload. Build with the workload arrays; ``run`` is deterministic."""

    def __init__(
        self,
        services: tuple[ServiceConfig, ...],
        arrival_s: FloatArray,
        model: IntArray,
        size: FloatArray,
        duration_s: float,
        config: SimConfig = SimConfig(),
        prompt_tokens: FloatArray | None = None,
        output_tokens: FloatArray | None = None,
    ) -> None:
        if any(s.llm is not None for s in services) and (prompt_tokens is None or output_tokens is None):
            raise ValueError("simulation: LLM services need each request's prompt and output tokens")
        self.prompt_tokens = prompt_tokens
        self.output_tokens = output_tokens
        self.services = services
        self.arrival_s = arrival_s
        self.model = model
        self.size = size
        self.duration_s = duration_s
        self.config = config
        n = len(services)
        # Requests grouped by model, in arrival order within each model.
        self.order = np.argsort(model, kind="stable")
        counts = np.bincount(model, minlength=n) if model.size else np.zeros(n, np.int64)
        self.seg = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.gpu_fraction = np.array([s.profile.gpu_fraction for s in services])

    def cold_start(self, i: int) -> float:
        c = self.config.cold_start_s
        return self.services[i].cold_start_s if c is None else c

    def run(self, policy: ScalingPolicy[Any], progress: Callable[[float], None] | None = None) -> SimResult:
        wall0 = time.perf_counter()
        services = self.services
        n = len(services)
        n_req = int(self.arrival_s.shape[0])
        arr: list[float] = self.arrival_s.tolist()
        sz: list[float] = self.size.tolist()
        order: list[int] = self.order.tolist()
        seg: list[int] = self.seg.tolist()
        warm = self.config.warmup_s
        hindsight = policy.hindsight
        lat = np.full(n_req, np.nan)
        lat_list: list[float] = lat.tolist()

        models: list[_Model | LlmModel] = []
        is_llm = [s.llm is not None for s in services]
        ttft_list: list[float] = []
        rejected_list: list[int] = []
        slo_lists: tuple[list[float], list[float]] | None = None
        if any(is_llm):
            assert self.prompt_tokens is not None and self.output_tokens is not None
            prompt_l: list[float] = self.prompt_tokens.tolist()
            output_l: list[float] = np.maximum(self.output_tokens, 1.0).tolist()
            ttft_list = [math.nan] * n_req
            rejected_list = [0] * n_req
            # per-request objectives (the miss counter's, as request_met scores them), each model's own
            ttft_slo = np.full(n_req, np.inf)
            tpot_slo = np.full(n_req, np.inf)
            for i, s in enumerate(services):
                if s.llm is not None:
                    j = self.order[seg[i] : seg[i + 1]]
                    ttft_slo[j] = s.llm.ttft_slo_s(self.prompt_tokens[j])
                    tpot_slo[j] = s.llm.tpot_slo_s(self.prompt_tokens[j])
            slo_lists = (ttft_slo.tolist(), tpot_slo.tolist())
        timeouts = [model_timeout(self.config, self.cold_start(i)) for i in range(n)]
        for i, s in enumerate(services):
            if s.llm is not None:
                models.append(
                    LlmModel(
                        seg[i],
                        seg[i + 1],
                        s.llm,
                        prompt_l,
                        output_l,
                        ttft_list,
                        rejected_list,
                        s.profile.max_batch,
                        slo_lists,
                    )
                )
                continue
            table: list[float] = s.profile.latency_table().tolist()
            models.append(_Model(seg[i], seg[i + 1], table, s.profile.max_batch, s.profile.slo_s, timeouts[i]))

        # Vectorised counters (index = model).
        arrivals = np.zeros(n)
        busy = np.zeros(n)
        ready_s = np.zeros(n)
        inflight = np.zeros(n)
        outstanding = np.zeros(n, np.int64)
        held = np.zeros(n, np.int64)
        ready = np.zeros(n, np.int64)
        gpu_s = np.zeros(n)

        pool = GpuPool()
        milli = [to_milli(s.profile.gpu_fraction) for s in services]
        releases: list[tuple[float, int, int]] = []  # (time, gpu, milli) of draining replicas
        gpus_held_s = 0.0
        initial, state = policy.init(services)
        for i in np.nonzero(initial)[0].tolist():
            reps = _replicas(models[i])
            for _ in range(int(initial[i])):
                reps.add(0.0, 0.0, pool.place(milli[i]))  # the run starts from a warm, already deployed state
        held[:] = initial
        ready[:] = initial
        # Mirrors for the vectorised path: a model is "single" when it has exactly one replica, ready, no queue
        # and nothing draining; free0 is when that replica's last batch ends. What the vectorised path served is
        # applied to the per-model objects lazily (pend_cnt, pend_sum; see _sync).
        single = (initial == 1) & ~np.array(is_llm, dtype=bool)
        free0 = np.zeros(n)
        l1 = np.array([m.table[1] for m in models])
        # a model whose lone request misses its SLO even when served at once is left to the per-request path
        single_ok = np.array([isinstance(m, _Model) and m.table[1] <= m.slo for m in models], dtype=np.bool_)
        vec_min = self.config.vector_min_requests
        lat_vec = np.full(n_req, np.nan)
        pend_cnt = np.zeros(n, np.int64)
        pend_sum = np.zeros(n)

        tick = policy.tick_s
        duration = self.duration_s
        n_ticks = max(1, math.ceil(duration / tick - 1e-9))
        tick_times = np.arange(n_ticks, dtype=np.float64) * tick
        # Index of the first request after each tick (requests at exactly a tick time belong to it).
        cut = np.searchsorted(self.arrival_s, tick_times, side="right").tolist()
        model_list: list[int] = self.model.tolist()
        # LLM token counters (Signals.prompt_tokens/output_tokens/finished): prompt tokens counted on arrival,
        # output tokens and requests when a request finishes
        llm_idx = [i for i in range(n) if is_llm[i]]
        llm_models = [m for m in models if isinstance(m, LlmModel)]
        prompt_ctr = np.zeros(n) if llm_idx else None
        llm_prompt = None
        if prompt_ctr is not None:
            assert self.prompt_tokens is not None
            llm_prompt = np.where(np.array(is_llm, dtype=bool)[self.model], self.prompt_tokens, 0.0)

        # Between two events of a model its counters grow linearly: busy at the number of running batches,
        # concurrency-seconds at the number outstanding, ready-seconds at the ready count. So only models with
        # an event due (next_event <= now) or with arrivals are advanced; the rest move by one vector update.
        running = np.zeros(n, np.int64)
        next_event = np.full(n, INF)
        scale_events = 0
        cold_starts = 0
        decisions_log: list[tuple[float, int, int]] = []
        rec_t = tick_times
        rec_rep = np.zeros(n_ticks, np.int64)
        rec_ready = np.zeros(n_ticks, np.int64)
        rec_gpu = np.zeros(n_ticks)
        prev_t = 0.0
        prev_cut = 0
        report_every = max(1, n_ticks // 200)
        frac = self.gpu_fraction.copy()  # per run: spec moves change it
        # spec moves: the running spec per model (index into its specs, -1 when not one of them) and the rollouts
        # under way: model -> (spec, start, ready at, gpu, milli, fraction)
        movable = any(len(s.specs) > 1 for s in services)
        spec_now = np.array([spec_index(s) for s in services], np.int64)
        cap = np.array([s.profile.capacity_rps for s in services])
        rollouts: dict[int, tuple[int, float, float, int, int, float]] = {}

        def switch(i: int, k: int) -> None:
            p = services[i].specs[k]
            m = models[i]
            assert isinstance(m, _Model)
            table: list[float] = p.latency_table().tolist()
            m.table, m.l1, m.max_batch, m.slo = table, table[1], p.max_batch, p.slo_s
            l1[i] = table[1]
            single_ok[i] = table[1] <= p.slo_s
            frac[i] = p.gpu_fraction
            milli[i] = to_milli(p.gpu_fraction)
            cap[i] = p.capacity_rps
            spec_now[i] = k

        advance = _advance
        vec = _VectorPath(
            models,
            self.model,
            self.arrival_s,
            self.size,
            l1,
            single,
            free0,
            next_event,
            arrivals,
            busy,
            inflight,
            outstanding,
            running,
            lat_vec,
            pend_cnt,
            pend_sum,
            single_ok,
        )
        for k in range(n_ticks):
            now = float(tick_times[k])
            dt = now - prev_t
            if dt > 0:
                ready_s += ready * dt
                gpu_s += held * frac * _after(prev_t, now, warm)
                gpus_held_s += _held_until(pool, releases, prev_t, now, warm)
                busy += running * dt
                inflight += outstanding * dt
            lo, hi = prev_cut, cut[k]
            prev_cut = hi
            # busy tick intervals go through the vectorised path first; what it cannot serve goes per request
            touched = vec.step(lo, hi, prev_t, now) if hi - lo >= max(vec_min, 1) else set(model_list[lo:hi])
            touched.update(np.flatnonzero(next_event <= now).tolist())
            if touched:
                idx_l = list(touched)
                idx = np.array(idx_l, dtype=np.int64)
                for i in idx[pend_cnt[idx] > 0].tolist():
                    vec.sync(i)
                res = np.array(
                    [
                        _advance_any(models[i], prev_t, now, arr, sz, order, lat_list, timeouts[i], advance)
                        for i in idx_l
                    ],
                    dtype=np.float64,
                )
                arrivals[idx] = res[:, 0]
                busy[idx] = res[:, 1]
                inflight[idx] = res[:, 2]
                outstanding[idx] = res[:, 3]
                running[idx] = res[:, 4]
                next_event[idx] = res[:, 5]
                # exact ready-seconds for the interval replace the linear estimate added above
                ready_s[idx] += res[:, 7] - ready[idx] * dt
                ready[idx] = res[:, 6]
                single[idx] = res[:, 8] != 0.0
                free0[idx] = res[:, 9]

            # rollouts whose new replica is ready take over while the old one is idle
            for i in sorted(rollouts):
                k_new, start, ready_at, g_new, mi_new, f_new = rollouts[i]
                m = models[i]
                if ready_at > now:
                    continue
                if pend_cnt[i]:
                    vec.sync(i)
                reps = _replicas(m)
                if len(reps) != 1 or reps.free[0] > now or reps.draining:
                    continue
                del rollouts[i]
                gpu_s[i] += f_new * _after(start, now, warm)
                reps.remove_one(now)
                pool.release(reps.last_removed_gpu, milli[i])
                switch(i, k_new)
                reps.add(now, 0.0, g_new)
                ready[i] = reps.ready_count(now)
                next_event[i] = _next_event(m, now, arr, timeouts[i])
                single[i], free0[i] = _single(m, now)

            finished_ctr = output_ctr = by_output = missed_ctr = None
            if prompt_ctr is not None and llm_prompt is not None:
                if hi > lo:
                    np.add.at(prompt_ctr, self.model[lo:hi], llm_prompt[lo:hi])
                finished_ctr = np.zeros(n)
                output_ctr = np.zeros(n)
                finished_ctr[llm_idx] = [m.finished for m in llm_models]
                output_ctr[llm_idx] = [m.finished_out for m in llm_models]
                by_output = np.zeros((n, len(OUTPUT_TOKEN_BUCKETS)))
                by_output[llm_idx] = np.cumsum([m.out_hist for m in llm_models], axis=1)
                missed_ctr = np.zeros(n)
                missed_ctr[llm_idx] = [m.missed for m in llm_models]
            signals = Signals(
                now,
                held.copy(),
                ready.copy(),
                arrivals.copy(),
                busy.copy(),
                ready_s.copy(),
                inflight.copy(),
                outstanding.copy(),
                prompt_tokens=None if prompt_ctr is None else prompt_ctr.copy(),
                output_tokens=output_ctr,
                finished=finished_ctr,
                finished_by_output=by_output,
                slo_missed=missed_ctr,
                capacity_rps=cap.copy() if movable else None,
            )
            decisions, state = policy.decide(signals, state)
            target = decisions.replicas
            changed = np.flatnonzero(target != held).tolist()
            for i in changed:
                m = models[i]
                if pend_cnt[i]:
                    vec.sync(i)
                reps = _replicas(m)
                want = int(target[i])
                cold = 0.0 if hindsight else self.cold_start(i)
                if self.config.record_decisions:
                    decisions_log.append((now, i, want))
                if now >= warm:
                    scale_events += 1
                while len(reps) < want:
                    reps.add(now, cold, pool.place(milli[i]))
                    if cold > 0 and now >= warm:
                        cold_starts += 1
                while len(reps) > want:
                    release = reps.remove_one(now)
                    if release > now:
                        gpu_s[i] += _after(now, min(release, duration), warm) * frac[i]
                        heappush(releases, (release, reps.last_removed_gpu, milli[i]))
                    else:
                        pool.release(reps.last_removed_gpu, milli[i])
                held[i] = want
                ready[i] = reps.ready_count(now)
                next_event[i] = _next_event(m, now, arr, timeouts[i])
                single[i], free0[i] = _single(m, now)
            if decisions.spec is not None and movable:
                want_spec = decisions.spec
                for i in sorted(rollouts):
                    if held[i] != 1 or want_spec[i] != rollouts[i][0]:
                        _, start, _, g_new, mi_new, f_new = rollouts.pop(i)
                        gpu_s[i] += f_new * _after(start, now, warm)
                        pool.release(g_new, mi_new)
                for i in np.flatnonzero((want_spec >= 0) & (want_spec != spec_now)).tolist():
                    k_new = int(want_spec[i])
                    if i in rollouts or not isinstance(models[i], _Model) or k_new >= len(services[i].specs):
                        continue
                    if held[i] == 0:
                        switch(i, k_new)
                    elif held[i] == 1:
                        p_new = services[i].specs[k_new]
                        mi_new = to_milli(p_new.gpu_fraction)
                        cold = 0.0 if hindsight else self.cold_start(i)
                        rollouts[i] = (k_new, now, now + cold, pool.place(mi_new), mi_new, p_new.gpu_fraction)
                        if cold > 0 and now >= warm:
                            cold_starts += 1
            rec_rep[k] = held.sum()
            rec_ready[k] = ready.sum()
            rec_gpu[k] = float(held @ frac)
            prev_t = now
            if progress is not None and k % report_every == 0:
                progress(k / n_ticks)

        # Last interval: GPU held until the end of the trace; then serve or drop everything left.
        if duration > prev_t:
            gpu_s += held * frac * _after(prev_t, duration, warm)
            gpus_held_s += _held_until(pool, releases, prev_t, duration, warm)
        for i, (_, start, _, _, _, f_new) in rollouts.items():  # surge replicas still starting at the end
            gpu_s[i] += f_new * _after(start, duration, warm)
        for i in np.flatnonzero(pend_cnt).tolist():
            vec.sync(i)
        for i in range(n):
            m = models[i]
            if m.ptr < m.end or m.q or m.llm:
                _advance_any(m, prev_t, INF, arr, sz, order, lat_list, timeouts[i], advance)
        if progress is not None:
            progress(1.0)

        lat = np.array(lat_list, dtype=np.float64)
        lat = np.where(np.isnan(lat), lat_vec, lat)
        dropped = np.isnan(lat)
        slo_per_req = np.array([s.profile.slo_s for s in services])[self.model] * self.size
        met = ~dropped & (np.nan_to_num(lat, nan=INF) <= slo_per_req + 1e-12)
        ttft = rejected = None
        if any(is_llm):
            ttft = np.array(ttft_list, dtype=np.float64)
            rejected = np.array(rejected_list, dtype=bool)
            assert self.prompt_tokens is not None and self.output_tokens is not None
            for i, s in enumerate(services):
                if s.llm is not None:
                    j = self.order[seg[i] : seg[i + 1]]
                    out_tok = np.maximum(self.output_tokens[j], 1.0)
                    met[j] = request_met(s.llm, self.prompt_tokens[j], out_tok, lat[j], ttft[j])[1]
        return SimResult(
            policy=policy.name,
            latency_s=lat,
            dropped=dropped,
            met=met,
            gpu_s=gpu_s,
            gpus_held_s=gpus_held_s,
            scale_events=scale_events,
            cold_starts=cold_starts,
            tick_t=rec_t,
            tick_replicas=rec_rep,
            tick_ready=rec_ready,
            tick_gpu=rec_gpu,
            decisions=decisions_log,
            wall_s=time.perf_counter() - wall0,
            scored=self.arrival_s >= warm if warm > 0 else None,
            ttft_s=ttft,
            rejected=rejected,
            final_state=state,
            final_replicas=held.copy(),
        )


def _replicas(m: _Model | LlmModel) -> Any:
    """The replica set the tick loop scales: ``cluster.Replicas`` or the LLM model itself (same methods)."""
    return m if isinstance(m, LlmModel) else m.reps


def _advance_any(
    m: _Model | LlmModel,
    prev: float,
    until: float,
    arr: list[float],
    sz: list[float],
    order: list[int],
    lat: list[float],
    timeout: float,
    advance: Callable[..., tuple[float, float, float, int, int, float, int, float, bool, float]],
) -> tuple[float, float, float, int, int, float, int, float, bool, float]:
    if isinstance(m, LlmModel):
        return m.advance(prev, until, arr, order, lat, timeout)
    return advance(m, prev, until, arr, sz, order, lat)  # a _Model carries its own time-out


def _advance(
    m: _Model,
    prev: float,
    until: float,
    arr: list[float],
    sz: list[float],
    order: list[int],
    lat: list[float],
) -> tuple[float, float, float, int, int, float, int, float, bool, float]:
    """Process the model's arrivals, batch starts and time-outs up to and including ``until``; return the exact
    counters at ``until`` and the model's next event.

    Returns (arrivals, busy_s, inflight_s, outstanding, running batches, time of the next event: a batch end,
    a cold-start end or a time-out, INF if none; ready replicas, ready-replica-seconds over [prev, until]; the
    "single" flag and free time of :func:`_single`). The replica set is the one since ``prev`` (it changes only
    at ticks). With ``until`` = INF (the final drain) the counters are meaningless.

    The hot loop of the simulator: attribute reads and writes are hoisted into locals.
    """
    q = m.q
    reps = m.reps
    free = reps.free
    rdy = reps.ready
    nb = reps.batch
    ends = reps.ends
    ptr = m.ptr
    end = m.end
    nxt = order[ptr] if ptr < end else -1
    na = arr[nxt] if nxt >= 0 else INF
    table = m.table
    maxb = m.max_batch
    timeout = m.timeout
    l1 = m.l1
    slo = m.slo
    q_sum_a = m.q_sum_a
    arrived = m.arrived
    busy_started = m.busy_started
    inflight_started = m.inflight_started
    while True:
        if q:
            k = len(free)
            if k == 1:
                s = 0
                f = free[0]
                r = rdy[0]
                st = f if f > r else r
            elif k == 0:
                s = -1
                st = INF
            else:
                heap = reps.heap if reps.heap_ok else reps.rebuild_heap()
                st, s = heap[0]
            head = q[0]
            a0 = arr[head]
            if a0 > st:
                st = a0
            if nxt >= 0 and na <= st:
                if na > until:
                    break
                q.append(nxt)
                q_sum_a += na
                arrived += 1
                ptr += 1
                nxt = order[ptr] if ptr < end else -1
                na = arr[nxt] if nxt >= 0 else INF
                continue
            if s < 0 or st > until:
                break
            # Drop requests whose wait ran out before this batch could start.
            if a0 + timeout < st:
                q.popleft()
                q_sum_a -= a0
                inflight_started += timeout
                continue
            # Drop the head when it can no longer meet its SLO even alone (it would only delay the others).
            s0 = sz[head]
            if st + l1 * s0 - a0 > slo * s0:
                q.popleft()
                q_sum_a -= a0
                inflight_started += st - a0
                continue
            b = len(q)
            ends_s: tuple[float, ...] | None = None
            if b == 1:
                q.popleft()
                dur = table[1] * s0
                done = st + dur
                lat[head] = done - a0
                q_sum_a -= a0
                inflight_started += done - a0
            else:
                if b > maxb:
                    b = maxb
                batch = [q.popleft() for _ in range(b)]
                sizes = [sz[j] for j in batch]
                if max(sizes) != s0 or min(sizes) != s0:
                    # requests behind the head may be hopeless (smaller ones): drop them, fill up from the queue
                    batch, sizes, dropped_a = _keep_feasible(batch, sizes, q, arr, sz, st, l1, slo, maxb)
                    if dropped_a:
                        q_sum_a -= dropped_a[0]
                        inflight_started += dropped_a[1]
                    b = len(batch)
                smax = max(sizes)
                lb = table[b]
                dur = lb * smax
                done = st + dur
                tot = 0.0
                if min(sizes) == smax:
                    for j in batch:
                        a = arr[j]
                        lat[j] = done - a
                        tot += a
                    q_sum_a -= tot
                    inflight_started += b * done - tot
                else:
                    # each request leaves when its own work is done
                    ends_l = []
                    for j, sj in zip(batch, sizes, strict=True):
                        a = arr[j]
                        c = st + lb * sj
                        lat[j] = c - a
                        tot += c - a
                        q_sum_a -= a
                        ends_l.append(c)
                    inflight_started += tot
                    ends_s = tuple(ends_l)
            free[s] = done
            nb[s] = b
            ends[s] = ends_s
            busy_started += dur
            if k > 1:
                heapreplace(heap, (done, s))
        else:
            if nxt < 0 or na > until:
                break
            q.append(nxt)
            q_sum_a += na
            arrived += 1
            ptr += 1
            nxt = order[ptr] if ptr < end else -1
            na = arr[nxt] if nxt >= 0 else INF
    # Time-outs up to ``until`` (FIFO: the oldest are at the head).
    while q:
        a0 = arr[q[0]]
        if a0 + timeout >= until:
            break
        q.popleft()
        q_sum_a -= a0
        inflight_started += timeout
    m.ptr = ptr
    m.q_sum_a = q_sum_a
    m.arrived = arrived
    m.busy_started = busy_started
    m.inflight_started = inflight_started
    if until == INF:
        return float(arrived), busy_started, inflight_started, 0, 0, INF, 0, 0.0, False, 0.0

    now = until
    busy = busy_started
    out = len(q)
    inflight = inflight_started + out * now - q_sum_a if out else inflight_started
    running = 0
    next_t = arr[q[0]] + timeout if out else INF
    for i in range(len(free)):
        f = free[i]
        if f > now and nb[i] > 0:
            busy -= f - now
            running += 1
            if f < next_t:
                next_t = f
            e = ends[i]
            if e is None:
                inflight -= nb[i] * (f - now)
                out += nb[i]
            else:
                for c in e:
                    if c > now:
                        inflight -= c - now
                        out += 1
                        if c < next_t:
                            next_t = c
    n_ready = 0
    ready_s = 0.0
    for r in rdy:
        if r <= now:
            n_ready += 1
            ready_s += now - (r if r > prev else prev)
        elif r < next_t:
            next_t = r
    if reps.draining:
        keep = []
        for f, b, e in reps.draining:
            if f > now:
                busy -= f - now
                running += 1
                keep.append((f, b, e))
                if f < next_t:
                    next_t = f
                if e is None:
                    inflight -= b * (f - now)
                    out += b
                else:
                    for c in e:
                        if c > now:
                            inflight -= c - now
                            out += 1
                            if c < next_t:
                                next_t = c
        reps.draining = keep
    single, free_0 = _single(m, now)
    return float(arrived), busy, inflight, out, running, next_t, n_ready, ready_s, single, free_0


def _keep_feasible(
    batch: list[int],
    sizes: list[float],
    q: deque[int],
    arr: list[float],
    sz: list[float],
    st: float,
    l1: float,
    slo: float,
    maxb: int,
) -> tuple[list[int], list[float], tuple[float, float] | None]:
    """The batch taken at ``st`` without the requests that can no longer meet their SLO, refilled from the head of
    the queue in FIFO order; also (sum of the dropped requests' arrivals, their summed waits), None if none."""
    keep: list[int] = []
    keep_s: list[float] = []
    sum_a = 0.0
    waited = 0.0
    dropped = False
    pending = deque(batch)
    while len(keep) < maxb and (pending or q):
        j = pending.popleft() if pending else q.popleft()
        s = sz[j]
        a = arr[j]
        if st + l1 * s - a > slo * s:
            sum_a += a
            waited += st - a
            dropped = True
        else:
            keep.append(j)
            keep_s.append(s)
    return keep, keep_s, (sum_a, waited) if dropped else None


def _after(t0: float, t1: float, warm: float) -> float:
    """Length of ``[t0, t1)`` after the warm-up ends (``t1 - t0`` when there is none)."""
    return t1 - t0 if warm <= t0 else max(0.0, t1 - warm)


def _held_until(pool: GpuPool, releases: list[tuple[float, int, int]], t0: float, t1: float, warm: float) -> float:
    """GPU-seconds of whole GPUs held over ``[t0, t1)`` (after the warm-up), releasing the shares of draining
    replicas whose batches end in it as they end."""
    held_s = 0.0
    t = t0
    while releases and releases[0][0] <= t1:
        t_rel, g, mi = heappop(releases)
        held_s += pool.used * _after(t, t_rel, warm)
        t = t_rel
        pool.release(g, mi)
    return held_s + pool.used * _after(t, t1, warm)


def _next_event(m: _Model | LlmModel, now: float, arr: list[float], timeout: float) -> float:
    """After a scale change at ``now``: when the model must be looked at again."""
    if isinstance(m, LlmModel):
        return m.next_event(now, timeout)
    reps = m.reps
    timeout = m.timeout
    nxt = INF
    if m.q:
        s = reps.earliest()
        if s >= 0:
            f = reps.free[s]
            r = reps.ready[s]
            nxt = max(f if f > r else r, now)
        nxt = min(nxt, arr[m.q[0]] + timeout)
    for f in reps.free:
        if now < f < nxt:
            nxt = f
    for e in reps.ends:
        if e is not None:
            for c in e:
                if now < c < nxt:
                    nxt = c
    for r in reps.ready:
        if now < r < nxt:
            nxt = r
    for f, _, e in reps.draining:
        if now < f < nxt:
            nxt = f
        for c in e or ():
            if now < c < nxt:
                nxt = c
    return nxt


def spec_index(s: ServiceConfig) -> int:
    """Index of the service's running profile among its ``specs`` (-1 when it is not one of them)."""
    for k, p in enumerate(s.specs):
        if p == s.profile:
            return k
    return -1


def _single(m: _Model | LlmModel, now: float) -> tuple[bool, float]:
    """(exactly one replica, ready by ``now``, no queue, nothing draining; when its last batch ends)."""
    if isinstance(m, LlmModel):
        return False, 0.0
    reps = m.reps
    if len(reps.free) != 1 or m.q or reps.draining or reps.ready[0] > now:
        return False, 0.0
    return True, reps.free[0]


class _VectorPath:
    """Serves, with numpy, the arrivals of models that never queue in a tick interval.

    A model qualifies when it is "single" (one ready replica, no queue, nothing draining), idle since before the
    interval with no event due, and each of its requests arrives no earlier than the previous one finished: then
    every request runs alone, at once, for ``L(1) × size`` — exactly what the per-request loop computes. The
    engine's counter arrays are updated in place; the per-model objects catch up in :meth:`sync`.
    """

    def __init__(
        self,
        models: list[_Model | LlmModel],
        model_arr: IntArray,
        arrival_arr: FloatArray,
        size_arr: FloatArray,
        l1: FloatArray,
        single: Any,
        free0: FloatArray,
        next_event: FloatArray,
        arrivals: FloatArray,
        busy: FloatArray,
        inflight: FloatArray,
        outstanding: IntArray,
        running: IntArray,
        lat_vec: FloatArray,
        pend_cnt: IntArray,
        pend_sum: FloatArray,
        single_ok: Any,
    ) -> None:
        self.models = models
        self.single_ok = single_ok
        self.model_arr = model_arr
        self.arrival_arr = arrival_arr
        self.size_arr = size_arr
        self.l1 = l1
        self.single = single
        self.free0 = free0
        self.next_event = next_event
        self.arrivals = arrivals
        self.busy = busy
        self.inflight = inflight
        self.outstanding = outstanding
        self.running = running
        self.lat_vec = lat_vec
        self.pend_cnt = pend_cnt
        self.pend_sum = pend_sum

    def step(self, lo: int, hi: int, prev: float, now: float) -> set[int]:
        """Serve what qualifies among arrivals ``lo:hi``; return the models left to the per-request path."""
        mj = self.model_arr[lo:hi]
        o = np.argsort(mj, kind="stable")
        mo = mj[o]
        ao = self.arrival_arr[lo:hi][o]
        lat_o = self.l1[mo] * self.size_arr[lo:hi][o]
        done = ao + lat_o
        new_group = np.empty(mo.shape[0], dtype=bool)
        new_group[0] = True
        np.not_equal(mo[1:], mo[:-1], out=new_group[1:])
        ok = self.single[mo] & self.single_ok[mo] & (self.free0[mo] <= prev) & (self.next_event[mo] > now)
        ok[1:] &= new_group[1:] | (ao[1:] >= done[:-1])
        starts = np.flatnonzero(new_group)
        group_ok = np.logical_and.reduceat(ok, starts)
        models_in = mo[starts]
        bad = set(models_in[~group_ok].tolist())
        if not group_ok.any():
            return bad
        good = models_in[group_ok]
        ends = np.append(starts[1:], mo.shape[0])
        cnt = (ends - starts)[group_ok]
        sums = np.add.reduceat(lat_o, starts)[group_ok]
        last_done = done[ends - 1][group_ok]
        tail = np.maximum(last_done - now, 0.0)
        self.arrivals[good] += cnt
        self.busy[good] += sums - tail
        self.inflight[good] += sums - tail
        still = last_done > now
        self.outstanding[good] = still
        self.running[good] = still
        self.next_event[good] = np.where(still, last_done, INF)
        self.free0[good] = last_done
        req_ok = np.repeat(group_ok, ends - starts)
        self.lat_vec[o[req_ok] + lo] = lat_o[req_ok]
        self.pend_cnt[good] += cnt
        self.pend_sum[good] += sums
        return bad

    def sync(self, i: int) -> None:
        """Apply to model ``i``'s object what this path served for it since the last sync."""
        m = self.models[i]
        assert isinstance(m, _Model)  # LLM models never take the vectorised path
        c = int(self.pend_cnt[i])
        total = float(self.pend_sum[i])
        m.ptr += c
        m.arrived += c
        m.busy_started += total
        m.inflight_started += total
        m.reps.free[0] = float(self.free0[i])
        m.reps.batch[0] = 1
        m.reps.ends[0] = None
        self.pend_cnt[i] = 0
        self.pend_sum[i] = 0.0
