"""Running the agent: build the ports from the configuration, start every loop as a named guarded task, serve
``/metrics``, ``/healthz`` and ``/readyz``, and stop cleanly on SIGTERM or SIGINT (an ``asyncio.Event``).

The simulated actuator lives in ``simulators`` (which this package may not import): the composition root passes a
factory for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from shadowscale.agent.clock import WallClock
from shadowscale.agent.config import (
    AgentConfig,
    ConfigError,
    drift_settings,
    model_profiling,
    planner_settings,
    profiling_plans_raw,
    rollout_settings,
)
from shadowscale.agent.http import HttpServer, make_app
from shadowscale.agent.kafka import KafkaSink, KafkaSource, KafkaTail, KafkaUnavailable, ensure_topics
from shadowscale.agent.logs import configure
from shadowscale.agent.loop import Agent
from shadowscale.agent.metrics import Metrics
from shadowscale.agent.profiling.book import ProfileBook
from shadowscale.agent.profiling.store import KafkaProfileStore
from shadowscale.agent.tasks import guarded
from shadowscale.policies.ports import Actuator, Clock
from shadowscale.policies.profiling.drift import Drift, RetrialSettings

if TYPE_CHECKING:
    from shadowscale.agent.profiling.rollout_loop import RolloutLoop
    from shadowscale.agent.profiling.service import Annotations, ProfilingService
    from shadowscale.agent.profiling.shadow import ShadowTrialRunner, Workload
    from shadowscale.policies.profiling.ports import TrialRunner

log = structlog.get_logger("shadowscale.app")

ActuatorFactory = Callable[[AgentConfig, Clock], Actuator]
_Client = TypeVar("_Client", KafkaSource, KafkaSink)


@dataclass
class Running:
    """What :func:`serve` started; ``agent`` and ``http_port`` are there for tests and the demo."""

    agent: Agent
    http_port: int | None = None
    leader: Any = None
    closers: list[Callable[[], Any]] = field(default_factory=list)
    rollout: RolloutLoop | None = None


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
                from shadowscale.agent.kube import KubeActuator, api_client

                api = await api_client(cfg.actuator.kubernetes, cfg.identity)
                closers.append(api.close)
                kube = KubeActuator(cfg.actuator.kubernetes, cfg.models, api, identity=cfg.identity)
                await kube.start()
                closers.append(kube.stop)
                actuator = kube
        if cfg.kafka.create_topics:
            t = cfg.kafka.topics
            await ensure_topics(cfg.kafka, [t.traffic, t.gpu, t.decisions, t.dead_letter], cfg.kafka.partitions)
        # traffic through the consumer group (keyed by model: one owner each); GPU events (keyed by node) read by
        # every replica, so each sees every GPU
        source = await connect(lambda: KafkaSource(cfg.kafka, [cfg.kafka.topics.traffic]), "consumer", stop)
        closers.append(source.stop)
        sink = await connect(lambda: KafkaSink(cfg.kafka), "producer", stop)
        closers.append(sink.stop)

        profiles = None
        if cfg.profiles.enabled:
            profiles = await open_profiles(cfg, closers)

        metrics = Metrics()
        leader = None
        if cfg.leader_election.enabled:
            from shadowscale.agent.kube import api_client
            from shadowscale.agent.leader import LeaderElector

            if api is None:
                api = await api_client(cfg.actuator.kubernetes, cfg.identity)
                closers.append(api.close)
            leader = LeaderElector(
                cfg.leader_election, cfg.identity, api, on_change=lambda v: metrics.leader.set(1 if v else 0)
            )
        gpu_tail = await open_tail(
            cfg,
            cfg.kafka.topics.gpu,
            closers,
            "GPU events not read (the topic is missing?); utilization from pods only",
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
            gpu_source=gpu_tail,
        )
        tasks: list[asyncio.Task[None]] = []
        if leader is not None:
            tasks.append(guarded(leader.run(stop), "leader-election", stop))
        if profiles is not None and cfg.profiles.refresh_s > 0:
            tasks.append(
                guarded(profiles.refresh_every(cfg.profiles.refresh_s, stop), "profiles-refresh", stop, fatal=False)
            )
        rollout = None
        if cfg.rollout.enabled and profiles is not None:
            if api is None:
                from shadowscale.agent.kube import api_client

                api = await api_client(cfg.actuator.kubernetes, cfg.identity)
                closers.append(api.close)
            rollout = await open_rollout(
                cfg, profiles, api, clock, metrics, leader.is_leader if leader is not None else None, closers
            )
            tasks.append(guarded(rollout.run(stop), "rollout", stop))
        if cfg.profiling.enabled and profiles is not None:
            if cfg.profiling.runner == "shadow" and api is None:
                from shadowscale.agent.kube import api_client

                api = await api_client(cfg.actuator.kubernetes, cfg.identity)
                closers.append(api.close)
            windows = agent.core.windows
            service = await open_profiling(
                cfg,
                profiles,
                api,
                clock,
                metrics,
                leader.is_leader if leader is not None else None,
                closers,
                observed_gaps=lambda model: windows.recent_gaps(windows.index[model], clock.now()),
                rollout=rollout,
            )
            tasks.append(guarded(service.run(stop), "profiling", stop))
        if cfg.scheduler.enabled:
            from shadowscale.agent.kube import api_client
            from shadowscale.agent.scheduler import SecondaryScheduler

            if api is None:
                api = await api_client(cfg.actuator.kubernetes, cfg.identity)
                closers.append(api.close)
            scheduler = SecondaryScheduler(
                cfg.scheduler,
                cfg.actuator.kubernetes,
                api,
                identity=cfg.identity,
                is_leader=leader.is_leader if leader is not None else None,
                metrics=metrics,
            )
            tasks.append(guarded(scheduler.run(stop), "placement-scheduler", stop))
        loop_task = guarded(agent.run(stop), "decision-loop", stop)
        tasks.append(loop_task)
        running = Running(agent, None, leader, closers, rollout)
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


async def connect(make: Callable[[], _Client], what: str, stop: asyncio.Event, timeout_s: float = 120.0) -> _Client:
    """Start a Kafka client, retrying with back-off while the broker is away (it may be restarting as the agent
    starts): up to ``timeout_s``, then :class:`~agent.kafka.KafkaUnavailable` as before."""
    deadline = time.monotonic() + timeout_s
    delay = 0.5
    while True:
        c = make()
        try:
            await c.start(timeout_s=min(30.0, max(1.0, deadline - time.monotonic())))
            return c
        except KafkaUnavailable as e:
            if stop.is_set() or time.monotonic() + delay > deadline:
                raise
            log.warning("Kafka not reachable yet; will retry", client=what, delay_s=delay, error=str(e))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 5.0)


async def open_tail(
    cfg: AgentConfig, topic: str, closers: list[Callable[[], Any]], unavailable: str
) -> KafkaTail | None:
    """A started :class:`KafkaTail` of ``topic`` (its stop added to ``closers``), or None with the warning
    ``unavailable`` when the topic cannot be read: the feature reading it goes on without."""
    tail = KafkaTail(cfg.kafka, topic)
    try:
        await tail.start()
    except KafkaUnavailable as e:
        log.warning(unavailable, error=str(e))
        return None
    closers.append(tail.stop)
    return tail


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


async def open_profiling(
    cfg: AgentConfig,
    book: ProfileBook,
    api: Any,
    clock: Clock,
    metrics: Metrics,
    is_leader: Callable[[], bool] | None,
    closers: list[Callable[[], Any]],
    *,
    observed_gaps: Callable[[str], Sequence[float]] | None = None,
    rollout: RolloutLoop | None = None,
) -> ProfilingService:
    """The trial runner (``profiling.runner``) and the service that runs searches, hooked to the book's re-trials.

    The shadow runner is entered through :func:`~agent.profiling.live.shadow_profiling` (results consumer, start-up
    cleanup of orphaned shadows); the service is stopped before it, so searches cancelled at stop tear their
    shadows down while the Kubernetes client is still open."""
    from shadowscale.agent.profiling.driver import DriverSettings
    from shadowscale.agent.profiling.service import ModelPlan, ProfilingService, ServiceSettings

    p = cfg.profiling
    runner: TrialRunner
    if p.runner == "local":
        from shadowscale.agent.profiling.local import LocalSettings, LocalTrialRunner

        lc = p.local
        runner = LocalTrialRunner(
            LocalSettings(
                step_s=lc.step_s,
                start_rps=lc.start_rps,
                max_rps=lc.max_rps,
                bisect_steps=lc.bisect_steps,
                ready_timeout_s=lc.ready_timeout_s,
                server_args=lc.server_args,
            )
        )
        annotations: Annotations | None = None
    else:
        shadow = await _shadow_runner(cfg, api, closers, observed_gaps)
        runner, annotations = shadow, shadow.annotations
    st = ServiceSettings(
        max_trials=p.max_trials,
        gpu_share_cap=p.gpu_share_cap,
        driver=DriverSettings(
            max_parallel=p.max_parallel,
            trial_timeout_s=p.trial_timeout_s,
            gpu_share_dimension=p.gpu_share_dimension,
            gpu_share_unit=p.gpu_share_unit,
        ),
        planner=planner_settings(p),
        transfer=p.transfer,
        profile_missing=p.profile_missing,
        check_interval_s=p.check_interval_s,
        retry_after_s=cfg.profiles.retrials.cooldown_s,
    )
    plans = {m: ModelPlan(space, objective, raw) for m, (space, objective, raw) in profiling_plans_raw(cfg).items()}
    service = ProfilingService(
        book,
        runner,
        plans,
        clock,
        st,
        metrics=metrics,
        is_leader=is_leader,
        annotations=annotations,
        on_published=None if rollout is None else rollout.published,
        version=None if rollout is None else rollout.actuator.version,
    )
    book.on_retrial = service.on_retrial
    closers.append(service.stop)
    log.info("profiling ready", runner=p.runner, models=sorted(plans), max_trials=p.max_trials)
    return service


async def open_rollout(
    cfg: AgentConfig,
    book: ProfileBook,
    api: Any,
    clock: Clock,
    metrics: Metrics,
    is_leader: Callable[[], bool] | None,
    closers: list[Callable[[], Any]],
) -> RolloutLoop:
    """The rollout task (``rollout.enabled``): the controller over the models' Deployments, the traffic topic read
    without a group for the canaries' windows, Events on the workloads (``actuator.kubernetes.events``)."""
    from shadowscale.agent.kube import EventRecorder, Ref
    from shadowscale.agent.profiling.rollout import RolloutActuator, RolloutController
    from shadowscale.agent.profiling.rollout_loop import RolloutLoop

    r = cfg.rollout
    from shadowscale.agent.profiling.shadow import ShadowSettings

    # the spec is applied to the template as a shadow trial's is: the same GPU type label
    shadow = ShadowSettings(kafka_bootstrap="unused:0", gpu_type_label=cfg.profiling.shadow.gpu_type_label)
    actuator = RolloutActuator(api, model_workloads(cfg), shadow)
    controller = RolloutController(actuator, rollout_settings(cfg), on_running=book.set_running)
    traffic = await open_tail(
        cfg,
        cfg.kafka.topics.traffic,
        closers,
        "rollout: traffic topic unreadable; canaries will time out and roll back",
    )
    events = None
    if cfg.actuator.kubernetes.events:
        events = EventRecorder(api, cfg.identity, cfg.actuator.kubernetes.request_timeout_s)
        closers.append(events.close)

    def ref(wl: Workload, model: str) -> Ref:
        return Ref("deployments", wl.namespace, wl.deployment, model, 0, 0)

    loop = RolloutLoop(
        controller,
        actuator,
        book,
        clock,
        traffic=traffic,
        check_interval_s=r.check_interval_s,
        canary_window_s=r.canary_window_s,
        is_leader=is_leader,
        metrics=metrics,
        events=events,
        event_ref=ref,
    )
    log.info("rollout ready", dry_run=controller.settings.dry_run, models=sorted(actuator.workloads))
    return loop


