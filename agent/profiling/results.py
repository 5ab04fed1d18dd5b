"""The :class:`~agent.profiling.shadow.TrialResults` port from Kafka: the load generators' result events handed to
the shadow runners waiting for them.

:class:`TrialResultsHub` is the hand-over without any I/O: ``wait(trial_id, timeout_s)`` parks a runner until
``deliver(raw)`` decodes a ``shadowscale.trial-result/v1`` event for that trial, or the timeout passes (None: the
runner fails the trial and tears its objects down). A result for a trial nobody waits for (another agent replica's,
one that already timed out, a duplicate, a replay of the topic's last batch) is ignored with a log line; a message
that is not a valid result is logged and counted, never raised.

:class:`KafkaTrialResults` feeds the hub from the trials topic through :class:`agent.kafka.KafkaTail`: every agent
replica reads every partition (no consumer group), since only the replica that runs a trial waits for its result.
It reads from the topic's end at :meth:`KafkaTrialResults.start`, so start it before the first trial.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import structlog

from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.events import Rejected, TrialResultEvent, decode_trial_result
from shadowscale.agent.kafka import KafkaTail, ensure_topics
from shadowscale.policies.profiling.types import TrialResult, TrialStatus

log = structlog.get_logger("shadowscale.profiling.results")

DEFAULT_TOPIC = "shadowscale.trials"


def to_trial_result(ev: TrialResultEvent) -> TrialResult:
    """The runner's :class:`TrialResult` for a result event (a p99 of None is infinitely late)."""
    if ev.status == "failed":
        return TrialResult.failed(f"load generator: {ev.error}", ev.wall_s)
    first = ev.steps[0].p99_ms if ev.steps else ev.p99_ms
    details = {"steps": float(len(ev.steps)), "first_p99_ms": math.inf if first is None else first}
    at = [s for s in ev.steps if s.rate == ev.throughput_rps]  # an LLM trial's numbers at the capacity found
    for name in ("ttft_p99_ms", "tpot_p99_ms", "tokens_per_s"):
        value = getattr(at[-1], name) if at else None
        if value is not None:
            details[name] = float(value)
    return TrialResult(
        TrialStatus.MEASURED,
        throughput=ev.throughput_rps,
        p99_ms=math.inf if ev.p99_ms is None else ev.p99_ms,
        wall_s=ev.wall_s,
        details=details,
    )


@dataclass(slots=True)
class HubCounts:
    delivered: int = 0
    unknown: int = 0
    """Valid results for trials nobody was waiting for."""
    rejected: int = 0


class TrialResultsHub:
    """Hands decoded results to the runners waiting for them (see the module doc)."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[TrialResult]] = {}
        self.counts = HubCounts()

    @property
    def waiting(self) -> Sequence[str]:
        return sorted(self._waiting)

    async def wait(self, trial_id: str, timeout_s: float) -> TrialResult | None:
        """The trial's result, or None if none arrived within ``timeout_s``. One waiter per trial."""
        if trial_id in self._waiting:
            raise ValueError(f"trial results: someone is already waiting for trial {trial_id!r}")
        fut: asyncio.Future[TrialResult] = asyncio.get_running_loop().create_future()
        self._waiting[trial_id] = fut
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except TimeoutError:
            return None
        finally:
            if self._waiting.get(trial_id) is fut:
                del self._waiting[trial_id]

    def deliver(self, raw: bytes | None, key: bytes | None = None) -> TrialResultEvent | Rejected:
        """Decode one message and hand it to its waiter, if any; returns what it decoded (never raises)."""
        ev = decode_trial_result(raw)
        if isinstance(ev, Rejected):
            self.counts.rejected += 1
            log.warning("trial result rejected", kind=ev.kind, reason=ev.reason, key=_text(key))
            return ev
        fut = self._waiting.pop(ev.trial, None)
        if fut is None or fut.done():
            self.counts.unknown += 1
            log.info("trial result for a trial nobody here waits for; ignored", trial=ev.trial, model=ev.model)
            return ev
        self.counts.delivered += 1
        log.info(
            "trial result received",
            trial=ev.trial,
            model=ev.model,
            status=ev.status,
            throughput_rps=ev.throughput_rps,
            p99_ms=ev.p99_ms,
            error=ev.error or None,
        )
        fut.set_result(to_trial_result(ev))
        return ev


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", "replace")[:200]


class KafkaTrialResults(TrialResultsHub):
    """A :class:`TrialResultsHub` fed from the trials topic; ``async with`` or :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        kafka: KafkaConfig,
        topic: str = DEFAULT_TOPIC,
        *,
        create_topic: bool = False,
        partitions: int = 4,
        poll_timeout_s: float = 0.2,
    ) -> None:
        super().__init__()
        self.kafka = kafka
        self.topic = topic
        self.create_topic = create_topic
        self.partitions = partitions
        self.poll_timeout_s = poll_timeout_s
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Create the topic if asked, position at its end and start consuming (raises ``KafkaUnavailable``)."""
        if self._task is not None:
            return
        cfg = msgspec.structs.replace(self.kafka, client_id=f"{self.kafka.client_id}-trials"[:200])
        if self.create_topic:
            await ensure_topics(cfg, [self.topic], self.partitions)
        tail = KafkaTail(cfg, self.topic)
        await tail.start(timeout_s)
        self._task = asyncio.create_task(self._consume(tail), name="trial-results")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> KafkaTrialResults:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _consume(self, tail: KafkaTail) -> None:
        failures = 0
        try:
            while True:
                try:
                    records = await tail.poll(500, self.poll_timeout_s)
                    failures = 0
                except Exception as e:  # the broker is away: the waiting runners time out if it stays away
                    failures += 1
                    delay = min(0.1 * 2**failures, 5.0)
                    log.warning(
                        "trial results: poll failed; will retry", attempt=failures, delay_s=delay, error=f"{e!r}"
                    )
                    await asyncio.sleep(delay)
                    continue
                for key, value in records:
                    self.deliver(value, key)
        finally:
            await asyncio.shield(tail.stop())
