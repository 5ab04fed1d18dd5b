"""Per-model sliding windows built from traffic events: the counters and gauges a policy's :class:`Signals` need.

Each traffic event covers one pod's window ``(event_time - window_s, event_time]``. For every model the agent keeps

- **counters** (only ever grow): arrivals, completions, busy seconds, ready seconds and concurrency seconds, summed
  over every accepted event as it is ingested. A policy differences two samples, so a late event is counted in the
  interval it arrived in, as a Prometheus ``rate()`` over scraped counters would count it;
- **per-pod gauges** from each pod's newest window by *event time*: its arrival rate, its queue depth and its p99.
  An older window that arrives after a newer one adds to the counters but does not overwrite the gauges. The model's
  demand (req/s) and outstanding requests are the sums over pods heard from within ``pod_stale_s``.

Duplicates (the same pod and ``event_time``, as an at-least-once producer or a replayed partition delivers them)
are dropped. A pod remembers the event times it saw within ``dedupe_s`` of its newest window; an event older than
that is dropped as too late (it could not be told apart from a duplicate). Both are counted, neither is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agent.events import TrafficEvent
from policies.types import FloatArray, IntArray


class _Pod:
    __slots__ = ("active", "latest", "limit", "p99_ms", "queue", "rate", "seen")

    def __init__(self) -> None:
        self.latest = -1.0
        self.rate = 0.0
        self.queue = 0
        self.p99_ms = 0.0
        self.active = True
        """False once the pod went stale: its gauges left the sums; its duplicate memory stays a while."""
        self.seen: set[float] = set()
        self.limit = 64
        """Prune ``seen`` when it grows past this; then twice what is left (amortised O(1) per event)."""


@dataclass(slots=True)
class IngestStats:
    """What happened to the traffic events given to :meth:`Windows.add` (cumulative)."""

    accepted: int = 0
    duplicates: int = 0
    late: int = 0


class Windows:
    """Counters and per-pod gauges for a fixed list of models (index = position in ``models``)."""

    def __init__(self, models: list[str], *, pod_stale_s: float = 30.0, dedupe_s: float = 60.0) -> None:
        self.models = models
        self.index = {m: i for i, m in enumerate(models)}
        n = len(models)
        self._arrivals = [0.0] * n
        self._busy = [0.0] * n
        self._ready = [0.0] * n
        self._inflight = [0.0] * n
        self._completions = [0.0] * n
        """Not part of a policy's signals: drift detection's throughput (agent.profiling.book)."""
        self.pod_stale_s = pod_stale_s
        self.dedupe_s = dedupe_s
        self._pods: list[dict[str, _Pod]] = [{} for _ in range(n)]
        self._demand = [0.0] * n
        self._queue = [0] * n
        self.stats = IngestStats()

    def add(self, ev: TrafficEvent) -> int:
        """Add one event; return the model's index, or -1 when it was a duplicate, too late or for an unknown model."""
        touched = self.add_all((ev,))
        return touched[0] if touched else -1

    def add_all(self, events: Sequence[TrafficEvent]) -> list[int]:
        """Add events; return the indices of the models that took at least one (each once, in first-seen order).

        The hot path of ingestion: plain Python lists and slotted objects, attribute lookups hoisted; arrays are
        built only when a policy asks (:meth:`counters`).
        """
        index = self.index
        all_pods = self._pods
        arrivals, busy, ready, inflight = self._arrivals, self._busy, self._ready, self._inflight
        completions = self._completions
        demand, queue = self._demand, self._queue
        dedupe_s = self.dedupe_s
        stats = self.stats
        touched: dict[int, None] = {}
        dup = late = ok = 0
        for ev in events:
            i = index.get(ev.model, -1)
            if i < 0:
                continue
            pods = all_pods[i]
            pod = pods.get(ev.pod)
            if pod is None:
                pod = pods[ev.pod] = _Pod()
            t = ev.event_time
            seen = pod.seen
            if t in seen:
                dup += 1
                continue
            latest = pod.latest
            if t < latest - dedupe_s:
                late += 1
                continue
            seen.add(t)
            if len(seen) > pod.limit:
                cut = max(latest, t) - dedupe_s
                pod.seen = kept = {x for x in seen if x >= cut}
                pod.limit = max(64, 2 * len(kept))
            ok += 1
            window = ev.window_s
            arrivals[i] += ev.arrivals
            busy[i] += ev.busy_s
            r = ev.ready_s
            ready[i] += window if r is None else r
            inflight[i] += ev.concurrency_s
            completions[i] += ev.completions
            if t >= latest:
                rate = ev.arrivals / window
                demand[i] += rate - pod.rate
                queue[i] += ev.queue_depth - pod.queue
                pod.latest = t
                pod.active = True
                pod.rate = rate
                pod.queue = ev.queue_depth
                pod.p99_ms = ev.latency_p99_ms
            touched[i] = None
        stats.accepted += ok
        stats.duplicates += dup
        stats.late += late
        return list(touched)

    def expire(self, now: float) -> None:
        """Pods not heard from within ``pod_stale_s`` of ``now`` leave the gauge sums (demand, queue, p99, pod
        count); their duplicate memory is kept until ``dedupe_s`` has passed too, so a redelivered window of a pod
        that went quiet is still recognised."""
        stale_cut = now - self.pod_stale_s
        forget_cut = now - max(self.pod_stale_s, self.dedupe_s)
        for i, pods in enumerate(self._pods):
            gone = []
            active = 0
            for name, p in pods.items():
                if p.latest < stale_cut:
                    if p.active:
                        self._demand[i] -= p.rate
                        self._queue[i] -= p.queue
                        p.rate = 0.0
                        p.queue = 0
                        p.p99_ms = 0.0
                        p.active = False
                    if p.latest < forget_cut:
                        gone.append(name)
                else:
                    active += 1
            for name in gone:
                del pods[name]
            if not active:
                self._demand[i] = 0.0  # no float residue once the last pod is gone
                self._queue[i] = 0

    def counters(self) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """(arrivals, busy_s, ready_s, inflight_s) as arrays, index = model."""
        f = np.float64
        return (
            np.asarray(self._arrivals, f),
            np.asarray(self._busy, f),
            np.asarray(self._ready, f),
            np.asarray(self._inflight, f),
        )

    def completions(self) -> FloatArray:
        """Counter: requests completed, index = model."""
        return np.asarray(self._completions, np.float64)

    def demand(self, i: int) -> float:
        """Arrival rate (req/s) of model ``i``: the sum of its live pods' newest windows."""
        return max(self._demand[i], 0.0)

    def outstanding(self) -> IntArray:
        return np.maximum(np.asarray(self._queue, dtype=np.int64), 0)

    def demand_all(self) -> FloatArray:
        return np.maximum(np.asarray(self._demand, dtype=np.float64), 0.0)

    def p99_ms(self, i: int) -> float:
        """Worst p99 among model ``i``'s live pods' newest windows (0 when none)."""
        return max((p.p99_ms for p in self._pods[i].values()), default=0.0)

    def pods(self, i: int) -> int:
        return sum(1 for p in self._pods[i].values() if p.active)
