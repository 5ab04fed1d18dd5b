"""Exactly one replica actuates a model, and one failing model neither floods the API nor stalls the others'
commits: ownership checked at the call, pending targets dropped on revocation, per-model back-off, commits held
per partition and only for ``kafka.max_commit_hold_s``."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from agent_fakes import MemorySink, RecordingActuator, ScriptedSource, Step, VirtualClock, config, record, traffic

from shadowscale.agent.loop import Agent
from shadowscale.policies.ports import ScaleResult

pytestmark = pytest.mark.asyncio
TRAFFIC = "shadowscale.traffic"


def busy(model: str, t: float, offset: int, partition: int) -> object:
    return record(traffic(model, t, arrivals=400, concurrency_s=700.0, pod=f"p{offset}"), offset, partition=partition)


async def test_one_failing_model_backs_off_and_the_others_commit() -> None:
    """Catches: no back-off (m1 called on every pass: ~200 calls instead of under 12), commits waiting for every
    pending target across all partitions (partition 1 would not commit while m1 fails), and holding a partition
    forever (partition 0 would never commit past m1's first failure)."""
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0, "max_commit_hold_s": 5.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    steps = []
    for k in range(200):  # 20 s of traffic: m1 on partition 0, m2 on partition 1
        t = 0.1 * k
        steps.append(Step(t, [busy("m1", t, k, 0), busy("m2", t, k, 1)]))
    source = ScriptedSource(clock, steps, stop, partitions={"m1": 0, "m2": 1})
    act = RecordingActuator({"m1": 1, "m2": 1})
    act.always_fail = {"m1"}
    agent = Agent(cfg, source, act, MemorySink(), clock)
    await asyncio.wait_for(agent.run(stop), 20)

    m1_calls = sum("m1" in c for c in act.calls)
    assert 3 <= m1_calls <= 12, m1_calls  # 0.5 s doubling (x0.5..1 jitter) up to 30 s over 20 s
    assert act.replicas["m2"] > 1
    # partition 1 committed as it went, while m1 was pending
    early = [c for c in source.commits[:40] if (TRAFFIC, 1) in c]
    assert early and max(c[(TRAFFIC, 1)] for c in early) >= 10
    # partition 0 was held, but not for longer than max_commit_hold_s of the agent's clock
    p0 = [c[(TRAFFIC, 0)] for c in source.commits if (TRAFFIC, 0) in c]
    assert p0 and max(p0) >= 150
    assert agent.pending and next(iter(agent.pending.values())).plan.model == "m1"


async def test_a_model_that_moved_away_is_never_scaled_again() -> None:
    """Catches: retrying a pending target (or applying a plan) for a model whose partition now belongs to another
    replica — the old owner kept scaling it 16 times in 1.5 s."""
    cfg = config(["m1", "m2"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    owned = {"m1", "m2"}
    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)]), Step(1.0, [busy("m1", 1.0, 1, 0)])]
    steps += [Step(1.0 + 0.5 * k, []) for k in range(1, 20)]
    source = ScriptedSource(clock, steps, stop, owned=owned, partitions={"m1": 0, "m2": 1})
    act = RecordingActuator({"m1": 1, "m2": 1})
    act.always_fail = {"m1"}

    orig_scale = act.scale

    async def scale(targets: Mapping[str, int]) -> ScaleResult:
        result = await orig_scale(targets)
        owned.discard("m1")  # the rebalance lands while the (failed) call was in flight
        return result

    act.scale = scale  # type: ignore[method-assign]
    agent = Agent(cfg, source, act, MemorySink(), clock)
    await asyncio.wait_for(agent.run(stop), 10)
    assert [c for c in act.calls if "m1" in c] == [act.calls[0]]  # the one call made while it was owned
    assert not agent.pending


async def test_revocation_waits_for_the_call_in_flight_and_commits_nothing_behind_it() -> None:
    """Catches: committing a batch's offsets in the revocation callback while its scale call is still in flight
    (the call then fails and the events behind the target are lost to the new owner), and a fence that still
    lets calls start during the revocation."""
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    started, release = asyncio.Event(), asyncio.Event()

    class Slow(RecordingActuator):
        async def scale(self, targets: Mapping[str, int]) -> ScaleResult:
            self.calls.append(dict(targets))
            started.set()
            await release.wait()
            return ScaleResult(failed={m: "HTTP 500 (injected)" for m in targets})

    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)]), Step(1.0, [busy("m1", 1.0, 1, 0)])]
    steps += [Step(1.0 + 0.1 * k, []) for k in range(1, 5)]
    source = ScriptedSource(clock, steps, stop, partitions={"m1": 0})
    act = Slow({"m1": 1})
    agent = Agent(cfg, source, act, MemorySink(), clock)
    loop = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(started.wait(), 5)
    revoke = asyncio.create_task(agent._commit_before_rebalance())
    await asyncio.sleep(0.05)
    assert not revoke.done() and not agent.may_actuate("m1")  # fenced, waiting for the call in flight
    assert source.committed() == {(TRAFFIC, 0): 1}  # offset 1 (behind the call) not committed
    release.set()
    await asyncio.wait_for(revoke, 5)
    assert source.committed() == {(TRAFFIC, 0): 1} and not agent.pending
    assert agent.may_actuate("m1")  # the fence lifts once the rebalance callback returned
    await asyncio.wait_for(loop, 10)


async def test_a_model_that_keeps_failing_holds_commits_once_not_after_every_rebalance() -> None:
    """Catches: the commit hold restarting each time a rebalance drops the failing model's pending target and the
    next failure creates it again (in the chaos benchmark every membership change stalled that partition anew)."""
    cfg = config(["m1"], kafka={"commit_interval_s": 0.0, "max_commit_hold_s": 2.0})
    clock = VirtualClock(0.0)
    stop = asyncio.Event()
    agent: Agent | None = None

    class Rebalancing(ScriptedSource):
        async def poll(self, max_records: int, timeout_s: float) -> object:
            if self.polls == 5 and agent is not None:  # before the step at 4.0: a rebalance drops pending targets
                await agent._commit_before_rebalance()
            return await super().poll(max_records, timeout_s)

    steps = [Step(0.0, [record(traffic("m1", 0.0, arrivals=1), 0)])]
    steps += [Step(t, [busy("m1", t, k, 0)]) for k, t in enumerate((1.0, 2.0, 3.5, 3.8, 4.0, 4.5, 4.6), start=1)]
    source = Rebalancing(clock, steps, stop, partitions={"m1": 0})
    act = RecordingActuator({"m1": 1})
    act.always_fail = {"m1"}
    agent = Agent(cfg, source, act, MemorySink(), clock)
    await asyncio.wait_for(agent.run(stop), 10)
    p0 = [c[(TRAFFIC, 0)] for c in source.commits if (TRAFFIC, 0) in c]
    # held from the first failure at 1.0 until 3.0; after the rebalance at 4.0 the new failure holds nothing
    assert 6 in p0 and 7 in p0 and 8 in p0, p0
