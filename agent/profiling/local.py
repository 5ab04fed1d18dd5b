"""The local trial runner: a real model server process on this machine, load-tested over loopback.

For each trial it starts ``python -m agent.profiling.server`` (see :mod:`agent.profiling.server`) with the
configuration's ``threads`` and ``batch`` (any other key goes to the server's environment as
``SHADOWSCALE_PARAM_<KEY>``, Morphling's "env or arg" tunables), waits for ``READY <port>``, finds the highest
request rate whose p99 latency meets the trial's SLO (:func:`agent.profiling.loadtest.find_capacity`) and stops
the server. It never raises for a bad trial: a server that exits (bad configuration, out of memory, crash), does
not get ready in time, or a trial past its deadline is a failed result with the reason and the server's last
words. The server process is killed in every case.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from shadowscale.agent.profiling.loadtest import Step, find_capacity, probe
from shadowscale.policies.profiling.types import Trial, TrialResult, TrialStatus

SERVER = (sys.executable, "-m", "shadowscale.agent.profiling.server")


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """How a local trial runs; the defaults take about 15–30 s a trial, tests use much shorter steps."""

    command: Sequence[str] = SERVER
    """The server to start; ``--threads``, ``--batch`` and ``server_args`` are appended."""
    server_args: Sequence[str] = ()
    step_s: float = 2.0
    """Seconds of load per rate step."""
    start_rps: float = 50.0
    max_rps: float = 20_000.0
    bisect_steps: int = 4
    ready_timeout_s: float = 20.0
    env: dict[str, str] = field(default_factory=dict)


class LocalTrialRunner:
    """A :class:`~policies.profiling.ports.TrialRunner` that measures a real local server process."""

    def __init__(self, settings: LocalSettings | None = None) -> None:
        self.settings = settings or LocalSettings()

    async def run_trial(self, trial: Trial) -> TrialResult:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(trial.timeout_s):
                return await self._run(trial, t0)
        except TimeoutError:
            return TrialResult.failed(f"timed out after {trial.timeout_s:g} s", time.perf_counter() - t0)

    def _command(self, trial: Trial) -> tuple[list[str], dict[str, str]]:
        cfg = dict(trial.config)
        missing = [k for k in ("threads", "batch") if k not in cfg]
        if missing:
            raise ValueError(f"configuration lacks {', '.join(missing)}")
        cmd = [*self.settings.command, "--threads", str(int(cfg.pop("threads"))), "--batch", str(int(cfg.pop("batch")))]
        env = {**os.environ, **self.settings.env, "SHADOWSCALE_TRIAL_ID": trial.trial_id}
        env.update({f"SHADOWSCALE_PARAM_{k.upper()}": str(v) for k, v in cfg.items()})
        return [*cmd, *self.settings.server_args], env

    async def _run(self, trial: Trial, t0: float) -> TrialResult:
        try:
            cmd, env = self._command(trial)
        except (ValueError, TypeError) as e:
            return TrialResult.failed(f"bad configuration: {e}")
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        try:
            port = await self._ready(proc)
            if port is None:
                return await self._exited(proc, "the server exited before it was ready", t0)
            st = self.settings
            drain = max(0.2, 3 * trial.slo_ms / 1000.0)

            async def measure(rate: float) -> Step:
                if proc.returncode is not None:
                    raise _Crashed
                return await probe("127.0.0.1", port, rate, st.step_s, drain)

            try:
                cap = await find_capacity(
                    measure, trial.slo_ms, start_rps=st.start_rps, max_rps=st.max_rps, bisect_steps=st.bisect_steps
                )
            except (_Crashed, ConnectionError):
                return await self._exited(proc, "the server died during the load test", t0)
            if proc.returncode is not None:
                return await self._exited(proc, "the server died during the load test", t0)
            return TrialResult(
                TrialStatus.MEASURED,
                throughput=cap.rate,
                p99_ms=cap.p99_ms if math.isfinite(cap.p99_ms) else math.inf,
                wall_s=time.perf_counter() - t0,
                details={"steps": float(len(cap.steps)), "first_p99_ms": cap.steps[0].p99_ms},
            )
        except TimeoutError:
            return TrialResult.failed(
                f"the server was not ready within {self.settings.ready_timeout_s:g} s", time.perf_counter() - t0
            )
        finally:
            await _stop(proc)

    async def _ready(self, proc: asyncio.subprocess.Process) -> int | None:
        """The port from ``READY <port>``; None if the server exits first; TimeoutError if it takes too long."""
        assert proc.stdout is not None
        async with asyncio.timeout(self.settings.ready_timeout_s):
            while line := await proc.stdout.readline():
                parts = line.decode(errors="replace").split()
                if len(parts) == 2 and parts[0] == "READY" and parts[1].isdigit():
                    return int(parts[1])
        return None

    async def _exited(self, proc: asyncio.subprocess.Process, what: str, t0: float) -> TrialResult:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 2.0)
        tail = ""
        if proc.stderr is not None and proc.returncode is not None:
            with contextlib.suppress(TimeoutError):
                err = await asyncio.wait_for(proc.stderr.read(), 1.0)
                tail = err.decode(errors="replace").strip().splitlines()[-1:][0] if err.strip() else ""
        code = "" if proc.returncode is None else f" (exit code {proc.returncode})"
        return TrialResult.failed(f"{what}{code}{': ' + tail if tail else ''}", time.perf_counter() - t0)


class _Crashed(Exception):
    pass


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Terminate, then kill, and reap the server (always; also when the trial is cancelled)."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.shield(asyncio.wait_for(proc.wait(), 2.0))
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
