"""Named, guarded tasks: every long-running loop of the agent is started through :func:`guarded`."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

log = structlog.get_logger("shadowscale.tasks")

_running: set[asyncio.Task[Any]] = set()


def guarded(
    coro: Coroutine[Any, Any, None], name: str, stop: asyncio.Event, *, fatal: bool = True
) -> asyncio.Task[None]:
    """Start ``coro`` as a task called ``name``. If it ends with an exception the exception is logged and, when
    ``fatal``, ``stop`` is set so the whole agent shuts down (a dead loop must not look alive); a task that returns
    while ``stop`` is unset is logged as well. The task keeps a strong reference until it is done."""
    task = asyncio.create_task(coro, name=name)
    _running.add(task)

    def done(t: asyncio.Task[None]) -> None:
        _running.discard(t)
        if t.cancelled():
            return
        exc = t.exception()
        if exc is not None:
            log.error("task crashed", task=name, error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            if fatal:
                stop.set()
        elif not stop.is_set():
            log.warning("task ended", task=name)

    task.add_done_callback(done)
    return task
