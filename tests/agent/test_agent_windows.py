"""Windows: counters from every accepted event, gauges from each pod's newest window, duplicates and late events
dropped and counted."""

from __future__ import annotations

import pytest

from shadowscale.agent.events import GPU_V1, TRAFFIC_V1, GpuEvent, GpuPod, TrafficEvent
from shadowscale.agent.windows import Windows


def ev(t: float, pod: str = "a", arrivals: int = 10, queue: int = 0, model: str = "m", **kw: float) -> TrafficEvent:
    return TrafficEvent(
        schema=TRAFFIC_V1,
        model=model,
        pod=pod,
        event_time=t,
        window_s=1.0,
        arrivals=arrivals,
        completions=arrivals,
        queue_depth=queue,
        busy_s=kw.get("busy", 0.5),
        concurrency_s=kw.get("conc", 2.0),
        latency_p99_ms=kw.get("p99", 10.0),
    )


def test_counters_and_gauges() -> None:
    w = Windows(["m", "n"])
    assert w.add(ev(1.0, "a", 10, queue=3)) == 0
    assert w.add(ev(1.0, "b", 20, queue=1)) == 0
    assert w.add(ev(1.0, "a", 5, model="zzz")) == -1
    arrivals, busy, ready, inflight = w.counters()
    assert arrivals.tolist() == [30.0, 0.0] and busy.tolist() == [1.0, 0.0] and ready.tolist() == [2.0, 0.0]
    assert inflight.tolist() == [4.0, 0.0]
    assert w.demand(0) == pytest.approx(30.0)
    assert w.outstanding().tolist() == [4, 0]
    assert w.pods(0) == 2


def test_out_of_order_event_counts_but_does_not_overwrite_newer_gauges() -> None:
    w = Windows(["m"])
    w.add(ev(5.0, arrivals=50, queue=7, p99=99.0))
    w.add(ev(4.0, arrivals=10, queue=1, p99=1.0))  # late by event time
    assert w.counters()[0].tolist() == [60.0]
    assert w.demand(0) == pytest.approx(50.0) and w.outstanding().tolist() == [7] and w.p99_ms(0) == 99.0


def test_duplicates_and_late_events_are_dropped_and_counted() -> None:
    w = Windows(["m"], dedupe_s=10.0)
    for t in (1.0, 2.0, 3.0):
        w.add(ev(t))
    assert w.add(ev(2.0)) == -1  # a redelivered window
    assert w.stats.duplicates == 1
    w.add(ev(30.0))
    assert w.add(ev(15.0)) == -1  # behind the newest window by more than dedupe_s
    assert w.stats.late == 1 and w.stats.accepted == 4
    assert w.counters()[0].tolist() == [40.0]


def test_dedupe_memory_is_bounded() -> None:
    w = Windows(["m"], dedupe_s=5.0)
    for k in range(1000):
        w.add(ev(float(k)))
    pod = w._pods[0]["a"]
    assert len(pod.seen) <= 70
    assert w.add(ev(998.0)) == -1 and w.stats.duplicates == 1


def test_stale_pods_leave_the_gauges() -> None:
    w = Windows(["m"], pod_stale_s=10.0)
    w.add(ev(1.0, "a", 10, queue=2))
    w.add(ev(8.0, "b", 20, queue=3))
    w.expire(15.0)
    assert w.pods(0) == 1 and w.demand(0) == pytest.approx(20.0) and w.outstanding().tolist() == [3]
    w.expire(100.0)
    assert w.pods(0) == 0 and w.demand(0) == 0.0 and w.outstanding().tolist() == [0]
    assert w.counters()[0].tolist() == [30.0]  # counters never go back


def test_a_duplicate_after_the_pod_went_quiet_is_still_a_duplicate() -> None:
    """Stale pods leave the gauges after pod_stale_s but keep their duplicate memory for dedupe_s: a window
    redelivered 31 s later (e.g. after a broker outage) is not counted twice."""
    from shadowscale.agent.events import TrafficEvent
    from shadowscale.agent.windows import Windows

    w = Windows(["m"], pod_stale_s=30.0, dedupe_s=60.0)
    ev = TrafficEvent(
        schema="shadowscale.traffic/v1", model="m", pod="p", event_time=1.7e9, window_s=1.0, arrivals=5, completions=5
    )
    assert w.add(ev) == 0
    w.expire(1.7e9 + 31.0)
    assert w.pods(0) == 0 and w.demand_all()[0] == 0.0
    assert w.add(ev) == -1
    assert w.stats.accepted == 1 and w.stats.duplicates == 1
    w.expire(1.7e9 + 61.0)
    assert w.add(ev) == 0  # beyond dedupe_s it is forgotten


