"""Open-loop load over loopback: the capacity of a server at a p99 latency SLO.

:func:`probe` sends requests at a fixed rate for a while (open loop: a slow server does not slow the sender, so
queueing shows up as latency) and returns the p99 latency, counting every request that got no answer within the
drain time as infinitely late. :func:`find_capacity` raises the rate (doubling) until the SLO breaks, then bisects
between the last rate that met it and the first that did not, as Morphling's load client does. :func:`arrivals`
gives the send times of a step: evenly spaced (the default), Poisson, or observed inter-arrival gaps replayed at
the step's mean rate (so a bursty service is tested with its own burstiness).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

TICK_S = 0.002
"""Send granularity: every tick sends the requests that are due."""


@dataclass(frozen=True, slots=True)
class Step:
    """One load level: requests sent, answered, the p99 latency in ms (inf when >1 % went unanswered)."""

    rate: float
    sent: int
    answered: int
    p99_ms: float
    ttft_p99_ms: float | None = None
    """LLM targets: p99 time to first token, p99 time per output token and output tokens/s at this rate."""
    tpot_p99_ms: float | None = None
    tokens_per_s: float | None = None


Arrival = Literal["uniform", "poisson"]


def arrivals(
    rate: float,
    duration_s: float,
    *,
    arrival: Arrival = "uniform",
    gaps: Sequence[float] = (),
    seed: int = 0,
) -> npt.NDArray[np.float64]:
    """Send times (seconds from the step's start, ascending, all ``< duration_s``) at a mean of ``rate``/s.

    ``uniform``: request ``k`` at ``k / rate``. ``poisson``: exponential gaps. With ``gaps`` (observed
    inter-arrival times, any unit: only their ratios matter) they are replayed in order from a seeded starting
    point, cycled, and scaled so their mean is ``1 / rate``; ``arrival`` is then ignored.
    """
    if not rate > 0 or not duration_s > 0:
        raise ValueError(f"arrivals: rate and duration_s must be positive, got {rate} and {duration_s}")
    n_mean = rate * duration_s
    if len(gaps):
        g = np.asarray(gaps, dtype=np.float64)
        if not (np.all(np.isfinite(g)) and np.all(g >= 0) and g.sum() > 0):
            raise ValueError("arrivals: gaps must be finite, >= 0 and not all 0")
        g = g / g.mean() / rate
        start = np.random.default_rng(seed).integers(len(g))
        reps = math.ceil((n_mean * 1.5 + 16) / len(g)) + 1
        seq = np.roll(np.tile(g, reps), -int(start))
        t = np.concatenate(([0.0], np.cumsum(seq)[:-1]))
    elif arrival == "poisson":
        rng = np.random.default_rng(seed)
        n = int(n_mean + 8 * math.sqrt(n_mean) + 16)
        t = np.concatenate(([0.0], np.cumsum(rng.exponential(1.0 / rate, n))))
        while t[-1] < duration_s:  # 8 standard deviations short: practically never
            t = np.concatenate((t, t[-1] + np.cumsum(rng.exponential(1.0 / rate, n))))
    elif arrival == "uniform":
        t = np.arange(math.ceil(n_mean) + 1, dtype=np.float64) / rate
    else:
        raise ValueError(f"arrivals: arrival must be 'uniform' or 'poisson', got {arrival!r}")
    return t[t < duration_s]


async def probe(
    host: str,
    port: int,
    rate: float,
    duration_s: float,
    drain_s: float,
    offsets: npt.NDArray[np.float64] | None = None,
) -> Step:
    """Send ``rate`` requests/s for ``duration_s`` over one connection and wait up to ``drain_s`` for answers.

    ``offsets`` (from :func:`arrivals`) are the send times; default evenly spaced."""
    send_at = arrivals(rate, duration_s) if offsets is None else offsets
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
        total = len(send_at)
        while (now := time.perf_counter()) - start < duration_s and n < total:
            due = int(np.searchsorted(send_at, now - start, side="right"))
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
