"""The decision loop with fake ports: event-triggered and tick decisions, audit, dead letters, dry-run, retries
and at-least-once commits."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from agent_fakes import MemorySink, RecordingActuator, ScriptedSource, Step, VirtualClock, config, record, traffic

from shadowscale.agent.config import parse_config
from shadowscale.agent.loop import Agent

pytestmark = pytest.mark.asyncio

DECISIONS = "shadowscale.decisions"
DEAD = "shadowscale.dead-letter"


def audits(sink: MemorySink) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in sink.records.get(DECISIONS, [])]


async def run(agent: Agent, stop: asyncio.Event) -> None:
    await asyncio.wait_for(agent.run(stop), 10)


async def test_demand_crossing_capacity_is_decided_at_once() -> None:
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(100.0)
    stop = asyncio.Event()
    steps = [
        Step(100.0, [record(traffic("m1", 99.9, arrivals=5, concurrency_s=5.0), 0)]),  # tick at 100: primes the policy
        Step(100.5, [record(traffic("m1", 100.5, arrivals=6, concurrency_s=6.0), 1)]),  # within capacity: no decision
        Step(101.0, [record(traffic("m1", 101.0, arrivals=400, concurrency_s=700.0), 2)]),  # a step: decided now
    ]
    source = ScriptedSource(clock, steps, stop)
    act = RecordingActuator({"m1": 1, "m2": 1})
    sink = MemorySink()
    agent = Agent(cfg, source, act, sink, clock)
    await run(agent, stop)

    recs = audits(sink)
    assert [r["trigger"] for r in recs] == ["tick", "tick", "event"]
    step = recs[-1]
    assert step["model"] == "m1" and step["at"] == 101.0 and step["applied"] is True
    assert step["target"] > 1 and act.replicas["m1"] == step["target"]
    assert str(step["reason"]).startswith("kpa: panic mode")
    assert act.calls == [{"m1": step["target"]}]
    assert source.committed() == {("shadowscale.traffic", 0): 3}
    assert agent.metrics.decision_latency._sum.get() > 0


async def test_failed_scale_is_retried_after_a_back_off_and_blocks_the_commit() -> None:
    """Catches: retrying a failed target on every loop pass (the call at 1.1 would happen), and committing the
    offsets behind a target that is still pending."""
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [
        Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)]),
        Step(1.0, [record(traffic("m1", 1.0, arrivals=400, concurrency_s=700.0), 1)]),
        Step(1.1, [record(traffic("m1", 1.1, arrivals=1, pod="other"), 2)]),  # within the back-off: no call
        Step(1.6, []),  # back-off (0.25..0.5 s) over: retried, fails again
        Step(2.7, []),  # second back-off (0.5..1 s) over: applied
    ]
    source = ScriptedSource(clock, steps, stop)
    act = RecordingActuator({"m1": 1})
    sink = MemorySink()
    agent = Agent(cfg, source, act, sink, clock)
    act.fail_next = 2
    await run(agent, stop)

    target = act.calls[0]["m1"]
    assert target > 1 and act.calls == [{"m1": target}] * 3 and act.replicas["m1"] == target
    # offsets of the step's batch were committed only after it was applied
    assert source.commits == [{("shadowscale.traffic", 0): 1}, {("shadowscale.traffic", 0): 3}]
    assert agent.metrics.scale_failures.labels("m1")._value.get() == 2


async def test_dry_run_audits_but_never_scales(tmp_path: Path) -> None:
    cfg = config(["m1"], dry_run=True, kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [Step(0.0, []), Step(1.0, [record(traffic("m1", 1.0, arrivals=400, concurrency_s=700.0), 0)])]
    source = ScriptedSource(clock, steps, stop)
    act = RecordingActuator({"m1": 1})
    sink = MemorySink()
    agent = Agent(cfg, source, act, sink, clock, audit_file=tmp_path / "audit.jsonl")
    await run(agent, stop)

    assert act.calls == []
    step = audits(sink)[-1]
    assert step["dry_run"] is True and step["applied"] is False and step["target"] > 1
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == audits(sink)
    assert source.committed() == {("shadowscale.traffic", 0): 1}


async def test_bad_records_are_dead_lettered_and_the_loop_goes_on() -> None:
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(10.0)
    stop = asyncio.Event()
    bad = [b"\x00\xffnot json", b'{"schema": "shadowscale.traffic/v1"}', traffic("nope", 10.0), traffic("m1", 9999.0)]
    recs = [record(v, k) for k, v in enumerate(bad)]
    recs.append(record(traffic("m1", 10.0, arrivals=3), len(bad)))
    recs.append(record(b"{}", 0, topic="shadowscale.gpu"))
    steps = [Step(10.0, recs)]
    source = ScriptedSource(clock, steps, stop)
    sink = MemorySink()
    agent = Agent(cfg, source, RecordingActuator({"m1": 1}), sink, clock)
    await run(agent, stop)

    dead = [json.loads(v) for _, v in sink.records[DEAD]]
    assert [d["offset"] for d in dead] == [0, 1, 2, 3, 0]
    assert "not JSON" in dead[0]["reason"] and "unknown model 'nope'" in dead[2]["reason"]
    assert "future" in dead[3]["reason"] and dead[4]["topic"] == "shadowscale.gpu"
    assert agent.counts.dead_lettered == 5 and agent.counts.events_in == 6
    assert agent.core.windows.counters()[0].tolist() == [3.0]
    text = agent.metrics.render().decode()
    assert 'shadowscale_events_dead_lettered_total{kind="malformed"} 1.0' in text
    assert source.committed() == {("shadowscale.traffic", 0): 5, ("shadowscale.gpu", 0): 1}


async def test_audit_write_failure_holds_the_commit_until_written() -> None:
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)]), Step(0.5, [])]
    source = ScriptedSource(clock, steps, stop)
    sink = MemorySink()
    sink.fail_next = 1
    agent = Agent(cfg, source, RecordingActuator({"m1": 1}), sink, clock)
    await run(agent, stop)
    assert len(audits(sink)) == 1
    assert source.commits == [{("shadowscale.traffic", 0): 1}]  # after the retry at 0.5, not at 0.0


async def test_only_owned_models_with_a_workload_are_decided() -> None:
    cfg = config(["m1", "m2", "m3"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    source = ScriptedSource(clock, [Step(0.0, [])], stop, owned={"m1", "m3"})
    sink = MemorySink()
    agent = Agent(cfg, source, RecordingActuator({"m1": 1, "m2": 1}), sink, clock)  # no workload for m3
    await run(agent, stop)
    assert [r["model"] for r in audits(sink)] == ["m1"]


async def test_reconcile_ticks_follow_the_policy_period() -> None:
    cfg = config(["m1"], policy="hpa", kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(7.0)
    stop = asyncio.Event()
    steps = [Step(t, []) for t in (7.0, 14.0, 15.0, 29.0, 31.0, 46.0)]
    source = ScriptedSource(clock, steps, stop)
    sink = MemorySink()
    agent = Agent(cfg, source, RecordingActuator({"m1": 1}), sink, clock)
    await run(agent, stop)
    # HPA syncs every 15 s: the first iteration, then 15, 30, 45 (a late tick runs once, at its own time)
    assert [r["at"] for r in audits(sink)] == [7.0, 15.0, 30.0, 45.0]
    assert all("hpa:" in str(r["reason"]) for r in audits(sink))


async def test_a_failing_source_does_not_stop_the_loop() -> None:
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()

    class Flaky(ScriptedSource):
        async def poll(self, max_records: int, timeout_s: float) -> Any:
            if self.polls == 1 and not getattr(self, "failed", False):
                self.failed = True
                raise ConnectionError("broker went away (injected)")
            return await super().poll(max_records, timeout_s)

    steps = [Step(0.0, []), Step(1.0, [record(traffic("m1", 1.0, arrivals=400, concurrency_s=700.0), 0)])]
    source = Flaky(clock, steps, stop)
    act = RecordingActuator({"m1": 1})
    agent = Agent(cfg, source, act, MemorySink(), clock)
    await run(agent, stop)
    assert act.replicas["m1"] > 1 and source.committed() == {("shadowscale.traffic", 0): 1}


async def _hpa_with_gpu_events(gpu_util: float | None) -> list[dict[str, Any]]:
    """HPA on a model whose pods report traffic but no busy time; the GPU exporter (if any) reports its GPU."""
    from shadowscale.agent.events import GPU_V1, GpuEvent, GpuPod, encode

    cfg = config(["m1"], policy="hpa", kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = []
    for k in range(40):
        t = 2.0 * k
        recs = [record(traffic("m1", t, window_s=2.0, arrivals=20), 2 * k)]
        if gpu_util is not None:
            g = GpuEvent(
                schema=GPU_V1,
                node="n1",
                gpu_uuid="GPU-a",
                gpu_index=0,
                event_time=t,
                utilization=gpu_util,
                memory_used_bytes=1 << 30,
                memory_total_bytes=80 << 30,
                pods=(GpuPod(pod="p0", model="m1"),),
            )
            recs.append(record(encode(g), k, topic="shadowscale.gpu"))
        steps.append(Step(t, recs))
    sink = MemorySink()
    agent = Agent(cfg, ScriptedSource(clock, steps, stop), RecordingActuator({"m1": 1}), sink, clock)
    await run(agent, stop)
    return audits(sink)


async def test_hpa_scales_on_gpu_utilization_when_pods_report_no_busy_time() -> None:
    """Without busy time from the pods, HPA would see a 0 % utilized replica forever; the GPU exporter's 95 %
    makes it scale up."""
    blind = await _hpa_with_gpu_events(None)
    seen = await _hpa_with_gpu_events(0.95)
    assert max(r["target"] for r in blind) == 1
    assert max(r["target"] for r in seen) >= 2


async def test_workload_settings_bound_and_hold_the_decision() -> None:
    """Catches: the decision core ignoring the workload's own settings — a max-replicas annotation of 3 must bound
    the target (the audit says so), and a paused workload (or one another autoscaler owns) is never scaled."""
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [
        Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0), record(traffic("m2", 0.0, arrivals=1), 1)]),
        Step(
            1.0,
            [
                record(traffic("m1", 1.0, arrivals=400, concurrency_s=700.0), 2),
                record(traffic("m2", 1.0, arrivals=400, concurrency_s=700.0), 3),
            ],
        ),
    ]
    act = RecordingActuator({"m1": 1, "m2": 1})
    act.settings = {"m1": {"max_replicas": 3}, "m2": {"hold": "paused (shadowscale.io/paused)"}}
    sink = MemorySink()
    agent = Agent(cfg, ScriptedSource(clock, steps, stop), act, sink, clock)
    await run(agent, stop)
    assert act.replicas == {"m1": 3, "m2": 1} and all("m2" not in c for c in act.calls)
    last = {r["model"]: r for r in audits(sink)}
    assert last["m1"]["target"] == 3 and "min/max 1..3" in str(last["m1"]["guard"])
    assert last["m2"]["target"] == 1 and last["m2"]["recommended"] > 1 and "paused" in str(last["m2"]["guard"])


async def test_stale_events_fall_back_and_show_in_the_metrics() -> None:
    """Catches: deciding on stale data forever when a model's producers stop (KEDA's ``fallback``): after
    ``ingest.stale_s`` without events the model goes to its ``fallback_replicas``, the audit says why, and the
    staleness shows in ``shadowscale_event_age_seconds`` and ``shadowscale_fallback_active``."""
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0}, ingest={"stale_s": 10.0})
    data = msgspec.structs.asdict(cfg)
    cfg = msgspec.structs.replace(
        cfg, models=(msgspec.structs.replace(cfg.models[0], fallback_replicas=3), cfg.models[1])
    )
    assert data  # the first model falls back, the second has no fallback configured
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0), record(traffic("m2", 0.0, arrivals=1), 1)])]
    steps += [Step(2.0 * k, []) for k in range(1, 10)]  # 18 s without events
    act = RecordingActuator({"m1": 1, "m2": 1})
    sink = MemorySink()
    agent = Agent(cfg, ScriptedSource(clock, steps, stop), act, sink, clock)
    await run(agent, stop)
    assert act.replicas == {"m1": 3, "m2": 1}
    fell = [r for r in audits(sink) if r["model"] == "m1" and r["target"] == 3]
    assert fell and fell[0]["at"] > 10.0 and "fallback: no traffic events" in str(fell[0]["guard"])
    text = agent.metrics.render().decode()
    assert (
        'shadowscale_fallback_active{model="m1"} 1.0' in text and 'shadowscale_fallback_active{model="m2"} 0.0' in text
    )
    assert 'shadowscale_event_age_seconds{model="m2"} 18.0' in text


async def test_dead_letters_are_never_dropped_and_consumption_pauses_instead() -> None:
    """Catches: dropping buffered dead letters beyond the limit while their offsets are still committed (they
    were lost for good). With the broker refusing writes, the loop stops polling once ``kafka.max_unsent`` records
    wait, writes every one when the broker is back, and only then commits."""
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0, "max_unsent": 5})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    bad = [record(b"not json", k) for k in range(8)]
    steps = [Step(0.0, bad[:4]), Step(0.1, bad[4:]), Step(0.2, [record(b"not json", 8)]), Step(0.3, [])]
    source = ScriptedSource(clock, steps, stop)
    sink = MemorySink()
    sink.fail_next = 6
    agent = Agent(cfg, source, RecordingActuator({"m1": 1}), sink, clock)
    polls_while_paused = []
    orig = sink.write

    async def write(topic: str, records: Any) -> None:
        polls_while_paused.append((source.polls, agent.unsent()))
        await orig(topic, records)

    sink.write = write  # type: ignore[method-assign]
    await run(agent, stop)
    dead = [json.loads(v)["offset"] for _, v in sink.records[DEAD]]
    assert sorted(dead) == list(range(9))  # every one written, none dropped
    assert source.committed() == {("shadowscale.traffic", 0): 9}
    # while 8 (> 5) records waited, no further poll was made
    assert any(unsent == 8 for _, unsent in polls_while_paused)
    assert all(polls == 2 for polls, unsent in polls_while_paused if unsent == 8)


async def test_a_hung_commit_does_not_hold_the_loop() -> None:
    """Catches: awaiting a commit without a time limit — with the broker away the loop stood still for the
    outage's length (no decisions, no scale calls)."""
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0, "commit_timeout_s": 0.05})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()

    class Hung(ScriptedSource):
        async def commit(self, offsets: Any) -> None:
            await asyncio.sleep(3600)

    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)])]
    steps += [Step(1.0, [record(traffic("m1", 1.0, arrivals=400, concurrency_s=700.0), 1)])]
    act = RecordingActuator({"m1": 1})
    await asyncio.wait_for(Agent(cfg, Hung(clock, steps, stop), act, MemorySink(), clock).run(stop), 5)
    assert act.replicas["m1"] > 1


