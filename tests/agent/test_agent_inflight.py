"""Scale calls run in the background: a slow or hung Kubernetes call holds neither the batch, nor the other
models, nor any partition's commits beyond ``kafka.max_commit_hold_s``; revocation waits at most
``REVOKE_WAIT_S`` for calls in flight and cancels the rest; one call per model at a time, the newest target after."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping

import pytest
from agent_fakes import MemorySink, RecordingActuator, ScriptedSource, Step, VirtualClock, config, record, traffic

from shadowscale.agent.loop import REVOKE_WAIT_S, Agent
from shadowscale.policies.ports import ScaleResult

pytestmark = pytest.mark.asyncio
TRAFFIC = "shadowscale.traffic"
DECISIONS = "shadowscale.decisions"


def busy(model: str, t: float, offset: int, partition: int, arrivals: int = 400) -> object:
    return record(
        traffic(model, t, arrivals=arrivals, concurrency_s=arrivals * 1.75, pod=f"p{offset}"),
        offset,
        partition=partition,
    )


class Hanging(RecordingActuator):
    """Calls for ``hang`` never return (until cancelled); the others are applied at once."""

    def __init__(self, replicas: Mapping[str, int], hang: set[str]) -> None:
        super().__init__(replicas)
        self.hang = hang
        self.cancelled: list[str] = []

    async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
        if self.hang & set(targets):
            self.calls.append(dict(targets))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.extend(targets)
                raise
        return await super().scale(targets)


async def test_a_scale_call_that_never_returns_holds_no_other_partition_and_its_own_only_for_the_hold() -> None:
    """Catches: awaiting the scale call inside the loop (the whole loop, every model and every commit stopped
    behind m1's hung call: the run times out), holding m1's partition until the call returns (partition 0 would
    never commit past the batch that started it), and holding every partition for it (partition 1 would not
    commit while m1's call hangs)."""
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0, "max_commit_hold_s": 2.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [
        Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0), record(traffic("m2", 0.0, arrivals=1), 0, partition=1)])
    ]
    steps += [Step(1.0, [busy("m1", 1.0, 1, 0)])]  # m1's call starts here and never returns
    for k in range(2, 60):  # 6 s of traffic on both partitions
        t = 1.0 + 0.1 * k
        steps.append(Step(t, [busy("m1", t, k, 0), busy("m2", t, k, 1)]))
    source = ScriptedSource(clock, steps, stop, partitions={"m1": 0, "m2": 1})
    act = Hanging({"m1": 1, "m2": 1}, hang={"m1"})
    agent = Agent(cfg, source, act, MemorySink(), clock)
    await asyncio.wait_for(agent.run(stop), 5)

    assert act.replicas["m2"] > 1 and act.replicas["m1"] == 1
    assert [c for c in act.calls if "m1" in c] == [act.calls[0]]  # one call per model at a time: never a second
    assert act.cancelled == ["m1"]  # ended by the stop, after REVOKE_WAIT_S
    # partition 1 committed while m1's call hung (its commits began before the hold on partition 0 ran out)
    p1_while_held = [c[(TRAFFIC, 1)] for c in source.commits[:10] if (TRAFFIC, 1) in c]
    assert p1_while_held and max(p1_while_held) >= 5, source.commits[:10]
    # partition 0 was held from 1.0 for 2 s of the agent's clock, then committed as it went (up to offset 59 at
    # 6.9 s; the final commit, with the call cancelled, holds the rest for the next owner)
    p0 = [c[(TRAFFIC, 0)] for c in source.commits if (TRAFFIC, 0) in c]
    assert p0[0] == 1 and max(p0) >= 50, p0
    assert sorted(p0) == p0


async def test_revocation_cancels_a_hung_call_after_the_wait_and_commits_nothing_behind_it() -> None:
    """Catches: waiting for calls in flight without a bound on revocation (the rebalance callback would not
    return: the consumer's revoke time-out runs out and the group waits for it), committing the offsets behind the
    cancelled call (the new owner would not replay the events behind that target: lost), and keeping its target
    pending on a replica that no longer owns the model."""
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0, "max_commit_hold_s": 60.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = [
        Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0), record(traffic("m2", 0.0, arrivals=1), 0, partition=1)])
    ]
    steps += [Step(1.0, [busy("m1", 1.0, 1, 0), busy("m2", 1.0, 1, 1)])]
    steps += [
        Step(1.0 + 0.1 * k, [record(traffic("m2", 1.0 + 0.1 * k, arrivals=1, pod="q"), 1 + k, partition=1)])
        for k in range(1, 5)
    ]
    source = ScriptedSource(clock, steps, stop, partitions={"m1": 0, "m2": 1})
    act = Hanging({"m1": 1, "m2": 1}, hang={"m1"})
    agent = Agent(cfg, source, act, MemorySink(), clock)
    source.stop = asyncio.Event()  # the script ending does not stop the agent: the test does
    loop = asyncio.create_task(agent.run(stop))
    try:
        while source.polls < len(steps):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert "m1" in agent.inflight
        t0 = time.monotonic()

        async def revoke() -> dict[tuple[str, int], int]:
            await agent._commit_before_rebalance()
            return source.committed()  # as the rebalance completes (the partitions are the new owner's from here)

        committed = await asyncio.wait_for(revoke(), REVOKE_WAIT_S + 1.5)
        assert time.monotonic() - t0 < REVOKE_WAIT_S + 1.0
        assert act.cancelled == ["m1"] and not agent.inflight and not agent.pending
        assert committed[(TRAFFIC, 0)] == 1, committed  # offset 1 (behind the cancelled call) left for the new owner
        assert committed[(TRAFFIC, 1)] == 6, committed  # m2's partition: everything handled
    finally:
        stop.set()
        await asyncio.wait_for(loop, 5)


