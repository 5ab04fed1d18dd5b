"""Running the agent: build the ports from the configuration, start every loop as a named guarded task, serve
``/metrics``, ``/healthz`` and ``/readyz``, and stop cleanly on SIGTERM or SIGINT (an ``asyncio.Event``).

The simulated actuator lives in ``simulators`` (which this package may not import): the composition root passes a
factory for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.clock import WallClock
from agent.config import AgentConfig, ConfigError, drift_settings
from agent.http import HttpServer, make_app
from agent.kafka import KafkaSink, KafkaSource, ensure_topics
from agent.logs import configure
from agent.loop import Agent
from agent.metrics import Metrics
from agent.profiling.book import ProfileBook
from agent.profiling.store import KafkaProfileStore
from agent.tasks import guarded
from policies.ports import Actuator, Clock
from policies.profiling.drift import Drift, RetrialSettings

log = structlog.get_logger("shadowscale.app")

ActuatorFactory = Callable[[AgentConfig, Clock], Actuator]


@dataclass
class Running:
    """What :func:`serve` started; ``agent`` and ``http_port`` are there for tests and the demo."""

    agent: Agent
    http_port: int | None = None
    leader: Any = None
    closers: list[Callable[[], Any]] = field(default_factory=list)


async def serve(
    cfg: AgentConfig,
    stop: asyncio.Event,
    *,
    simulated: ActuatorFactory | None = None,
    clock: Clock | None = None,
    actuator: Actuator | None = None,
    started: Callable[[Running], None] | None = None,
) -> int:
    """Run until ``stop`` is set (or a loop crashes: status 1). Returns the exit status."""
    clock = clock or WallClock()
    closers: list[Callable[[], Any]] = []
    api: Any = None
    try:
        if actuator is None:
            if cfg.actuator.kind == "simulated":
                if simulated is None:
                    raise ConfigError("actuator.kind simulated needs the simulated cluster (run it via `shadowscale`)")
                actuator = simulated(cfg, clock)
            else:
                from agent.kube import KubeActuator, api_client

                api = await api_client(cfg.actuator.kubernetes)
                closers.append(api.close)
                kube = KubeActuator(cfg.actuator.kubernetes, cfg.models, api)
                await kube.start()
                closers.append(kube.stop)
                actuator = kube
        if cfg.kafka.create_topics:
            t = cfg.kafka.topics
            await ensure_topics(cfg.kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], cfg.kafka.partitions)
        source = KafkaSource(cfg.kafka, [cfg.kafka.topics.traffic, cfg.kafka.topics.gpu])
        await source.start()
        closers.append(source.stop)
        sink = KafkaSink(cfg.kafka)
        await sink.start()
        closers.append(sink.stop)

        profiles = None
        if cfg.profiles.enabled:
            profiles = await open_profiles(cfg, closers)

        metrics = Metrics()
        leader = None
        if cfg.leader_election.enabled:
            from agent.kube import api_client
            from agent.leader import LeaderElector

            if api is None:
                api = await api_client(cfg.actuator.kubernetes)
                closers.append(api.close)
            leader = LeaderElector(
                cfg.leader_election, cfg.identity, api, on_change=lambda v: metrics.leader.set(1 if v else 0)
            )
        agent = Agent(
            cfg,
            source,
            actuator,
            sink,
            clock,
            metrics=metrics,
            audit_file=Path(cfg.audit_file) if cfg.audit_file else None,
            is_leader=leader.is_leader if leader is not None else None,
            profiles=profiles,
        )
        tasks: list[asyncio.Task[None]] = []
        if leader is not None:
            tasks.append(guarded(leader.run(stop), "leader-election", stop))
        if cfg.scheduler.enabled:
            from agent.kube import api_client
            from agent.scheduler import SecondaryScheduler

            if api is None:
                api = await api_client(cfg.actuator.kubernetes)
                closers.append(api.close)
            scheduler = SecondaryScheduler(
                cfg.scheduler,
                cfg.actuator.kubernetes,
                api,
                identity=cfg.identity,
                is_leader=leader.is_leader if leader is not None else None,
            )
            tasks.append(guarded(scheduler.run(stop), "placement-scheduler", stop))
        loop_task = guarded(agent.run(stop), "decision-loop", stop)
        tasks.append(loop_task)
        running = Running(agent, None, leader, closers)
        if cfg.http.enabled:
            server = HttpServer(make_app(agent, lambda: not loop_task.done()), cfg.http.host, cfg.http.port)
            running.http_port = await server.start()
            closers.append(server.stop)
        if started is not None:
            started(running)
        log.info(
            "agent started",
            identity=cfg.identity,
            policy=cfg.policy,
            models=len(cfg.models),
            actuator=cfg.actuator.kind,
            dry_run=cfg.dry_run,
            http_port=running.http_port,
        )
        await stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)
        crashed = [t.get_name() for t in tasks if not t.cancelled() and t.exception() is not None]
        log.info("agent stopped", crashed=crashed)
        return 1 if crashed else 0
    finally:
        for close in reversed(closers):
            try:
                await close()
            except Exception as e:  # keep closing the rest
                log.warning("error while stopping", error=f"{type(e).__name__}: {e}")


async def open_profiles(cfg: AgentConfig, closers: list[Callable[[], Any]]) -> ProfileBook:
    """The profile store on ``profiles.topic`` and the book loaded from it (``profiles.enabled``)."""
    p = cfg.profiles
    store = KafkaProfileStore(
        cfg.kafka, p.topic, partitions=p.partitions, create_topic=p.create_topic, load_timeout_s=p.load_timeout_s
    )
    await store.start()
    closers.append(store.stop)
    book = ProfileBook(
        [m.name for m in cfg.models],
        store,
        drift=Drift(drift_settings(p)),
        retrials=RetrialSettings(p.retrials.max_parallel, p.retrials.cooldown_s),
    )
    installed = await book.load()
    log.info("profile book ready", topic=p.topic, installed=installed, skipped=dict(store.skipped))
    return book


def run(cfg: AgentConfig, simulated: ActuatorFactory | None = None) -> int:
    """Blocking entry point of ``shadowscale agent``: logging, signal handlers, :func:`serve`."""
    configure(cfg.log)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        return await serve(cfg, stop, simulated=simulated)

    return asyncio.run(main())
