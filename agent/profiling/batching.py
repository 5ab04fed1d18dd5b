"""Dynamic batching for the model servers trials measure: the one rule both servers share."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def next_batch(queue: asyncio.Queue[T], batch: int, max_wait_s: float) -> list[T]:
    """Wait for a first request, then take more until ``batch`` are in hand or ``max_wait_s`` has passed since
    the first (a partial batch goes when the wait runs out)."""
    loop = asyncio.get_running_loop()
    items = [await queue.get()]
    deadline = loop.time() + max_wait_s
    while len(items) < batch:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            items.append(await asyncio.wait_for(queue.get(), left))
        except TimeoutError:
            break
    return items
