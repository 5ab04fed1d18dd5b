"""The decision loop: records in, guarded scale calls out, offsets committed only after they took effect.

One task owns all decision state (no locks). Each iteration:

1. ``poll`` the source for a batch (waiting at most until the next reconcile tick or ``kafka.poll_timeout_s``);
2. refresh the actuator's view, decode every record (a bad one becomes a dead-letter record and the loop goes on),
   feed traffic events to the windows;
3. decide: at a reconcile tick (multiples of the policy's ``tick_s`` on the clock) every owned model; otherwise
   only the models whose demand just crossed their capacity;
4. apply the targets that change something (absolute targets: repeating one is harmless) for the models this
   replica owns *at that moment*: each model's scale call runs as its own background task, and the loop waits for
   the calls it just started at most ``SCALE_WAIT_S`` (a healthy API server answers within it), so a slow or
   failing Kubernetes call (time-outs and retries take seconds) never holds the batch, the other models or the
   commits; one call per model at a time, a newer decision waiting for it. A target the actuator could not apply
   stays pending and is retried after a per-model back-off with jitter (``actuator.backoff_s`` doubling up to
   ``actuator.max_backoff_s``), and a newer decision replaces it; a pending target of a model this replica no
   longer owns is dropped;
5. write the audit records (a decision whose call is still in flight is audited when it ends) and dead letters,
   and commit the handled offsets — once every record was written, and, for the partition carrying a model with
   a call in flight or a pending target, only when it is applied or ``kafka.max_commit_hold_s`` has passed (for
   the model, and for the partition in all, however many calls follow one another): a
   crash replays, never loses, the events behind a decision (at-least-once), and one failing or slow model never
   stalls the others' commits, nor its own partition's beyond that hold.

Fencing (exactly one replica actuates a workload): a model is scaled only by the replica whose consumer owns its
partition, checked right before every API call (:meth:`Agent.may_actuate`, which the Kubernetes actuator calls
before each attempt). When partitions are revoked the replica stops starting calls, waits at most
``REVOKE_WAIT_S`` for the calls in flight and cancels the rest (safe: every write is conditional on the
workload's resourceVersion, so a request that still lands late cannot overwrite the new owner's), commits the
offsets no unfinished call holds, and drops its pending targets before the rebalance completes, so the new owner
never overlaps with it.

Dry-run decides and audits but never calls the actuator.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import structlog

from shadowscale.agent.config import AgentConfig
from shadowscale.agent.core import DecisionCore, Plan
from shadowscale.agent.events import DecisionRecord, Decoder, GpuEvent, Rejected, TrafficEvent, dead_letter, encode
from shadowscale.agent.metrics import Metrics
from shadowscale.agent.profiling.book import ProfileBook
from shadowscale.policies.ports import Actuator, AuditSink, Clock, EventSource, Position, RecordBatch, ScaleResult

log = structlog.get_logger("shadowscale.agent")

OBSERVE_S = 0.25
"""Between reconcile ticks the actuator's view is refreshed at most this often (wall seconds)."""
FLUSH_WAIT_S = 0.05
"""How long one loop iteration waits for its audit write before it goes on deciding."""
SCALE_WAIT_S = 0.05
"""How long one loop iteration waits for the scale calls it started before it goes on (they continue behind)."""
REVOKE_WAIT_S = 1.0
"""On revocation or stop: how long the calls in flight may still finish before they are cancelled."""


class GpuSource(Protocol):
    """Every GPU event, whatever the consumer group's assignment (``agent.kafka.KafkaTail``)."""

    async def poll_batches(self, max_records: int, timeout_s: float) -> list[RecordBatch]: ...


@dataclass(slots=True)
class Pending:
    """A target not applied yet: retried at ``next_try`` (clock seconds), ``failures`` calls so far."""

    plan: Plan
    since: float
    since_wall: float
    failures: int = 0
    next_try: float = 0.0


