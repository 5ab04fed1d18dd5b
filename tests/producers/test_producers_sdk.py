"""The traffic SDK: window arithmetic, a request path that never blocks, bounded memory with the broker down, and
real events through the bundled broker."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from producer_helpers import fresh_topic, read_all

from shadowscale.agent.broker import LocalBroker, free_port
from shadowscale.agent.events import Decoder, TrafficEvent, encode
from shadowscale.agent.producers.sdk import TrafficMiddleware, TrafficRecorder, TrafficReporter


class Tick:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_window_counts_quantiles_batches_and_concurrency() -> None:
    mono = Tick()
    r = TrafficRecorder("resnet50", pod="resnet-0", namespace="serving", clock=lambda: 1.7e9, monotonic=mono)
    for ms in range(1, 101):  # 1..100 ms
        r.record(float(ms), error=ms > 98)
    a = r.request_started()
    mono.t += 0.5
    b = r.request_started()
    mono.t += 0.25
    r.request_finished(a)  # 750 ms
    r.record_batch(4, busy_s=0.2)
    r.record_batch(2, busy_s=0.1)
    mono.t += 0.25
    ev = r.close_window()
    assert (ev.model, ev.pod, ev.namespace, ev.event_time) == ("resnet50", "resnet-0", "serving", 1.7e9)
    assert ev.window_s == pytest.approx(1.0)
    assert (ev.arrivals, ev.completions, ev.errors, ev.queue_depth) == (102, 101, 2, 1)
    assert (ev.latency_p50_ms, ev.latency_p95_ms, ev.latency_p99_ms) == (51.0, 96.0, 100.0)
    assert ev.batch_size_mean == 3.0 and ev.busy_s == pytest.approx(0.3)
    assert ev.concurrency_s == pytest.approx(0.5 + 2 * 0.25 + 0.25)  # 1 for 0.5 s, 2 for 0.25 s, 1 for 0.25 s
    mono.t += 1.0
    idle = r.close_window()  # an idle window is still a window; the request in flight carries over
    assert (idle.arrivals, idle.completions, idle.queue_depth) == (0, 0, 1)
    assert idle.concurrency_s == pytest.approx(1.0)
    r.request_finished(b, error=True)
    r.set_queue_depth(7)
    assert r.close_window().queue_depth == 7


def test_a_shadow_pod_tags_its_windows_with_the_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    assert TrafficRecorder("resnet50", pod="resnet-0").close_window().shadow_trial is None
    monkeypatch.setenv("SHADOWSCALE_TRIAL_ID", "run1-resnet50-4")  # what the shadow runner sets in a shadow pod
    ev = TrafficRecorder("resnet50", pod="resnet50-shadow-run1-resnet50-4-x").close_window()
    assert ev.shadow_trial == "run1-resnet50-4"
    assert isinstance(Decoder(["resnet50"]).traffic(encode(ev), ev.event_time), TrafficEvent)


def test_latency_samples_are_bounded_per_window() -> None:
    r = TrafficRecorder("m", pod="p", max_samples=64)
    for i in range(10_000):
        r.record(float(i % 100))
    assert len(r._w.samples) == 64  # reservoir
    ev = r.close_window()
    assert ev.arrivals == 10_000 and 0.0 <= ev.latency_p50_ms <= ev.latency_p99_ms <= 99.0


def test_record_never_blocks_and_memory_is_bounded_with_the_broker_down() -> None:
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    rep = TrafficReporter("m", pod="p", bootstrap=nobody, window_s=0.05, max_pending=5, backoff_max_s=0.2).start()
    try:
        worst = 0.0
        t0 = time.perf_counter()
        for i in range(50_000):
            s = time.perf_counter()
            rep.record(float(i % 50))
            worst = max(worst, time.perf_counter() - s)
        total = time.perf_counter() - t0
        time.sleep(1.0)  # ~20 windows closed while the broker is unreachable
        assert len(rep.pending) <= 5
        assert rep.dropped_windows >= 5 and rep.broker_failures >= 1 and rep.published_windows == 0
    finally:
        rep.close(timeout_s=10)
    assert total < 5.0, total  # 50k calls: no I/O on the request path (a loaded 2-core box: generous)
    assert worst < 0.5, worst  # no call waited for the broker (each retry takes longer than this)


@pytest.mark.asyncio
async def test_middleware_counts_requests_errors_and_exceptions() -> None:
    r = TrafficRecorder("m", pod="p")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 503 if scope["path"] == "/503" else 200})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[Any] = []

    async def send(m: Any) -> None:
        sent.append(m)

    async def receive() -> Any:
        return {"type": "http.request"}

    mw = TrafficMiddleware(app, r)
    await mw({"type": "http", "path": "/"}, receive, send)
    await mw({"type": "http", "path": "/503"}, receive, send)
    with pytest.raises(RuntimeError):
        await mw({"type": "http", "path": "/boom"}, receive, send)
    ev = r.close_window()
    assert (ev.arrivals, ev.completions, ev.errors, ev.queue_depth) == (3, 3, 2, 0)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [200, 503]


@pytest.mark.asyncio
async def test_windows_reach_the_real_broker_as_valid_traffic_events(broker: LocalBroker) -> None:
    cfg, topic = await fresh_topic(broker.bootstrap, "traffic")
    rep = TrafficReporter("resnet50", pod="resnet-0", namespace="serving", kafka=cfg, topic=topic, window_s=0.2)
    rep.start()
    try:
        for ms in (10.0, 20.0, 30.0):
            rep.record(ms)
        with rep.track():
            pass
        recs = await read_all(cfg, topic, 3)
    finally:
        await asyncio.to_thread(rep.close, 10.0)
    dec = Decoder(["resnet50"])
    events = [dec.traffic(v, time.time()) for _, v in recs]
    assert all(isinstance(e, TrafficEvent) for e in events), events
    assert {k for k, _ in recs} == {b"resnet50"}
    first = events[0]
    assert isinstance(first, TrafficEvent)
    assert (first.pod, first.namespace, first.arrivals, first.completions) == ("resnet-0", "serving", 4, 4)
    assert first.latency_p99_ms == 30.0
    assert sum(e.arrivals for e in events if isinstance(e, TrafficEvent)) == 4
    assert rep.dropped_windows == 0 and rep.published_windows >= 3


@pytest.mark.asyncio
async def test_the_example_server_serves_and_counts() -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "traffic_server.py"
    spec = importlib.util.spec_from_file_location("traffic_server_example", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sent: list[Any] = []

    async def send(m: Any) -> None:
        sent.append(m)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}"}

    await mod.application({"type": "http", "path": "/predict", "method": "POST"}, receive, send)
    ev = mod.reporter.close_window()  # never started: nothing was published
    assert sent[0]["status"] == 200 and (ev.arrivals, ev.completions, ev.errors) == (1, 1, 0)
    assert ev.batch_size_mean == 1.0 and ev.busy_s > 0