async def test_a_newer_target_waits_for_the_call_in_flight_and_is_applied_after_it() -> None:
    """Catches: starting a second call for a model whose call is still in flight — from a newer decision, or from
    its pending target's back-off running out meanwhile (two concurrent writes to one workload: the older one may
    land last) — and dropping the target decided meanwhile (the workload would stay at the first, smaller one)."""
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    release = asyncio.Event()
    running = 0
    most = 0

    class Slow(RecordingActuator):
        """The first call fails at once (the target becomes pending), the retry hangs until released."""

        async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
            nonlocal running, most
            running += 1
            most = max(most, running)
            n = len(self.calls)
            try:
                if n == 0:
                    self.calls.append(dict(targets))
                    return ScaleResult(failed={m: "HTTP 500 (injected)" for m in targets})
                if n == 1:
                    self.calls.append(dict(targets))
                    await release.wait()
                    self.calls.pop()
                return await super().scale(targets)
            finally:
                running -= 1

    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)])]
    steps += [Step(1.0, [busy("m1", 1.0, 1, 0, arrivals=100)])]  # first target: its call fails
    steps += [Step(1.6, [busy("m1", 1.6, 2, 0, arrivals=100)])]  # back-off over: the retry hangs until released
    steps += [Step(1.7 + 0.1 * k, [busy("m1", 1.7 + 0.1 * k, 3 + k, 0, arrivals=1000)]) for k in range(4)]
    steps += [Step(2.1 + 0.1 * k, []) for k in range(12)]  # the tick at 2.0 decided more; the back-off is long over

    class Releasing(ScriptedSource):
        async def poll(self, max_records: int, timeout_s: float) -> object:
            if self.polls == 14:
                release.set()
                await asyncio.sleep(0.01)
            return await super().poll(max_records, timeout_s)

    source = Releasing(clock, steps, stop, partitions={"m1": 0})
    act = Slow({"m1": 1})
    sink = MemorySink()
    agent = Agent(cfg, source, act, sink, clock)
    await asyncio.wait_for(agent.run(stop), 5)
    assert most == 1
    failed, retried, *later = act.calls
    assert retried == failed
    assert later and later[-1]["m1"] > retried["m1"], act.calls
    assert act.replicas["m1"] == later[-1]["m1"]


async def test_a_decision_whose_call_outlives_the_iteration_is_audited_with_its_outcome() -> None:
    """Catches: writing the audit record when the loop moves on (``applied: false`` for a scale that did take
    effect a moment later), and never writing it at all."""
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    release = asyncio.Event()

    class Slow(RecordingActuator):
        async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
            await release.wait()
            return await super().scale(targets)

    class Releasing(ScriptedSource):
        async def poll(self, max_records: int, timeout_s: float) -> object:
            if self.polls == 4:
                release.set()
                await asyncio.sleep(0.01)
            return await super().poll(max_records, timeout_s)

    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)]), Step(1.0, [busy("m1", 1.0, 1, 0)])]
    steps += [Step(1.0 + 0.1 * k, []) for k in range(1, 6)]
    source = Releasing(clock, steps, stop, partitions={"m1": 0})
    act = Slow({"m1": 1})
    sink = MemorySink()
    agent = Agent(cfg, source, act, sink, clock)
    await asyncio.wait_for(agent.run(stop), 5)
    recs = [json.loads(v) for _, v in sink.records.get(DECISIONS, [])]
    assert act.replicas["m1"] > 1
    at_1 = [r for r in recs if r["at"] == 1.0]
    assert [(r["target"], r["applied"]) for r in at_1] == [(act.replicas["m1"], True)], recs
    assert at_1[0]["latency_ms"] >= 50.0  # measured to the call's end, not to the iteration's


async def test_calls_that_follow_one_another_hold_their_partition_no_longer_than_the_hold_in_all() -> None:
    """Two models on one partition whose scale calls each take 1.5 s (of the agent's clock) and follow one another
    (demand keeps rising, so each call ends with a newer target waiting): every call is younger than the 2 s hold,
    yet the partition commits at least every hold plus one step.

    Catches: a hold counted per call or per model only (each call started less than 2 s ago, so the partition was
    held from the first call to the end of the run: found in ``bench chaos``, where a partition of two busy models
    went 12 s without a commit while 80 % of scale calls failed or timed out)."""
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0, "max_commit_hold_s": 2.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()

    class Slow(RecordingActuator):
        async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
            self.calls.append(dict(targets))
            start = clock.t
            while clock.t < start + 1.5:
                await asyncio.sleep(0.001)
            return await super().scale(targets)

    times: list[tuple[float, dict[tuple[str, int], int]]] = []

    class Timed(ScriptedSource):
        async def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
            times.append((clock.t, dict(offsets)))
            await super().commit(offsets)

    steps = []
    for k in range(120):  # 12 s, demand of both models rising all the time
        t = 0.1 * k
        steps.append(Step(t, [busy("m1", t, 2 * k, 0, arrivals=20 + 8 * k), busy("m2", t, 2 * k + 1, 0, 20 + 8 * k)]))
    source = Timed(clock, steps, stop, partitions={"m1": 0, "m2": 0})
    act = Slow({"m1": 1, "m2": 1})
    agent = Agent(cfg, source, act, MemorySink(), clock)
    await asyncio.wait_for(agent.run(stop), 30)
    assert len(act.calls) >= 6, act.calls  # the calls did follow one another
    at = [t for t, c in times if (TRAFFIC, 0) in c]
    gaps = [b - a for a, b in zip([0.0, *at], at, strict=False)]
    assert at and max(gaps) <= 2.0 + 0.25, (at, act.calls)
    assert at[-1] >= 10.0, at
