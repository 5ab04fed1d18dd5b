"""A tiny inference server that publishes its traffic with the shadowscale SDK.

    pip install uvicorn
    SHADOWSCALE_BOOTSTRAP=127.0.0.1:9092 POD_NAME=echo-0 python examples/traffic_server.py
    curl -d '{"x": 1}' localhost:8000/predict

It batches nothing; it reports a batch of one per request so ``batch_size_mean`` and ``busy_s`` are filled. The
broker may be down: requests are served all the same, and the reporter logs and retries.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any

from shadowscale.agent.producers.sdk import TrafficMiddleware, TrafficReporter

reporter = TrafficReporter(
    os.environ.get("MODEL", "echo"), bootstrap=os.environ.get("SHADOWSCALE_BOOTSTRAP", "127.0.0.1:9092")
)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                reporter.start()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await asyncio.to_thread(reporter.close)
                await send({"type": "lifespan.shutdown.complete"})
                return
    t = time.perf_counter()
    await asyncio.sleep(random.uniform(0.005, 0.02))  # the "model"
    reporter.record_batch(1, busy_s=time.perf_counter() - t)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})


application = TrafficMiddleware(app, reporter)

if __name__ == "__main__":
    import uvicorn  # type: ignore[import-not-found]

    uvicorn.run(application, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
