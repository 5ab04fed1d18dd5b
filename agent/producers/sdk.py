"""The traffic SDK: an inference server imports it to publish ``shadowscale.traffic/v1`` windows to Kafka.

The request path only touches an in-memory accumulator under a lock (a few additions); a background thread with its
own event loop closes a window every ``window_s`` seconds, turns it into one traffic event (counts, latency
quantiles, queue depth, batch size, busy and concurrency time) and publishes it keyed by model. Nothing on the
request path waits for Kafka. When the broker is down or the address is wrong, closed windows wait in a bounded
queue (``max_pending`` windows); when it is full the oldest window is dropped and counted (``dropped_windows``),
and the thread retries the broker with back-off and says so in the log.

Plain API::

    reporter = TrafficReporter("resnet50", bootstrap="kafka:9092")  # reads POD_NAME / POD_NAMESPACE
    reporter.start()
    t = reporter.request_started()      # or: with reporter.track(): ...
    ...
    reporter.request_finished(t, error=False)
    reporter.record_batch(size=8, busy_s=0.012)
    reporter.close()

ASGI: ``app = TrafficMiddleware(app, reporter)`` counts every HTTP request (5xx or an exception is an error).
Memory is bounded: at most ``max_samples`` latencies per window (reservoir sampling) and ``max_pending`` windows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.events import TRAFFIC_V1, TrafficEvent, encode

log = structlog.get_logger("shadowscale.sdk")


@dataclass(slots=True)
class _Window:
    arrivals: int = 0
    completions: int = 0
    errors: int = 0
    seen: int = 0
    """Latencies offered to the reservoir (``samples`` keeps at most ``max_samples`` of them)."""
    samples: list[float] = field(default_factory=list)
    batches: int = 0
    batch_items: int = 0
    busy_s: float = 0.0
    concurrency_s: float = 0.0


def _quantile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted list (0 for an empty one)."""
    if not sorted_ms:
        return 0.0
    k = min(len(sorted_ms) - 1, max(0, int(q * len(sorted_ms) + 0.999999) - 1))
    return sorted_ms[k]


