"""The HTTP endpoints over a real socket: metrics text, health and readiness JSON."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from changestream_worker.metrics import Metrics
from changestream_worker.service.http import HttpServer


class TestHttpServer:
    async def _serve(self, ready: bool) -> tuple[HttpServer, Metrics]:
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        detail: dict[str, Any] = {
            "watchers": {"users": {"state": "running" if ready else "failed"}}
        }
        server = HttpServer(
            "127.0.0.1", 0, registry, health=lambda: detail, readiness=lambda: (ready, detail)
        )
        await server.start()
        return server, metrics

    async def test_metrics_expose_the_injected_registry(self) -> None:
        """/metrics serves the Prometheus text of the registry it was given."""
        server, metrics = await self._serve(True)
        metrics.events_received_total.labels("users", "insert").inc(3)
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{server.port}/metrics") as r,
            ):
                text = await r.text()
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/plain")
        finally:
            await server.stop()
        assert (
            'changestream_worker_events_received_total{operation="insert",watcher="users"} 3.0'
            in text
        )

    async def test_readyz_is_503_when_not_ready(self) -> None:
        """/readyz answers 503 with the per-watcher detail when a watcher is not ready."""
        server, _ = await self._serve(False)
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{server.port}/readyz") as r,
            ):
                body = await r.json()
                assert r.status == 503
        finally:
            await server.stop()
        assert body["ready"] is False
        assert body["watchers"]["users"]["state"] == "failed"

    async def test_healthz_reports_loop_lag(self) -> None:
        """/healthz answers 200 with the event loop's measured lag."""
        server, _ = await self._serve(True)
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{server.port}/healthz") as r,
            ):
                body = await r.json()
                assert r.status == 200
        finally:
            await server.stop()
        assert body["status"] == "ok"
        assert body["loop_lag_ms"] >= 0
