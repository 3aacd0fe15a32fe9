"""A worker running inside a test: start it on a config, wait for work, stop it cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from changestream_worker.config.models import settings_from
from changestream_worker.service.slots import instance_names
from changestream_worker.service.supervisor import Supervisor


class RunningWorker:
    """A started worker: its supervisor, its own metrics registry, and waits for tests.

    Args:
        supervisor: the started supervisor.
        registry: the Prometheus registry its metrics are on.
    """

    def __init__(self, supervisor: Supervisor, registry: CollectorRegistry) -> None:
        self.supervisor, self.registry = supervisor, registry

    @property
    def settings(self) -> Any:
        return self.supervisor.settings

    def handled(self, outcome: str | None = None) -> int:
        """Events finished by handlers so far (of one ``outcome`` if given: ``success``,
        ``retried``, ``skipped``, ``dead_letter``, ``stopped``), summed over watchers."""
        total = 0.0
        for metric in self.registry.collect():
            if metric.name != "changestream_worker_events_handled":
                continue
            for sample in metric.samples:
                if sample.name.endswith("_total") and outcome in (None, sample.labels["outcome"]):
                    total += sample.value
        return int(total)

    async def wait_for(
        self, check: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0, what: str = ""
    ) -> None:
        """Wait until ``check()`` holds; ``AssertionError`` naming ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what or 'a condition'}")

    async def wait_handled(self, count: int, timeout: float = 15.0) -> None:
        """Wait until handlers have finished at least ``count`` events."""
        await self.wait_for(lambda: self.handled() >= count, timeout, f"{count} handled events")

    async def wait_started(self, timeout: float = 15.0) -> None:
        """Wait until every watcher has stored its starting point (writes after this are seen)."""

        async def stored() -> bool:
            store = self.supervisor.checkpoints
            for ws in self.settings.watchers:
                for name in instance_names(ws):
                    if await store.load(name) is None:
                        return False
            return True

        await self.wait_for(stored, timeout, "every watcher's starting point")


@contextlib.asynccontextmanager
async def running_worker(
    config: Mapping[str, Any], uri: str | None = None, env: Mapping[str, str] | None = None
) -> AsyncIterator[RunningWorker]:
    """Run a worker on ``config`` (a mapping shaped like the YAML file) in this event loop.

    ``uri`` fills ``mongodb.uri`` when the config has none; the HTTP endpoint is off and
    leases are off unless the config says otherwise. On exit the worker drains and stores
    its final checkpoint, as on SIGTERM.

    Raises:
        ConfigError: the config is invalid (every bad field named).
    """
    raw: dict[str, Any] = {k: v for k, v in config.items()}
    mongodb = dict(raw.get("mongodb") or {})
    if uri is not None:
        mongodb.setdefault("uri", uri)
    raw["mongodb"] = mongodb
    raw.setdefault("http", {"enabled": False})
    raw.setdefault("leases", {"enabled": False})
    registry = CollectorRegistry()
    supervisor = Supervisor(settings_from(raw, env or {}), registry=registry)
    await supervisor.start()
    try:
        worker = RunningWorker(supervisor, registry)
        await worker.wait_started()
        yield worker
    finally:
        await supervisor.shutdown()
