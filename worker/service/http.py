"""The worker's HTTP endpoints: /metrics for Prometheus, /healthz and /readyz as JSON."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

Health = Callable[[], dict[str, Any]]
Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class HttpServer:
    """A small aiohttp server on the worker's event loop.

    Args:
        host: address to bind.
        port: TCP port; 0 picks a free one (see ``port`` after ``start``).
        registry: the Prometheus registry to expose.
        health: returns per-watcher detail for /healthz.
        readiness: returns (ready, detail) for /readyz.
    """

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        health: Health,
        readiness: Readiness,
    ) -> None:
        self.host, self.port = host, port
        self.registry, self.health, self.readiness = registry, health, readiness
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            # aiohttp keeps the bound sockets on the runner's addresses
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        # a responsive loop answers a zero sleep at once; a blocked one shows its lag here
        started = time.perf_counter()
        await asyncio.sleep(0)
        lag_ms = round((time.perf_counter() - started) * 1000, 3)
        return web.json_response({"status": "ok", "loop_lag_ms": lag_ms, **self.health()})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, detail = self.readiness()
        return web.json_response({"ready": ready, **detail}, status=200 if ready else 503)
