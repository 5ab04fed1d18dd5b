"""The live-agent demo (``make demo-agent``): broker, agent, simulated cluster and a trace replay, on one machine.

It starts the bundled broker on a free loopback port, runs the agent against the simulated cluster while a real
trace is replayed ``--speed`` times faster than real time (agent, replayer and cluster share one sped-up clock, so
every policy window stays in trace time), shows a live table (model, demand, replicas, p99), stops by itself after
``--seconds`` (or on Ctrl-C) and leaves the audit log (one JSON decision record per line) in ``--out``.

The replayed slice starts ``--history`` hours into the trace. The agent does not start blank: the simulator first
replays those hours through the agent's own policy object, and the agent resumes from the state that leaves
(:meth:`DecisionCore.resume`; shadowscale only: HPA, KEDA and Knative start blank at the slice): the idle-gap
histograms a pre-warm plan needs take hours of traffic to fill, which an agent running since midnight would have.
The minute or so of trace time that the consumer group takes to form is not replayed. The table holds the
``--timers`` most regular functions of those hours (timer-like: the smallest spread of their idle gaps) and the
busiest others.

    python -m shadowscale.demo --seconds 60 --speed 30 --out out/demo-agent
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shadowscale.agent.broker import LocalBroker
from shadowscale.agent.clock import ScaledClock
from shadowscale.agent.config import AgentConfig, LogConfig, parse_config
from shadowscale.agent.core import DecisionCore
from shadowscale.agent.kafka import KafkaSink, KafkaSource, ensure_topics
from shadowscale.agent.logs import configure
from shadowscale.agent.loop import Agent
from shadowscale.agent.tasks import guarded
from shadowscale.policies.scaling import Resumable
from shadowscale.replay import Replayer
from shadowscale.simulators.actuator import SimulatedCluster
from shadowscale.simulators.engine import SimConfig
from shadowscale.simulators.run import engine_for
from shadowscale.simulators.traces import load_trace
from shadowscale.simulators.workload import Workload


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m shadowscale.demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--trace", default="azure-functions-2019", help="bundled trace or CSV (default azure-functions-2019)"
    )
    p.add_argument("--models", type=int, default=8, help="the N busiest models (default 8)")
    p.add_argument(
        "--policy",
        default="shadowscale",
        choices=("hpa", "keda", "kpa", "shadowscale"),
        help="policy (default shadowscale)",
    )
    p.add_argument("--speed", type=float, default=30.0, help="trace seconds per wall second (default 30)")
    p.add_argument("--seconds", type=float, default=60.0, help="stop after this many wall seconds (default 60)")
    p.add_argument("--cold-start", type=float, default=30.0, help="trace seconds before a new replica serves")
    p.add_argument(
        "--history",
        type=float,
        default=7.0,
        help="trace hours before the replayed slice that the policy learns from in the simulator first (default 7: "
        "the slice holds the morning rise; 0: the agent starts blank at the trace's start)",
    )
    p.add_argument(
        "--timers",
        type=int,
        default=4,
        help="of the --models, this many are the most regular (timer-like) functions of the history (default 4)",
    )
    p.add_argument("--out", type=Path, default=Path("out/demo-agent"), help="directory for audit.jsonl")
    p.add_argument("--quiet", action="store_true", help="no live table, only the summary")
    args = p.parse_args(argv)
    if not (args.speed > 0 and args.seconds > 0 and args.models >= 1 and args.cold_start >= 0):
        p.error("--speed, --seconds and --models must be positive, --cold-start >= 0")
    if not (0.0 <= args.history < 24.0) or args.history + slice_hours(args) > 24.0:
        p.error(f"--history must lie in [0, 24) with room for the slice of {slice_hours(args):.2f} trace hours")
    if not (0 <= args.timers <= args.models) or (args.timers and args.history <= 0.0):
        p.error("--timers must lie in [0, --models] and needs --history > 0 (timers are found in the history)")
    return args


TIMER_MIN_GAP_S = 120.0
"""An idle gap that counts towards a function's regularity: at least this long (a timer's period, not a burst)."""
TIMER_MIN_GAPS = 40
"""A timer-like function shows at least this many such gaps in the history (a 9-minute timer shows about 46 in 7 h)."""


def slice_hours(args: argparse.Namespace) -> float:
    """Trace hours the live part replays: the run at ``--speed`` plus room for the consumer group to form."""
    return float(args.seconds * args.speed / 3600.0 + 0.1)


def pick_models(workload: Workload, models: int, timers: int, history_s: float) -> list[int]:
    """``timers`` timer-like models (at least ``TIMER_MIN_GAPS`` idle gaps of ``TIMER_MIN_GAP_S`` or more before
    ``history_s``, the smallest coefficient of variation of those gaps first), then the busiest others, up to
    ``models`` (ties by name). Fewer timers when the history has fewer."""
    names = [s.model for s in workload.services]
    chosen: list[int] = []
    if timers:
        keep = workload.arrival_s < history_s
        t, m = workload.arrival_s[keep], workload.model[keep]
        order = np.lexsort((t, m))
        t, m = t[order], m[order]
        gap = np.diff(t)
        ok = (np.diff(m) == 0) & (gap >= TIMER_MIN_GAP_S)
        n = len(names)
        count = np.bincount(m[1:][ok], minlength=n).astype(np.float64)
        total = np.bincount(m[1:][ok], weights=gap[ok], minlength=n)
        square = np.bincount(m[1:][ok], weights=gap[ok] ** 2, minlength=n)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = total / count
            cv = np.sqrt(np.maximum(square / count - mean**2, 0.0)) / mean
        candidates = [i for i in range(n) if count[i] >= TIMER_MIN_GAPS]
        chosen = sorted(candidates, key=lambda i: (float(cv[i]), names[i]))[:timers]
    counts = workload.requests_per_model()
    busiest = sorted(range(len(names)), key=lambda i: (-int(counts[i]), names[i]))
    for i in busiest:
        if len(chosen) >= models:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def demo_config(workload: Workload, bootstrap: str, policy: str, audit: Path) -> AgentConfig:
    return parse_config(
        {
            "policy": policy,
            "agent_id": "demo-agent",
            "audit_file": str(audit),
            "audit_holds": False,
            "models": [
                {
                    "name": s.model,
                    "capacity_rps": round(s.profile.capacity_rps, 6),
                    "min_replicas": 0 if policy != "hpa" else 1,
                    "max_replicas": 50,
                    "gpu_fraction": s.profile.gpu_fraction,
                    "slo_ms": round(s.profile.slo_s * 1000.0, 6),
                    "cold_start_s": s.cold_start_s,
                }
                for s in workload.services
            ],
            "kafka": {
                "bootstrap": bootstrap,
                "group_id": f"demo-{time.time_ns()}",
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 1000,
                "partitions": 4,
            },
            "guards": {"scale_down_cooldown_s": 30.0},
            "http": {"enabled": False},
        }
    )


def table(agent: Agent, clock: ScaledClock, speed: float) -> Table:
    trace_s = max(0.0, clock.now())
    hh, rem = divmod(int(trace_s), 3600)
    mm, ss = divmod(rem, 60)
    c = agent.counts
    t = Table(
        title=f"shadowscale agent — {agent.core.policy.name} — trace time {hh:02d}:{mm:02d}:{ss:02d} (x{speed:g})",
        caption=f"events in {c.events_in:,} · dead-lettered {c.dead_lettered:,} · decisions {c.decisions:,} · "
        f"scale calls {c.scale_calls:,}",
    )
    for col in ("model", "demand (req/s)", "capacity (req/s)", "replicas (ready/asked)", "p99 (ms)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for row in agent.snapshot():
        cap = float(row["ready"]) * float(agent.core.capacity_rps[agent.core.windows.index[str(row["model"])]])
        demand = float(row["demand_rps"])
        style = "bold red" if demand > cap else ""
        t.add_row(
            str(row["model"]),
            f"{demand:,.1f}",
            f"{cap:,.1f}",
            f"{row['ready']}/{row['replicas']}",
            f"{float(row['p99_ms']):,.0f}",
            style=style,
        )
    return t


async def run_demo(args: argparse.Namespace, broker: LocalBroker) -> dict[str, Any]:
    history_s = args.history * 3600.0
    full = load_trace(args.trace, hours=min(24.0, args.history + slice_hours(args)), cold_start_s=args.cold_start)
    workload = full.select(pick_models(full, args.models, args.timers, history_s))
    args.out.mkdir(parents=True, exist_ok=True)
    audit = args.out / "audit.jsonl"
    audit.unlink(missing_ok=True)
    cfg = demo_config(workload, broker.bootstrap, args.policy, audit)
    t = cfg.kafka.topics
    await ensure_topics(cfg.kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], cfg.kafka.partitions)

    core = DecisionCore(cfg)
    services = [
        replace(s, min_replicas=m.min_replicas, max_replicas=m.max_replicas)
        for s, m in zip(workload.services, cfg.models, strict=True)
    ]
    workload = replace(workload, services=tuple(services))
    initial, _ = core.policy.init(services)
    learnt: dict[str, Any] = {}
    if history_s > 0.0 and isinstance(core.policy, Resumable):
        # the hours before the slice, through the agent's own policy object: the agent resumes where they end
        past = engine_for(workload.truncate(history_s), SimConfig()).run(core.policy)
        core.resume(past.final_state)
        assert past.final_replicas is not None
        initial = past.final_replicas
        learnt = {"history_hours": args.history, "history_requests": past.requests}
    elif history_s > 0.0:  # HPA, KEDA and Knative keep no long memory: they start blank at the slice
        learnt = {"history_hours": 0.0, "history_requests": 0}
    clock = ScaledClock(args.speed, start=history_s)
    cluster = SimulatedCluster(
        services, clock, initial={s.model: int(r) for s, r in zip(services, initial, strict=True)}
    )
    source = KafkaSource(cfg.kafka, [t.traffic, t.gpu])
    sink = KafkaSink(cfg.kafka)
    producer = KafkaSink(cfg.kafka, linger_ms=5)
    await source.start()
    await sink.start()
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    agent = Agent(cfg, source, cluster, sink, clock, core=core, audit_file=audit)
    console = Console()
    live_console = Console(quiet=args.quiet)
    try:
        agent_task = guarded(agent.run(stop), "decision-loop", stop)
        await asyncio.wait_for(source.assigned_event.wait(), 30)  # the consumer group has formed
        started = clock.now()  # trace time: the slice replays the trace from here on
        replayer = Replayer(workload.since(started), cluster, clock, start=started)

        async def send(batch: Sequence[tuple[bytes | None, bytes]]) -> None:
            await producer.write(t.traffic, batch)

        replay_task = guarded(_replay(replayer, send, stop), "replayer", stop)
        loop.call_later(args.seconds, stop.set)
        with Live(table(agent, clock, args.speed), console=live_console, refresh_per_second=4) as live:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
                live.update(table(agent, clock, args.speed))
        await asyncio.gather(agent_task, replay_task, return_exceptions=True)
    finally:
        stop.set()
        await producer.stop()
        await sink.stop()
        await source.stop()
    lines = audit.read_text().splitlines() if audit.exists() else []
    records = [json.loads(x) for x in lines]
    changes = sum(1 for r in records if r["target"] != r["current"])
    if args.quiet:
        console.print(table(agent, clock, args.speed))
    return {
        "trace_seconds": round(clock.now() - started, 1),
        "events_in": agent.counts.events_in,
        "dead_lettered": agent.counts.dead_lettered,
        "decisions": agent.counts.decisions,
        "scale_calls": len(cluster.calls),
        "audit_records": len(lines),
        "scale_changes_audited": changes,
        "applied": applied_kinds(records),
        **learnt,
        "audit_log": str(audit),
    }


def applied_kinds(records: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The applied scale changes of an audit log by kind: up, down, to zero, back from zero on a request, and
    pre-warms (from zero ahead of a predicted request, before it arrives)."""
    kinds = dict.fromkeys(("scale_up", "scale_down", "to_zero", "from_zero", "prewarm"), 0)
    for r in records:
        cur, tgt = int(r["current"]), int(r["target"])
        if not r.get("applied") or cur == tgt:
            continue
        if tgt == 0:
            kinds["to_zero"] += 1
        elif cur == 0:
            kinds["prewarm" if "pre-warm" in str(r.get("reason", "")) else "from_zero"] += 1
        else:
            kinds["scale_up" if tgt > cur else "scale_down"] += 1
    return kinds


async def _replay(replayer: Replayer, send: Any, stop: asyncio.Event) -> None:
    await replayer.run(send, stop)
    stop.set()  # the trace slice is over


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = (args.out / "agent.log").open("w", encoding="utf-8")
    configure(LogConfig(level="info", format="json"), log_file)
    broker = LocalBroker()
    broker.start()
    print(f"broker: tansu on {broker.bootstrap}", file=sys.stderr)
    try:
        summary = asyncio.run(run_demo(args, broker))
    except KeyboardInterrupt:
        return 130
    finally:
        broker.stop()
        log_file.close()
    print("\n" + json.dumps(summary, indent=2))
    print(f"audit log left in {summary['audit_log']}, agent log in {args.out / 'agent.log'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
