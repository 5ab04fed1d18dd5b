"""``/metrics`` (Prometheus text format), ``/healthz`` (the decision loop is alive) and ``/readyz`` (it has observed
the cluster and polled its source once) on a small aiohttp server."""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from shadowscale.agent.loop import Agent


def make_app(agent: Agent, alive: Callable[[], bool], stale_s: float = 30.0) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=agent.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        age = time.monotonic() - agent.last_iteration
        if alive() and age < stale_s:
            return web.Response(text="ok\n")
        return web.Response(status=503, text=f"decision loop not running (last iteration {age:.1f} s ago)\n")

    async def readyz(_: web.Request) -> web.Response:
        if agent.ready.is_set() and alive():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class HttpServer:
    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.runner = web.AppRunner(app, access_log=None)
        self.host = host
        self.port = port

    async def start(self) -> int:
        """Start listening; return the bound port (useful with port 0)."""
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