@dataclass(slots=True)
class InFlight:
    """One model's scale call running in the background."""

    task: asyncio.Task[ScaleResult]
    plan: Plan
    t0: float
    """``perf_counter`` when the iteration that decided it began (the decision latency runs from there)."""
    at: float
    """Clock seconds when it started (the commit hold of its partition counts from there)."""
    position: Position | None
    """The partition carrying the model (None: the source cannot say; every partition is held)."""
    audit: list[Plan] = field(default_factory=list)
    """Decisions whose audit record waits for the call's outcome."""


@dataclass(slots=True)
class Counts:
    """Totals since start (the benchmark reads them)."""

    events_in: int = 0
    traffic: int = 0
    gpu: int = 0
    dead_lettered: int = 0
    decisions: int = 0
    scale_calls: int = 0
    commits: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


class JsonLinesAudit:
    """Appends records to a file, one JSON object per line (the audit log left behind by the demo)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: TextIO | None = path.open("a", encoding="utf-8")

    def append(self, values: Sequence[bytes]) -> None:
        if self._fh is None or not values:
            return
        self._fh.write("".join(v.decode() + "\n" for v in values))
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Agent:
    """Wires ports to a :class:`DecisionCore`; ``run(stop)`` loops until ``stop`` is set."""

    def __init__(
        self,
        cfg: AgentConfig,
        source: EventSource,
        actuator: Actuator,
        sink: AuditSink,
        clock: Clock,
        *,
        metrics: Metrics | None = None,
        core: DecisionCore | None = None,
        audit_file: Path | None = None,
        is_leader: Callable[[], bool] | None = None,
        profiles: ProfileBook | None = None,
        gpu_source: GpuSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        if hasattr(source, "on_revoke"):  # a consumer-group source: commit what was handled before a rebalance
            source.on_revoke = self._commit_before_rebalance
        self.actuator = actuator
        self.sink = sink
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.core = core or DecisionCore(cfg)
        ing = cfg.ingest
        self.decoder = Decoder(
            {m.name: m.namespace for m in cfg.models},
            max_future_s=ing.max_future_s,
            max_age_s=ing.max_age_s,
            max_rps=ing.max_rps,
            max_concurrency=ing.max_concurrency,
        )
        self.audit_file = JsonLinesAudit(audit_file) if audit_file is not None else None
        self.is_leader = is_leader or (lambda: True)
        self.gpu_source = gpu_source
        """GPU events read by every replica (no consumer group): they are keyed by node, so in a group each replica
        would see only part of the GPUs. Their offsets are never committed (gauges: the newest reading counts)."""
        self.profiles = profiles
        """Profiles and drift: set each model's capacity at every reconcile tick (None: configured capacities)."""
        if profiles is not None:
            profiles.apply(self.core)
        self.identity = cfg.identity
        self.counts = Counts()
        self.ready = asyncio.Event()
        """Set once the first observation and poll succeeded (``/readyz``)."""
        self.last_iteration = time.monotonic()
        self.pending: dict[int, Pending] = {}
        """Targets the actuator could not apply yet, by model index, each with its back-off."""
        self.last_scaled: dict[str, float] = {}
        self.last_commit_wall = 0.0
        self.committed: dict[Position, int] = {}
        """The offsets last committed, per partition (consumer lag)."""
        self._fenced = False
        """Set while partitions are being revoked: :meth:`may_actuate` answers no."""
        self.inflight: dict[str, InFlight] = {}
        """Scale calls running in the background, by model (at most one per model)."""
        self._after: dict[str, Plan] = {}
        """A newer target decided while the model's call was in flight: applied once that call ended."""
        self._advised: dict[str, str | None] = {}
        """Per model, the spec recommendation last reported (metric and log)."""
        self._rng = random.Random(cfg.identity)
        self._failing_since: dict[str, float] = {}
        """When each model's scale calls started failing (kept across a rebalance that drops its pending target):
        a model that keeps failing holds its partition's commits once, not again after every rebalance."""
        if hasattr(actuator, "fence"):
            actuator.fence = self.may_actuate
        self.gpus: dict[tuple[str, str], GpuEvent] = {}
        self._offsets: dict[Position, int] = {}
        self._waiting_since: dict[Position, float] = {}
        """Since when (the agent's clock) each partition has had handled offsets waiting for a commit: a partition
        held longer than ``kafka.max_commit_hold_s`` commits anyway, even while one call after another (of its
        models, each younger than the hold) keeps it held."""
        self._unsent: dict[str, list[tuple[bytes | None, bytes]]] = {}
        self._flushing: asyncio.Task[None] | None = None
        """The one audit/dead-letter write in flight: the loop keeps deciding while the broker is slow or away."""
        self._last_commit = -math.inf
        self._topics = cfg.kafka.topics
        self._observed_at = -math.inf
        self._paused = False

    # -- the loop ---------------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        tick = self.core.policy.tick_s
        await self._observe()
        next_tick = self.clock.now()  # the first iteration ticks; later ticks fall on multiples of tick_s
        cfg = self.cfg.kafka
        poll_failures = 0
        try:
            while not stop.is_set():
                wait = min(cfg.poll_timeout_s, self.clock.wall_timeout(next_tick))
                records: Sequence[RecordBatch]
                try:
                    if self.unsent() > cfg.max_unsent:
                        # back-pressure: the broker takes no audit/dead-letter records; polling more would make
                        # the buffer grow without bound (dropping them would lose events whose offsets commit)
                        if not self._paused:
                            log.warning("broker not taking records; consumption paused", unsent=self.unsent())
                        self._paused = True
                        await asyncio.sleep(wait)
                        records = []
                    else:
                        self._paused = False
                        records = await self.source.poll(cfg.max_batch, wait)
                    poll_failures = 0
                except Exception as e:  # the broker is away: keep deciding on what we have, retry with back-off
                    poll_failures += 1
                    delay = min(0.1 * 2**poll_failures, 5.0)
                    log.warning("poll failed; will retry", attempt=poll_failures, delay_s=delay, error=f"{e!r}")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    records = []
                if self.gpu_source is not None:
                    try:
                        gpu = await self.gpu_source.poll_batches(cfg.max_batch, 0.0)
                    except Exception as e:
                        log.warning("GPU events poll failed", error=f"{type(e).__name__}: {e}")
                        gpu = []
                    if gpu:
                        records = [*records, *gpu]
                t0 = time.perf_counter()
                self.last_iteration = time.monotonic()
                now = self.clock.now()
                tick_due = now >= next_tick - 1e-9
                if tick_due or self.pending or (records and time.monotonic() - self._observed_at >= OBSERVE_S):
                    await self._observe(gauges=tick_due)
                triggered = self._ingest(records, now)
                plans: list[Plan] = []
                if tick_due:
                    if self.profiles is not None:
                        self.profiles.tick(self.core, now)
                    owned = self.source.owns(self.core.models)
                    plans = self.core.decide(next_tick, "tick", range(len(self.core.models)), owned)
                    next_tick = (math.floor(now / tick + 1e-9) + 1) * tick
                    self._staleness(now, plans)
                    if self.is_leader():
                        self._cluster_wide()
                elif triggered and self.cfg.trigger.enabled:
                    owned = self.source.owns(self.core.models)
                    plans = self.core.decide(now, "event", triggered, owned)
                await self._apply(plans, t0, now)
                await self._start_flush()
                if self.profiles is not None:
                    self.profiles.persist()
                await self._maybe_commit(now)
                if not self.ready.is_set():
                    self.ready.set()
        finally:
            await self._final_commit()
            if self.profiles is not None:
                await self.profiles.close()
            if self.audit_file is not None:
                self.audit_file.close()

    def _ingest(self, batches: Sequence[RecordBatch], now: float) -> list[int]:
        """Decode the batches, dead-letter what is bad, feed the windows; return the models that crossed capacity."""
        if not batches:
            return []
        counts = self.counts
        metrics = self.metrics
        traffic_topic = self._topics.traffic
        gpu_topic = self._topics.gpu
        dec_traffic = self.decoder.traffic
        offsets = self._offsets
        events: list[TrafficEvent] = []
        append = events.append
        dead: list[tuple[bytes | None, bytes]] = []
        n = n_traffic = n_gpu = 0
        for b in batches:
            if not len(b):
                continue
            n += len(b)
            if b.topic != gpu_topic or self.gpu_source is None:  # the GPU tail is never committed
                offsets[(b.topic, b.partition)] = b.offsets[-1] + 1
                self._waiting_since.setdefault((b.topic, b.partition), now)
            if b.topic == traffic_topic:
                n_traffic += len(b)
                for k, value in enumerate(b.values):
                    ev = dec_traffic(value, now)
                    if type(ev) is TrafficEvent:
                        append(ev)
                    else:
                        assert isinstance(ev, Rejected)
                        dead.append(self._dead(b, k, ev, now))
            elif b.topic == gpu_topic:
                n_gpu += len(b)
                for k, value in enumerate(b.values):
                    g = self.decoder.gpu(value, now)
                    if isinstance(g, Rejected):
                        dead.append(self._dead(b, k, g, now))
                    else:
                        self.gpus[(g.node, g.gpu_uuid)] = g
                        self.core.windows.add_gpu(g)
            else:
                for k in range(len(b)):
                    dead.append(self._dead(b, k, Rejected("topic", f"unexpected topic {b.topic!r}"), now))
        windows = self.core.windows
        dup0, late0 = windows.stats.duplicates, windows.stats.late
        triggered = self.core.ingest(events)
        counts.events_in += n
        counts.traffic += n_traffic
        counts.gpu += n_gpu
        counts.dead_lettered += len(dead)
        if n_traffic:
            metrics.events_in.labels(traffic_topic).inc(n_traffic)
        if n_gpu:
            metrics.events_in.labels(gpu_topic).inc(n_gpu)
        if windows.stats.duplicates != dup0:
            metrics.duplicates.inc(windows.stats.duplicates - dup0)
        if windows.stats.late != late0:
            metrics.late.inc(windows.stats.late - late0)
        if dead:
            self._unsent.setdefault(self._topics.dead_letter, []).extend(dead)
        return triggered

    def _dead(self, b: RecordBatch, k: int, why: Rejected, now: float) -> tuple[bytes | None, bytes]:
        self.metrics.dead_lettered.labels(why.kind).inc()
        offset = b.offsets[k]
        log.warning("dead-lettered", topic=b.topic, partition=b.partition, offset=offset, reason=why.reason)
        key = b.keys[k]
        rec = dead_letter(self.identity, now, b.topic, b.partition, offset, key, b.values[k], why.reason)
        return key, encode(rec)

    async def _observe(self, *, gauges: bool = True) -> None:
        self._observed_at = time.monotonic()
        try:
            observed = await self.actuator.observe()
        except Exception as e:  # a flaky actuator must not stop the loop; decide on the last view
            log.warning("observe failed; keeping the last view", error=f"{type(e).__name__}: {e}")
            return
        self.core.observe(observed)
        if gauges:
            index = self.core.windows.index
            for name, w in observed.items():
                if name in index:
                    self.metrics.actual.labels(name).set(w.replicas)
                    self.metrics.ready.labels(name).set(w.ready)

    def _staleness(self, now: float, plans: Sequence[Plan]) -> None:
        """At each tick: event age per model, consumer lag per partition, age of the last commit, fallbacks."""
        m = self.metrics
        last = self.core.windows.last_event
        for i, model in enumerate(self.core.models):
            if last[i] > -math.inf:
                m.event_age.labels(model).set(max(0.0, now - last[i]))
        for p in plans:
            on = p.guard is not None and p.guard.startswith("fallback:")
            m.fallback.labels(p.model).set(1 if on else 0)
        if math.isfinite(self._last_commit):
            m.commit_age.set(time.monotonic() - self._last_commit)
        highwaters = getattr(self.source, "highwaters", None)
        if highwaters is not None:
            for (topic, part), hw in highwaters().items():
                handled = self._offsets.get((topic, part), self.committed.get((topic, part), 0))
                m.lag.labels(topic, str(part)).set(max(0, hw - handled))

    def _cluster_wide(self) -> None:
        """Work only the leader does: today, the cluster GPU gauge and a warning when over budget."""
        budget = self.cfg.guards.gpu_budget
        used = self.core.gpus_in_use()
        if budget is not None and used > budget + 1e-9:
            log.warning("cluster over its GPU budget", gpus=used, budget=budget)

    # -- acting -----------------------------------------------------------------------------------------------
    def _owned_now(self) -> frozenset[str]:
        """The models this replica may actuate at this moment (the source's current assignment)."""
        return self.source.owns(self.core.models)

    def may_actuate(self, model: str) -> bool:
        """The fence: checked by the actuator right before each API call (also between retries), so a model whose
        partition was revoked meanwhile is never scaled by this replica again."""
        return not self._fenced and model in self._owned_now()

    async def _apply(self, plans: list[Plan], t0: float, now: float) -> None:
        applied_now = self._harvest(now)
        owned = self._owned_now()
        for i in [i for i, pe in self.pending.items() if pe.plan.model not in owned]:
            pe = self.pending.pop(i)  # another replica owns it now: its retries are that replica's business
            log.info("pending target dropped: model no longer owned", model=pe.plan.model, decision=pe.plan.target)
        plans = [p for p in plans if p.model in owned]
        inflight = self.inflight
        for p in plans:
            if p.index in self.pending and not p.changes and p.model not in inflight:
                # a newer decision keeps today's count: nothing left to retry
                del self.pending[p.index]
        if not plans and not self.pending and not inflight:
            self.metrics.pending.set(0)
            return
        changes: dict[str, int] = {}
        by_model: dict[str, Plan] = {}
        for pe in self.pending.values():
            if pe.next_try <= now and pe.plan.model not in inflight:
                by_model[pe.plan.model] = pe.plan
                changes[pe.plan.model] = pe.plan.target
        for p in plans:
            self.metrics.desired.labels(p.model).set(p.target)
            if p.spec != self._advised.get(p.model):
                self._advise(p)
            if p.model in inflight:
                if p is not inflight[p.model].plan:
                    self._after[p.model] = p  # the newest target waits for the call in flight
                continue
            if not p.changes:
                continue
            waiting = self.pending.get(p.index)
            if waiting is not None:
                waiting.plan = p  # the newest target replaces the pending one, and waits for its back-off
                if waiting.next_try <= now:
                    by_model[p.model] = p
                    changes[p.model] = p.target
            else:
                by_model[p.model] = p
                changes[p.model] = p.target
        if changes and not self.cfg.dry_run:
            started = []
            for model, target in changes.items():
                pos = self._position(model)
                task = asyncio.create_task(self._scale_one(model, target), name=f"scale-{model}")
                inflight[model] = InFlight(task, by_model[model], t0, now, pos)
                self.counts.scale_calls += 1
                started.append(task)
            await asyncio.wait(started, timeout=SCALE_WAIT_S)
            applied_now |= self._harvest(now)
        records = []
        for p in plans:
            call = inflight.get(p.model)
            if call is not None and call.plan is p:
                call.audit.append(p)  # audited with the call's outcome
                continue
            rec = self._audit(p, p.model in applied_now, time.perf_counter() - t0)
            if rec is not None:
                records.append(rec)
        self.counts.decisions += len(plans)
        self.metrics.pending.set(len(self.pending))
        self._write_audit(records)

    def _advise(self, p: Plan) -> None:
        """A new spec recommendation for ``p.model`` (or none any more): the metric and one log line."""
        old = self._advised.get(p.model)
        if old is not None:
            self.metrics.spec_recommended.remove(p.model, old)
        self._advised[p.model] = p.spec
        if p.spec is None:
            log.info("spec recommendation withdrawn", model=p.model, was=old)
            return
        self.metrics.spec_recommended.labels(p.model, p.spec).set(1)
        log.info("spec recommended", model=p.model, spec=p.spec, demand_rps=round(p.demand_rps, 3))

    async def _scale_one(self, model: str, target: int) -> ScaleResult:
        try:
            return await self.actuator.scale({model: target})
        except asyncio.CancelledError:
            raise
        except Exception as e:
            why = f"{type(e).__name__}: {e}"
            log.error("scale call failed", error=why, model=model)
            return ScaleResult(failed={model: why})

    def _position(self, model: str) -> Position | None:
        position_of = getattr(self.source, "position_of", None)
        return None if position_of is None else position_of(model)

    def _harvest(self, now: float) -> set[str]:
        """Take the outcome of every scale call that ended: applied, pending with back-off, or dropped; audit the
        decisions that waited for it. Returns the models applied."""
        applied_models: set[str] = set()
        records = []
        for model, call in list(self.inflight.items()):
            if not call.task.done():
                continue
            del self.inflight[model]
            if call.task.cancelled():
                result = ScaleResult(failed={model: "cancelled: partitions revoked or agent stopping"})
            else:
                exc = call.task.exception()
                result = call.task.result() if exc is None else ScaleResult(failed={model: f"{exc!r}"})
            latency = time.perf_counter() - call.t0
            self.metrics.decision_latency.observe(latency)
            applied_models |= self._settle(call.plan, result, now)
            newer = self._after.pop(model, None)
            if newer is not None:
                pe = self.pending.get(newer.index)
                if pe is not None:
                    pe.plan = newer  # keeps the back-off of a failed call
                elif newer.target != self.core.replicas[newer.index]:
                    self.pending[newer.index] = Pending(newer, since=now, since_wall=time.monotonic())
            for p in call.audit:
                rec = self._audit(p, model in result.applied, latency)
                if rec is not None:
                    records.append(rec)
        self._write_audit(records)
        return applied_models

    def _settle(self, plan: Plan, result: ScaleResult, now: float) -> set[str]:
        """Apply one call's outcome to the core and the pending targets."""
        for model, replicas in result.applied.items():
            self.core.applied(plan.index, replicas, now)
            self.pending.pop(plan.index, None)
            self._failing_since.pop(model, None)
            self.last_scaled[model] = now
            log.info(
                "scaled", model=model, decision=replicas, current=plan.current, trigger=plan.trigger, reason=plan.reason
            )
        for model, why in result.failed.items():
            self._failing_since.setdefault(model, now)
            pe = self.pending.get(plan.index)
            if pe is None:
                pe = self.pending[plan.index] = Pending(plan, since=now, since_wall=time.monotonic())
            pe.failures += 1
            cfg = self.cfg.actuator
            delay = min(cfg.backoff_s * 2 ** (pe.failures - 1), cfg.max_backoff_s) * self._rng.uniform(0.5, 1.0)
            pe.next_try = now + delay
            self.metrics.scale_failures.labels(model).inc()
            log.warning("scale pending", model=model, decision=pe.plan.target, error=why, retry_in_s=round(delay, 3))
        for model in result.missing:
            self.pending.pop(plan.index, None)
            log.warning("no workload for model; decision dropped", model=model, decision=plan.target)
        return set(result.applied)

    def _audit(self, p: Plan, applied: bool, latency: float) -> tuple[bytes, bytes] | None:
        outcome = "dry_run" if self.cfg.dry_run else ("applied" if applied else "hold" if not p.changes else "pending")
        self.metrics.decisions.labels(p.trigger, outcome).inc()
        if p.trigger == "tick" and not p.changes and not self.cfg.audit_holds:
            return None
        rec = DecisionRecord(
            agent=self.identity,
            model=p.model,
            policy=self.core.policy.name,
            at=p.at,
            trigger=p.trigger,
            current=p.current,
            ready=p.ready,
            recommended=p.recommended,
            target=p.target,
            applied=applied,
            dry_run=self.cfg.dry_run,
            reason=p.reason,
            guard=p.guard,
            demand_rps=round(p.demand_rps, 6),
            capacity_rps=round(p.capacity_rps, 6),
            outstanding=p.outstanding,
            latency_ms=round(latency * 1000.0, 3),
            spec_recommended=p.spec,
        )
        return p.model.encode(), encode(rec)

    def _write_audit(self, records: list[tuple[bytes, bytes]]) -> None:
        if records:
            self._unsent.setdefault(self._topics.decisions, []).extend(records)
            if self.audit_file is not None:
                self.audit_file.append([v for _, v in records])

    async def _start_flush(self) -> None:
        """Write the buffered records in the background (one write in flight) and wait for it at most
        ``FLUSH_WAIT_S``: a healthy broker acknowledges within it, so commits follow in the same iteration; a slow
        or absent one no longer stops the loop from deciding."""
        if self._flushing is None or self._flushing.done():
            if not any(self._unsent.values()):
                return
            self._flushing = asyncio.create_task(self._flush(), name="audit-flush")
        await asyncio.wait({self._flushing}, timeout=FLUSH_WAIT_S)

    def unsent(self) -> int:
        """Audit and dead-letter records waiting for the broker."""
        return sum(len(v) for v in self._unsent.values())

    def _flush_idle(self) -> bool:
        return (self._flushing is None or self._flushing.done()) and not any(self._unsent.values())

    async def _flush(self) -> None:
        """Write buffered audit and dead-letter records; on failure keep them (bounded) for the next iteration.

        Records buffered while a write is in flight wait for the next one; a failed batch goes back in front of them.
        None is ever dropped: the loop stops polling while more than ``kafka.max_unsent`` wait.
        """
        for topic in list(self._unsent):
            batch = self._unsent[topic]
            if not batch:
                continue
            self._unsent[topic] = []
            try:
                await self.sink.write(topic, batch)
            except Exception as e:
                log.warning("audit write failed; will retry", topic=topic, error=f"{type(e).__name__}: {e}")
                self._unsent[topic] = batch + self._unsent.get(topic, [])

    def _held(self, now: float) -> set[Position] | None:
        """Partitions whose offsets wait for a pending target or a scale call in flight (None: all of them, when
        the source cannot say which partition carries a model). A target pending, or a call running, longer than
        ``kafka.max_commit_hold_s`` holds nothing: one slow or failing model never stalls its partition for long."""
        hold = self.cfg.kafka.max_commit_hold_s
        first = self._failing_since
        young = [pe.plan.model for pe in self.pending.values() if now - first.get(pe.plan.model, pe.since) < hold]
        young += [m for m, c in self.inflight.items() if now - first.get(m, c.at) < hold]
        if not young:
            return set()
        held: set[Position] = set()
        for model in young:
            pos = self._position(model)
            if pos is None:
                return None
            held.add(pos)
        # the hold is per partition too: calls that follow one another (each younger than the hold) never keep a
        # partition's commits back for longer than the hold in all
        waiting = self._waiting_since
        return {pos for pos in held if now - waiting.get(pos, now) < hold}

    async def _maybe_commit(self, now: float) -> None:
        # at-least-once: only once the decisions these events caused are applied and their audit records written;
        # a failing model holds back only its own partition, and only for kafka.max_commit_hold_s
        if not self._offsets or not self._flush_idle():
            return
        if time.monotonic() - self._last_commit < self.cfg.kafka.commit_interval_s:
            return
        await self._commit(self._held(now))

    async def _commit(self, held: set[Position] | None) -> None:
        """Commit the handled offsets of every partition not in ``held`` (None: hold them all)."""
        if held is None:
            return
        offsets = {k: v for k, v in self._offsets.items() if k not in held}
        if not offsets:
            return
        for k in offsets:
            del self._offsets[k]
        try:
            await asyncio.wait_for(self.source.commit(offsets), self.cfg.kafka.commit_timeout_s)
        except Exception as e:
            log.warning("commit failed; will retry", error=f"{type(e).__name__}: {e}")
            for k, v in offsets.items():
                self._offsets[k] = max(v, self._offsets.get(k, 0))
            return
        now = self.clock.now()
        for k in offsets:  # what arrived while the commit was in flight waits from now
            if k in self._offsets:
                self._waiting_since[k] = now
            else:
                self._waiting_since.pop(k, None)
        self._last_commit = time.monotonic()
        self.last_commit_wall = time.time()
        self.committed.update(offsets)
        self.counts.commits += 1
        self.metrics.lag_commits.inc()

    async def _commit_before_rebalance(self) -> None:
        """The source is about to lose partitions. Fence first: no scale call starts from now on; the calls in
        flight get ``REVOKE_WAIT_S`` to finish and are cancelled after (their offsets are not committed: the new
        owner replays them and decides again). Then write the audit records not yet written, commit the offsets
        handled so far (not those behind a pending target or an unfinished call) and drop every pending target."""
        self._fenced = True
        try:
            await self._final_commit()
            dropped = sorted(pe.plan.model for pe in self.pending.values())
            self.pending.clear()
            self._after.clear()
            self.metrics.pending.set(0)
            log.info("committed before rebalance", commits=self.counts.commits, pending_dropped=dropped)
        finally:
            self._fenced = False

    async def _end_calls(self, wait_s: float) -> None:
        """Wait at most ``wait_s`` for the scale calls in flight, cancel the others and take every outcome (a
        cancelled call's target becomes pending, so its partition's offsets stay held as for any pending target)."""
        if not self.inflight:
            return
        tasks = [c.task for c in self.inflight.values()]
        await asyncio.wait(tasks, timeout=wait_s)
        for model, call in self.inflight.items():
            if not call.task.done():
                call.task.cancel()
                log.info("scale call cancelled", model=model, decision=call.plan.target)
        await asyncio.wait(tasks, timeout=1.0)
        self._harvest(self.clock.now())

    async def _final_commit(self, timeout_s: float = 5.0) -> None:
        """On a clean stop (and before a rebalance): end the scale calls, flush what can be flushed and commit what
        no pending target or unfinished call holds (bounded: a broker that is gone must not hold the shutdown)."""
        try:
            await self._end_calls(REVOKE_WAIT_S)
            if self._flushing is not None:
                await asyncio.wait_for(asyncio.shield(self._flushing), timeout_s)
            await asyncio.wait_for(self._flush(), timeout_s)
            if self._offsets and not any(self._unsent.values()):
                await asyncio.wait_for(self._commit(self._held(self.clock.now())), timeout_s)
        except Exception as e:
            log.warning("final flush/commit failed", error=f"{type(e).__name__}: {e}")

    # -- views for the demo and /metrics ----------------------------------------------------------------------
    def snapshot(self) -> list[dict[str, float | int | str]]:
        """Per model: demand (req/s), replicas, ready, p99 (ms) — what the demo's live table shows."""
        core = self.core
        w = core.windows
        return [
            {
                "model": m,
                "demand_rps": w.demand(i),
                "replicas": int(core.replicas[i]),
                "ready": int(core.ready[i]),
                "p99_ms": w.p99_ms(i),
                "pods": w.pods(i),
            }
            for i, m in enumerate(core.models)
        ]
