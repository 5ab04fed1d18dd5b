"""``shadowscale produce replay``: publish a trace as the traffic events its models' pods would send.

The composition root is the one place that may wire ``simulators`` (trace readers, the simulated cluster) to
``agent`` (event schema, Kafka producer), so the replayer lives here. For every window of ``window_s`` trace seconds
and every model it asks the :class:`~simulators.actuator.SimulatedCluster` what each pod saw
(:meth:`~simulators.actuator.SimulatedCluster.serve`) and publishes one ``shadowscale.traffic/v1`` event per pod,
keyed by model (so a model's events share a partition), stamped with the clock's time at the window's end.

Time: trace second ``t`` is played at clock time ``start + t / speed``. Against a wall clock (``produce replay``) a
speed-up compresses the trace, so rates are ``speed`` times the trace's; the demo instead runs agent, replayer and
cluster on one sped-up clock, so every rate and policy window stays in trace time. Standalone, the cluster keeps a
fixed number of pods per model (``--pods``): nothing scales it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from shadowscale.agent.config import AgentConfig
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode
from shadowscale.errors import UsageError
from shadowscale.policies.ports import Actuator, Clock
from shadowscale.simulators.actuator import SimulatedCluster
from shadowscale.simulators.workload import Workload

Send = Callable[[Sequence[tuple[bytes | None, bytes]]], Awaitable[None]]


def simulated_cluster(cfg: AgentConfig, clock: Clock) -> Actuator:
    """The agent's embedded default actuator: a simulated cluster of the configured models."""
    from shadowscale.agent.core import services_of

    services = [replace(s, cold_start_s=cfg.actuator.cold_start_s) for s in services_of(cfg)]
    return SimulatedCluster(services, clock)


@dataclass(slots=True)
class ReplayStats:
    windows: int = 0
    events: int = 0
    requests: int = 0
    wall_s: float = 0.0


class Replayer:
    """Turns a workload into per-pod traffic events, window by window, paced by ``clock``."""

    def __init__(
        self,
        workload: Workload,
        cluster: SimulatedCluster,
        clock: Clock,
        *,
        window_s: float = 1.0,
        speed: float = 1.0,
        start: float | None = None,
        namespace: str = "default",
    ) -> None:
        if not (window_s > 0 and speed > 0):
            raise ValueError("window_s and speed must be positive")
        self.workload = workload
        self.cluster = cluster
        self.clock = clock
        self.window_s = window_s
        self.speed = speed
        self.start = clock.now() if start is None else start
        self.namespace = namespace
        self.models = [s.model for s in workload.services]
        self.n_windows = max(1, math.ceil(workload.duration_s / window_s - 1e-9))
        edges = np.arange(self.n_windows + 1, dtype=np.float64) * window_s
        self._cut = np.searchsorted(workload.arrival_s, edges, side="left")
        self.stats = ReplayStats()

    def clock_time(self, trace_t: float) -> float:
        return self.start + trace_t / self.speed

    def window(self, k: int) -> list[tuple[bytes | None, bytes]]:
        """The events of trace window ``k`` (every model, every pod; idle pods too)."""
        lo, hi = int(self._cut[k]), int(self._cut[k + 1])
        n = len(self.models)
        idx = self.workload.model[lo:hi]
        counts = np.bincount(idx, minlength=n).tolist()
        work = np.bincount(idx, weights=self.workload.size[lo:hi], minlength=n).tolist()
        t_end = self.clock_time((k + 1) * self.window_s)
        w = self.window_s / self.speed
        out: list[tuple[bytes | None, bytes]] = []
        for i, model in enumerate(self.models):
            key = model.encode()
            for p in self.cluster.serve(model, int(counts[i]), float(work[i]), t_end, w):
                ev = TrafficEvent(
                    schema=TRAFFIC_V1,
                    model=model,
                    namespace=self.namespace,
                    pod=p.pod,
                    event_time=t_end,
                    window_s=w,
                    arrivals=p.arrivals,
                    completions=p.completions,
                    errors=p.errors,
                    latency_p50_ms=p.latency_p50_ms,
                    latency_p95_ms=p.latency_p95_ms,
                    latency_p99_ms=p.latency_p99_ms,
                    queue_depth=p.queue_depth,
                    batch_size_mean=p.batch_size_mean,
                    busy_s=p.busy_s,
                    ready_s=p.ready_s,
                    concurrency_s=p.concurrency_s,
                )
                out.append((key, encode(ev)))
        self.stats.windows += 1
        self.stats.events += len(out)
        self.stats.requests += hi - lo
        return out

    async def run(self, send: Send, stop: asyncio.Event) -> ReplayStats:
        """Publish every window at its clock time until the trace ends or ``stop`` is set."""
        t0 = time.perf_counter()
        for k in range(self.n_windows):
            due = self.clock_time((k + 1) * self.window_s)
            wait = self.clock.wall_timeout(due)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
            if stop.is_set():
                break
            await send(self.window(k))
        self.stats.wall_s = time.perf_counter() - t0
        return self.stats


# -- the CLI --------------------------------------------------------------------------------------------------------


def replay_main(args: argparse.Namespace) -> int:
    from shadowscale.agent.clock import WallClock
    from shadowscale.agent.config import parse_config
    from shadowscale.agent.kafka import KafkaSink, KafkaUnavailable, ensure_topics
    from shadowscale.simulators.traces import load_trace

    if not args.bootstrap.strip() or ":" not in args.bootstrap:
        raise UsageError(f"--bootstrap must be HOST:PORT, got {args.bootstrap!r}")
    workload = load_trace(args.trace, seed=args.seed, hours=args.hours, models=args.models)
    clock = WallClock()
    cluster = SimulatedCluster(workload.services, clock, initial={s.model: args.pods for s in workload.services})
    kafka = parse_config(
        {
            "models": [{"name": "replay", "capacity_rps": 1}],
            "kafka": {"bootstrap": args.bootstrap, "client_id": "shadowscale-replay"},
        }
    ).kafka

    async def main() -> ReplayStats:
        import signal

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        if args.create_topic:
            await ensure_topics(kafka, [args.topic], args.partitions)
        sink = KafkaSink(kafka, linger_ms=5)
        await sink.start(timeout_s=15)
        try:
            replayer = Replayer(workload, cluster, clock, window_s=args.window, speed=args.speed)

            async def send(batch: Sequence[tuple[bytes | None, bytes]]) -> None:
                await sink.write(args.topic, batch)

            return await replayer.run(send, stop)
        finally:
            await sink.stop()

    try:
        stats = asyncio.run(main())
    except KafkaUnavailable as e:
        print(f"shadowscale produce replay: {e}", file=sys.stderr)
        return 1
    print(
        f"published {stats.events:,} events ({stats.requests:,} requests, {stats.windows:,} windows of "
        f"{len(workload.services)} models) to {args.topic} in {stats.wall_s:.1f} s",
        file=sys.stderr,
    )
    return 0