class TrafficRecorder:
    """The per-window accumulator; every method is cheap and thread-safe (one lock, no I/O)."""

    def __init__(
        self,
        model: str,
        *,
        pod: str | None = None,
        namespace: str | None = None,
        max_samples: int = 2048,
        shadow_trial: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.model = model
        self.pod = pod or os.environ.get("POD_NAME") or socket.gethostname()
        self.namespace = namespace or os.environ.get("POD_NAMESPACE") or "default"
        self.shadow_trial = shadow_trial or os.environ.get("SHADOWSCALE_TRIAL_ID") or None
        """Set in a profiler's shadow pod (the shadow runner puts ``SHADOWSCALE_TRIAL_ID`` in its environment): its
        windows are tagged so the agent does not take the trial's load for the model's demand."""
        self.max_samples = max_samples
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._w = _Window()
        self._rng = random.Random(0)
        self._in_flight = 0
        self._queue_depth: int | None = None
        self._t_change = monotonic()
        self._t_window = monotonic()

    def _flight(self, delta: int, now: float) -> None:  # under the lock
        self._w.concurrency_s += self._in_flight * (now - self._t_change)
        self._t_change = now
        self._in_flight = max(0, self._in_flight + delta)

    def _sample(self, latency_ms: float) -> None:  # under the lock
        w = self._w
        w.seen += 1
        if len(w.samples) < self.max_samples:
            w.samples.append(latency_ms)
        else:
            j = self._rng.randrange(w.seen)
            if j < self.max_samples:
                w.samples[j] = latency_ms

    def request_started(self) -> float:
        """A request was accepted; returns the token to hand to :meth:`request_finished`."""
        now = self.monotonic()
        with self._lock:
            self._w.arrivals += 1
            self._flight(+1, now)
        return now

    def request_finished(self, token: float, *, error: bool = False) -> None:
        """The request started at ``token`` completed (``error``: it failed)."""
        now = self.monotonic()
        with self._lock:
            w = self._w
            w.completions += 1
            w.errors += bool(error)
            self._flight(-1, now)
            self._sample(max(0.0, (now - token) * 1000.0))

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """``with recorder.track(): ...`` — one request; an exception counts as an error and propagates."""
        t = self.request_started()
        try:
            yield
        except BaseException:
            self.request_finished(t, error=True)
            raise
        self.request_finished(t)

    def record(self, latency_ms: float, *, error: bool = False) -> None:
        """A whole request at once (arrived and completed in this window) with its latency."""
        with self._lock:
            w = self._w
            w.arrivals += 1
            w.completions += 1
            w.errors += bool(error)
            self._sample(min(max(0.0, float(latency_ms)), 86_400_000.0))

    def record_batch(self, size: int, busy_s: float = 0.0) -> None:
        """The server ran a batch of ``size`` requests that kept the accelerator busy ``busy_s`` seconds."""
        with self._lock:
            w = self._w
            w.batches += 1
            w.batch_items += max(0, int(size))
            w.busy_s += max(0.0, float(busy_s))

    def set_queue_depth(self, depth: int | None) -> None:
        """The server's own queue depth gauge (waiting plus running); None: use the requests in flight."""
        self._queue_depth = None if depth is None else max(0, int(depth))

    def close_window(self) -> TrafficEvent:
        """End the current window now and return its event (called by the reporter's thread)."""
        now = self.monotonic()
        with self._lock:
            self._flight(0, now)
            w, self._w = self._w, _Window()
            window_s = now - self._t_window
            self._t_window = now
            depth = self._in_flight if self._queue_depth is None else self._queue_depth
        event_time = self.clock()
        window_s = min(max(window_s, 1e-3), 3600.0)
        lat = sorted(w.samples)
        return TrafficEvent(
            schema=TRAFFIC_V1,
            model=self.model,
            namespace=self.namespace,
            pod=self.pod,
            event_time=event_time,
            window_s=window_s,
            arrivals=min(w.arrivals, 1_000_000_000),
            completions=min(w.completions, 1_000_000_000),
            errors=min(w.errors, w.completions, 1_000_000_000),
            latency_p50_ms=_quantile(lat, 0.50),
            latency_p95_ms=_quantile(lat, 0.95),
            latency_p99_ms=_quantile(lat, 0.99),
            queue_depth=min(depth, 1_000_000_000),
            batch_size_mean=min(w.batch_items / w.batches, 1e6) if w.batches else 0.0,
            busy_s=min(w.busy_s, window_s),
            concurrency_s=min(w.concurrency_s, 1e12),
            shadow_trial=self.shadow_trial,
        )


class TrafficReporter(TrafficRecorder):
    """A :class:`TrafficRecorder` plus the background thread that closes windows and publishes them to Kafka."""

    def __init__(
        self,
        model: str,
        *,
        bootstrap: str | None = None,
        kafka: KafkaConfig | None = None,
        topic: str = "shadowscale.traffic",
        window_s: float = 1.0,
        max_pending: int = 300,
        send_timeout_s: float = 5.0,
        backoff_max_s: float = 30.0,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        if not window_s > 0 or max_pending < 1:
            raise ValueError("window_s must be positive and max_pending at least 1")
        if kafka is None:
            if not bootstrap:
                raise ValueError("give bootstrap='HOST:PORT' or kafka=KafkaConfig(...)")
            kafka = KafkaConfig(bootstrap=bootstrap, client_id=f"shadowscale-sdk-{model}"[:200])
        self.kafka = kafka
        self.topic = topic
        self.window_s = window_s
        self.send_timeout_s = send_timeout_s
        self.backoff_max_s = backoff_max_s
        self.pending: deque[TrafficEvent] = deque()
        self.max_pending = max_pending
        self.dropped_windows = 0
        self.published_windows = 0
        self.broker_failures = 0
        self._pending_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> TrafficReporter:
        if self._thread is None:
            self._thread = threading.Thread(target=self._thread_main, name="shadowscale-sdk", daemon=True)
            self._thread.start()
            self._started.wait(5.0)
        return self

    def close(self, timeout_s: float | None = None) -> None:
        """Close the last window, try once more to publish what is pending and stop (waits at most ``timeout_s``,
        default ``2 * send_timeout_s + 2``)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(self.send_timeout_s * 2 + 2.0 if timeout_s is None else timeout_s)
        self._thread = None

    def __enter__(self) -> TrafficReporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background thread ----------------------------------------------------------------------------------

    def _enqueue(self, ev: TrafficEvent) -> None:
        with self._pending_lock:
            while len(self.pending) >= self.max_pending:
                self.pending.popleft()
                self.dropped_windows += 1
            self.pending.append(ev)

    def _thread_main(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run(self._main())

    async def _main(self) -> None:
        """Close a window every ``window_s`` (never delayed by Kafka) and wake the publisher task after each."""
        self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        wake = asyncio.Event()
        final = asyncio.Event()
        self._started.set()
        publisher = asyncio.create_task(self._publisher(wake, final))
        next_close = time.monotonic() + self.window_s
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_close - time.monotonic()))
            if stop.is_set():
                break
            self._enqueue(self.close_window())
            next_close = max(next_close + self.window_s, time.monotonic())
            wake.set()
        self._enqueue(self.close_window())  # the last, partial window
        final.set()
        wake.set()
        with contextlib.suppress(TimeoutError):  # the broker is still down: the pending windows are lost
            await asyncio.wait_for(publisher, self.send_timeout_s * 2 + 1.0)

    async def _publisher(self, wake: asyncio.Event, final: asyncio.Event) -> None:
        """Publish pending windows after each wake-up; an unreachable broker is retried with back-off."""
        from shadowscale.agent.kafka import KafkaSink

        sink: KafkaSink | None = None
        delay = 0.0
        retry_at = 0.0
        try:
            while True:
                await wake.wait()
                wake.clear()
                last = final.is_set()
                if time.monotonic() >= retry_at or last:
                    try:
                        if sink is None:
                            new = KafkaSink(self.kafka, linger_ms=5)
                            await new.start(timeout_s=self.send_timeout_s)
                            sink = new
                        await self._flush(sink)
                        if delay:
                            log.info("broker reachable again", bootstrap=self.kafka.bootstrap)
                        delay = 0.0
                    except Exception as e:
                        self.broker_failures += 1
                        if sink is not None:
                            with contextlib.suppress(Exception):
                                await sink.stop(timeout_s=1.0)
                            sink = None
                        delay = min(self.backoff_max_s, delay * 2) if delay else min(1.0, self.backoff_max_s)
                        retry_at = time.monotonic() + delay
                        log.warning(
                            "cannot publish traffic windows; keeping the newest and retrying",
                            bootstrap=self.kafka.bootstrap,
                            error=f"{type(e).__name__}: {e}",
                            pending=len(self.pending),
                            dropped=self.dropped_windows,
                            retry_in_s=delay,
                        )
                if last:
                    return
        finally:
            if sink is not None:
                with contextlib.suppress(Exception):
                    await sink.stop(timeout_s=2.0)

    async def _flush(self, sink: Any) -> None:
        with self._pending_lock:
            batch = list(self.pending)
        if not batch:
            return
        key = self.model.encode()
        await asyncio.wait_for(sink.write(self.topic, [(key, encode(ev)) for ev in batch]), self.send_timeout_s)
        sent = {id(ev) for ev in batch}
        with self._pending_lock:  # windows dropped meanwhile are gone already; newer ones stay
            while self.pending and id(self.pending[0]) in sent:
                self.pending.popleft()
        self.published_windows += len(batch)


# -- ASGI -----------------------------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TrafficMiddleware:
    """ASGI middleware: every HTTP request is one arrival and one completion; 5xx or an exception is an error."""

    def __init__(self, app: ASGIApp, recorder: TrafficRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        rec = self.recorder
        token = rec.request_started()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message.get("status", 500))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except BaseException:
            rec.request_finished(token, error=True)
            raise
        rec.request_finished(token, error=status >= 500)