def test_shadow_trial_windows_are_not_demand() -> None:
    """A profiler's shadow pod under test load reports windows tagged with its trial: counted, never demand."""
    import msgspec

    w = Windows(["m"])
    w.add(ev(1.0, "a", 10))
    shadow = msgspec.structs.replace(ev(1.0, "m-shadow-t1-abc", 5000, queue=900), shadow_trial="run1-m-3")
    assert w.add(shadow) == -1
    assert w.stats.shadow == 1 and w.stats.accepted == 1
    assert w.counters()[0].tolist() == [10.0] and w.demand(0) == pytest.approx(10.0) and w.pods(0) == 1


def gpu(t: float, util: float, *models: str, gpu_id: str = "GPU-0") -> GpuEvent:
    return GpuEvent(
        schema=GPU_V1,
        node="node-1",
        gpu_uuid=gpu_id,
        gpu_index=0,
        event_time=t,
        utilization=util,
        memory_used_bytes=0,
        memory_total_bytes=80 << 30,
        pods=tuple(GpuPod(pod=f"{m}-{k}", model=m) for k, m in enumerate(models)),
    )


def test_gpu_utilization_stands_in_for_busy_seconds_that_pods_do_not_report() -> None:
    w = Windows(["m", "n"], pod_stale_s=30.0)
    w.add(ev(1.0, "a", model="m", busy=0.0))  # m's pods report no busy time
    w.add_gpu(gpu(0.0, 0.5, "m"))  # a GPU's first event: no interval yet
    assert w.counters()[1].tolist() == [0.0, 0.0]
    assert (w.busy_source(0), w.busy_source(1)) == ("none", "none")
    w.add_gpu(gpu(2.0, 0.8, "m", "n"))  # 0.8 over (0, 2], shared by one pod of m and one of n
    assert w.counters()[1].tolist() == pytest.approx([0.8, 0.8])
    assert (w.busy_source(0), w.busy_source(1)) == ("gpu", "gpu")  # drift trusts it only where it tracks load
    w.add_gpu(gpu(1.5, 1.0, "m"))  # older than the GPU's last event: ignored
    w.add_gpu(gpu(102.0, 1.0, "m", gpu_id="GPU-1"))  # another GPU's first event
    w.add_gpu(gpu(202.0, 0.5, "m", gpu_id="GPU-1"))  # a 100 s silence counts for pod_stale_s at most
    assert w.counters()[1].tolist() == pytest.approx([0.8 + 15.0, 0.8])
    w.add(ev(3.0, "b", model="n", busy=0.25))  # n's pods report busy time: from now on only theirs counts
    assert w.counters()[1].tolist() == pytest.approx([15.8, 0.25])
    assert w.busy_source(1) == "server"
    w.add_gpu(gpu(4.0, 1.0, "n"))
    assert w.counters()[1].tolist() == pytest.approx([15.8, 0.25])


def test_recent_gaps_rebuild_the_arrival_pattern_of_the_last_history_s() -> None:
    w = Windows(["m"], history_s=10.0, dedupe_s=1e9)
    w.add(ev(100.2, "a", 2))  # second 100: two arrivals from pod a …
    w.add(ev(100.9, "b", 2))  # … and two from pod b: four, spread at 100.125, 100.375, 100.625, 100.875
    w.add(ev(103.5, "a", 1))  # one in second 103, at 103.5
    w.add(ev(103.5, "a", 1))  # a duplicate: not counted
    shadow = TrafficEvent(
        schema=TRAFFIC_V1,
        model="m",
        pod="s",
        event_time=102.0,
        window_s=1.0,
        arrivals=50,
        completions=50,
        shadow_trial="t1",
    )
    w.add(shadow)  # a shadow's test load is not the model's traffic
    assert w.recent_gaps(0, now=104.0) == pytest.approx((0.25, 0.25, 0.25, 2.625))
    assert w.recent_gaps(0, now=104.0, limit=2) == pytest.approx((0.25, 0.25))
    assert w.recent_gaps(0, now=112.0) == ()  # only second 103 is within history_s: one arrival, no gap