def model_workloads(cfg: AgentConfig) -> dict[str, Workload]:
    """Each model's workload as ``profiling.models.<name>`` describes it (the Deployment, its container, knobs):
    what shadow trials clone and rollouts patch."""
    import msgspec

    from shadowscale.agent.profiling.loadgen import RequestShape
    from shadowscale.agent.profiling.shadow import Knob, Workload

    p = cfg.profiling
    workloads = {}
    for m in cfg.models:
        own = model_profiling(p, m.name)
        shape = None if own.shape is None else msgspec.convert(own.shape, RequestShape)
        try:
            knobs = {k: msgspec.convert(v, Knob) for k, v in own.knobs.items()}
        except (msgspec.ValidationError, ValueError) as e:
            raise ConfigError(f"profiling.models.{m.name}.knobs: {e}") from None
        workloads[m.name] = Workload(
            m.namespace, own.deployment or m.name, own.container, own.port, own.path, own.protocol, shape, knobs
        )
    return workloads


async def _shadow_runner(
    cfg: AgentConfig,
    api: Any,
    closers: list[Callable[[], Any]],
    observed_gaps: Callable[[str], Sequence[float]] | None = None,
) -> ShadowTrialRunner:
    import msgspec

    from shadowscale.agent.profiling.live import shadow_profiling
    from shadowscale.agent.profiling.loadgen import LoadPlan
    from shadowscale.agent.profiling.shadow import ShadowSettings

    p = cfg.profiling
    sh = p.shadow
    workloads = model_workloads(cfg)
    settings = ShadowSettings(
        ready_timeout_s=sh.ready_timeout_s,
        result_timeout_s=sh.result_timeout_s,
        poll_s=sh.poll_s,
        kafka_bootstrap=sh.kafka_bootstrap or cfg.kafka.bootstrap,
        results_topic=cfg.kafka.topics.trials,
        loadgen_image=sh.loadgen_image,
        loadgen_command=sh.loadgen_command,
        loadgen_args=sh.loadgen_args,
        loadgen_env=dict(sh.loadgen_env),
        load=LoadPlan(**msgspec.structs.asdict(sh.load)),
        gpu_type_label=sh.gpu_type_label,
        kafka_security_protocol=cfg.kafka.security_protocol,
        kafka_sasl_mechanism=cfg.kafka.sasl_mechanism,
        kafka_ca_secret=sh.kafka_ca_secret,
        kafka_sasl_secret=sh.kafka_sasl_secret,
    )
    stack = contextlib.AsyncExitStack()
    runner = await stack.enter_async_context(
        shadow_profiling(
            api,
            workloads,
            cfg.kafka,
            settings,
            create_topic=cfg.kafka.create_topics,
            partitions=cfg.kafka.partitions,
            observed_gaps=observed_gaps,
        )
    )
    closers.append(stack.aclose)
    return runner


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
