"""Shared by the benchmarks: an emulator in its own process, a backlog in it,
and one timed worker run that drains it."""

from __future__ import annotations

import asyncio
import logging
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo import AsyncMongoClient

from changestream_worker.config.models import Settings
from changestream_worker.service.supervisor import Supervisor


def quiet() -> None:
    """Warnings and errors only: the worker runs in-process, outside the CLI's log setup."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    """An emulator in its own process, like a real server: (process, URI)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "changestream_worker", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


async def backlog(client: AsyncMongoClient[dict[str, Any]], db: str, n: int) -> datetime:
    """Insert ``n`` documents; returns a start time just before them."""
    ping = await client.admin.command("ping")
    start = datetime.fromtimestamp(ping["operationTime"].time, UTC)
    for i in range(0, n, 5_000):
        await client[db].items.insert_many(
            [{"_id": k, "name": f"n{k}", "price": k % 997} for k in range(i, min(n, i + 5_000))]
        )
    return start


def settings(
    uri: str, db: str, run: str, handler: dict[str, Any], start: datetime, **watch: Any
) -> Settings:
    """One watcher over ``db.items`` from ``start``, state in a database of its own."""
    return Settings.model_validate(
        {
            "mongodb": {"uri": uri, "database": db},
            "state": {"database": f"{db}_{run}"},
            "http": {"enabled": False},
            "leases": {"enabled": False},
            "logging": {"format": "json", "level": "warning"},
            "handlers": {"h": handler},
            "watchers": [
                {
                    "name": "bench",
                    "collection": "items",
                    "handlers": ["h"],
                    "concurrency": 64,
                    "start_at": start.isoformat(),
                    "batch_size": 1000,
                    **watch,
                }
            ],
        }
    )


async def drain(cfg: Settings, done: Callable[[], Awaitable[bool]], poll: float = 0.02) -> float:
    """Seconds from worker start until ``done()`` holds (the worker is then shut down)."""
    sup = Supervisor(cfg)
    t0 = time.perf_counter()
    await sup.start()
    try:
        while not await done():  # noqa: ASYNC110 - a benchmark polls; the poll is noise here
            await asyncio.sleep(poll)
        return time.perf_counter() - t0
    finally:
        await sup.shutdown()


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)
