"""Open-loop load over loopback: the capacity of a server at a p99 latency SLO.

:func:`probe` sends requests at a fixed rate for a while (open loop: a slow server does not slow the sender, so
queueing shows up as latency) and returns the p99 latency, counting every request that got no answer within the
drain time as infinitely late. :func:`find_capacity` raises the rate (doubling) until the SLO breaks, then bisects
between the last rate that met it and the first that did not, as Morphling's load client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

TICK_S = 0.002
"""Send granularity: every tick sends the requests that are due."""


@dataclass(frozen=True, slots=True)
class Step:
    """One load level: requests sent, answered, the p99 latency in ms (inf when >1 % went unanswered)."""

    rate: float
    sent: int
    answered: int
    p99_ms: float


async def probe(host: str, port: int, rate: float, duration_s: float, drain_s: float) -> Step:
    """Send ``rate`` requests/s for ``duration_s`` over one connection and wait up to ``drain_s`` for answers."""
    reader, writer = await asyncio.open_connection(host, port)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []

    async def receive() -> None:
        while line := await reader.readline():
            t = sent_at.pop(int(line), None)
            if t is not None:
                latencies.append(time.perf_counter() - t)

    rx = asyncio.create_task(receive())
    try:
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < duration_s:
            due = int((now - start) * rate) + 1
            burst = []
            while n < due:
                sent_at[n] = time.perf_counter()
                burst.append(b"%d\n" % n)
                n += 1
            if burst:
                writer.write(b"".join(burst))
                await writer.drain()
            await asyncio.sleep(TICK_S)
        deadline = time.perf_counter() + drain_s
        while sent_at and time.perf_counter() < deadline and not rx.done():
            await asyncio.sleep(TICK_S)
    finally:
        rx.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await rx
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    lat = np.array(latencies + [math.inf] * len(sent_at), dtype=np.float64)
    p99 = float(np.percentile(lat, 99, method="higher")) * 1000.0 if len(lat) else math.inf
    return Step(rate, n, len(latencies), p99)


Probe = Callable[[float], Awaitable[Step]]


@dataclass(frozen=True, slots=True)
class Capacity:
    """The highest rate that met the SLO (0 if even the first did not), its p99, and every step measured."""

    rate: float
    p99_ms: float
    steps: tuple[Step, ...]


async def find_capacity(
    measure: Probe, slo_ms: float, *, start_rps: float, max_rps: float, bisect_steps: int
) -> Capacity:
    """Double the rate from ``start_rps`` until the p99 exceeds ``slo_ms`` (or ``max_rps`` is met), then bisect
    ``bisect_steps`` times between the last good and the first bad rate."""
    steps: list[Step] = []
    good: Step | None = None
    bad: Step | None = None
    rate = start_rps
    while True:
        s = await measure(rate)
        steps.append(s)
        if s.p99_ms <= slo_ms:
            good = s
            if rate >= max_rps:
                break
            rate = min(rate * 2, max_rps)
        else:
            bad = s
            break
    if good is None:
        return Capacity(0.0, steps[0].p99_ms, tuple(steps))
    if bad is not None:
        lo, hi = good.rate, bad.rate
        for _ in range(bisect_steps):
            mid = (lo + hi) / 2
            s = await measure(mid)
            steps.append(s)
            if s.p99_ms <= slo_ms:
                lo, good = mid, s
            else:
                hi = mid
    return Capacity(good.rate, good.p99_ms, tuple(steps))
