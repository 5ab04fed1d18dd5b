"""The trial-runner port: one method, implemented by the replay runner (datasets), the local runner (a real model
server on this machine) and the Kubernetes shadow runner.

A runner *measures*; the planner decides. It never raises for a trial that went wrong (crash, out of memory,
failed start, SLO never met, timeout): it returns a result saying so, and always cleans up what it created.
Declaring an ``async`` method needs no event loop, so this module stays pure.
"""

from __future__ import annotations

from typing import Protocol

from policies.profiling.types import Trial, TrialResult


class TrialRunner(Protocol):
    """Runs one profiling trial and returns what it measured (or why it could not)."""

    async def run_trial(self, trial: Trial) -> TrialResult: ...