async def test_gpu_events_come_from_a_tail_every_replica_reads_and_are_never_committed() -> None:
    """Catches: GPU events read through the consumer group — keyed by node, each replica saw only the GPUs whose
    partitions it held, so a model's utilization could be invisible to its owner. A group-less tail hands every
    replica all of them; their offsets are not the group's to commit."""
    from shadowscale.agent.events import GPU_V1, GpuEvent, GpuPod, encode
    from shadowscale.policies.ports import RecordBatch

    class Tail:
        def __init__(self) -> None:
            self.sent = False

        async def poll_batches(self, max_records: int, timeout_s: float) -> list[RecordBatch]:
            if self.sent:
                return []
            self.sent = True
            g = GpuEvent(
                schema=GPU_V1,
                node="n7",
                gpu_uuid="GPU-x",
                gpu_index=0,
                event_time=0.0,
                utilization=0.9,
                memory_used_bytes=1,
                memory_total_bytes=2,
                pods=(GpuPod(pod="p0", model="m1"),),
            )
            return [RecordBatch("shadowscale.gpu", 3, [41], [b"n7"], [encode(g)])]

    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    source = ScriptedSource(clock, [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)]), Step(0.5, [])], stop)
    agent = Agent(cfg, source, RecordingActuator({"m1": 1}), MemorySink(), clock, gpu_source=Tail())
    await run(agent, stop)
    assert ("n7", "GPU-x") in agent.gpus and agent.counts.gpu == 1
    assert source.committed() == {("shadowscale.traffic", 0): 1}  # the GPU offset is not committed


