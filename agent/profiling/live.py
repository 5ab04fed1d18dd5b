"""What the agent calls to run Kubernetes shadow trials: the results consumer, the runner, and the start-up cleanup.

``async with shadow_profiling(api, workloads, kafka, settings) as runner:`` starts the trial-results consumer
(:class:`~agent.profiling.results.KafkaTrialResults`, positioned at the trials topic's end before any trial can
start), builds the :class:`~agent.profiling.shadow.ShadowTrialRunner` and calls its ``cleanup()`` once, so shadow
Deployments and load-generator Jobs left by an agent that died mid-trial are deleted before new ones are made.
On exit the consumer stops; runs still in flight are the caller's to cancel first (each tears its objects down).

The agent app (``agent/app.py``) is meant to enter it once at start, where it builds its Kubernetes client, when
profiling is configured, and to hand ``runner`` to :func:`agent.profiling.driver.run_search` together with one
shared :class:`~agent.profiling.driver.TrialGate`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog

from shadowscale.agent.config import KafkaConfig
from shadowscale.agent.profiling.results import KafkaTrialResults
from shadowscale.agent.profiling.shadow import ShadowSettings, ShadowTrialRunner, Workload

log = structlog.get_logger("shadowscale.profiling")


@asynccontextmanager
async def shadow_profiling(
    api: Any,
    workloads: Mapping[str, Workload],
    kafka: KafkaConfig,
    settings: ShadowSettings,
    *,
    create_topic: bool = False,
    partitions: int = 4,
    observed_gaps: Callable[[str], Sequence[float]] | None = None,
) -> AsyncIterator[ShadowTrialRunner]:
    """A ready shadow runner whose results arrive from Kafka, with orphaned shadow objects removed first.

    ``api`` is a kubernetes-asyncio ``ApiClient``; ``kafka`` is the agent's Kafka section (the consumer reads
    ``settings.results_topic``, created when ``create_topic``). Raises ``KafkaUnavailable`` when the broker cannot
    be reached or the topic does not exist, and a ``ValueError`` for settings the runner cannot use.
    """
    results = KafkaTrialResults(kafka, settings.results_topic, create_topic=create_topic, partitions=partitions)
    # checks the settings before connecting
    runner = ShadowTrialRunner(api, workloads, results, settings, observed_gaps=observed_gaps)
    await results.start()
    try:
        removed = await runner.cleanup()
        if removed:
            log.warning("removed shadow objects left by an earlier agent", count=removed)
        yield runner
    finally:
        await results.stop()
