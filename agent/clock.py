"""Clocks for the decision loop (:class:`policies.ports.Clock`): wall time live, sped-up time for demos."""

from __future__ import annotations

import time


class WallClock:
    """Seconds since the epoch (``time.time``); deadlines are waited for in real seconds."""

    def now(self) -> float:
        return time.time()

    def wall_timeout(self, until: float) -> float:
        return max(0.0, until - time.time())


class ScaledClock:
    """Time that runs ``speed`` times faster than the wall clock, starting at ``start`` (default: now).

    A demo replays an hour of trace in a couple of minutes with every policy window (Knative's 60 s, HPA's 15 s
    sync) kept in trace time: the agent, the replayer and the simulated cluster share one such clock.
    """

    def __init__(self, speed: float, start: float | None = None) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = speed
        self.start = time.time() if start is None else start
        self._m0 = time.monotonic()

    def now(self) -> float:
        return self.start + (time.monotonic() - self._m0) * self.speed

    def wall_timeout(self, until: float) -> float:
        return max(0.0, (until - self.now()) / self.speed)