async def test_right_sizing_recommends_a_measured_spec_after_its_learning_hour() -> None:
    """A model with measured alternative specs (policy shadowscale) gets, once the policy has watched it for
    ``spec_learn_s`` (1 h), the smallest share that serves its traffic: the audit record, the log and
    ``shadowscale_spec_recommended`` say so, and nothing is applied (the replica calls are the policy's alone).
    Mutations caught: the configured spec left out of the service's specs (the indices shift: "half" would be
    named), the index read without the configured one first (``specs[k]``: "half"), the recommendation shown
    before the learning hour."""
    models = [
        {
            "name": "m1",
            "capacity_rps": 100.0,
            "slo_ms": 200.0,
            "min_replicas": 1,
            "max_replicas": 5,
            "specs": [
                {"name": "quarter", "gpu_fraction": 0.25, "capacity_rps": 30.0},
                {"name": "half", "gpu_fraction": 0.5, "capacity_rps": 60.0},
            ],
        },
        {"name": "m2", "capacity_rps": 100.0, "min_replicas": 1, "max_replicas": 5},
    ]
    base = msgspec.structs.asdict(config(["m1", "m2"], policy="shadowscale", kafka={"commit_interval_s": 0.0}))
    cfg = parse_config(msgspec.to_builtins({**base, "models": models}), source="test")
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [
        Step(
            60.0 * k,
            [record(traffic(m, 60.0 * k, window_s=60.0, arrivals=120), 2 * k + j) for j, m in enumerate(("m1", "m2"))],
        )
        for k in range(70)  # 2 req/s for 70 minutes: the quarter GPU (30 req/s) serves it, bursts included
    ]
    act = RecordingActuator({"m1": 1, "m2": 1})
    sink = MemorySink()
    agent = Agent(cfg, ScriptedSource(clock, steps, stop), act, sink, clock)
    await run(agent, stop)
    recs = [r for r in audits(sink) if r["trigger"] == "tick"]
    m1 = [(r["at"], r["spec_recommended"]) for r in recs if r["model"] == "m1"]
    assert all(spec is None for at, spec in m1 if at < 3600.0), m1
    assert m1[-1] == (m1[-1][0], "quarter") and m1[-1][0] >= 3600.0, m1[-3:]
    assert all(r["spec_recommended"] is None for r in recs if r["model"] == "m2")
    text = agent.metrics.render().decode()
    assert 'shadowscale_spec_recommended{model="m1",spec="quarter"} 1.0' in text
    assert 'spec="half"' not in text and 'model="m2",spec' not in text
    assert all(set(c) <= {"m1", "m2"} for c in act.calls)  # only replica counts were ever set
