"""The supervisor: one task per watcher, restarts with backoff, signals, drain and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from changestream_worker.config.models import Settings
from changestream_worker.errors import ConfigError
from changestream_worker.handler import Handler
from changestream_worker.logs import mask_uri
from changestream_worker.metrics import Metrics
from changestream_worker.service.connect import (
    Reachability,
    StartupTimeout,
    wait_for_mongodb,
    watch_connection,
)
from changestream_worker.service.coordination import Coordinator
from changestream_worker.service.handlers import HandlerSet
from changestream_worker.service.headroom import watch_headroom
from changestream_worker.service.observer import Observer
from changestream_worker.service.runner import Parts, SlotRunner
from changestream_worker.service.slots import READY_STATES, WatcherSlot, instance_names
from changestream_worker.state.checkpoints import MongoCheckpointStore
from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.state.status import StatusStore
from changestream_worker.stream.watcher import Watcher

log = structlog.get_logger("changestream_worker.service.supervisor")
EMBEDDED = "embedded://"


class Supervisor:
    """Owns the MongoDB client, handlers, metrics and every watcher's task.

    Args:
        settings: the validated configuration.
        registry: the Prometheus registry to register collectors on (a fresh one if None).
    """

    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        handlers: dict[str, Handler[Any]] | None = None,
        uri: str | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.stop_requested = asyncio.Event()
        self.slots: list[WatcherSlot] = []
        self._built = handlers  # validated and built once, by the caller (or at start)
        self.handlers: HandlerSet | None = None
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self.http: Any = None
        self.uri = uri or settings.mongodb.uri
        self.instance_id = settings.leases.instance_id or socket.gethostname()
        self.coordinator: Coordinator | None = None
        self.status: StatusStore | None = None
        self._background: list[asyncio.Task[None]] = []
        self.headroom_interval = 10.0  # seconds between oplog headroom refreshes
        self.status_interval = 5.0  # seconds between watcher_status refreshes
        self._signals = 0
        self.reachability = Reachability()  # hook (reliability): MongoDB reachable, for /readyz
        self.observer: Observer | None = None  # hook (reliability): backlog and lease waits

    # ---- lifecycle --------------------------------------------------------------
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or ``request_stop``); returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self.stop_requested.wait()
        except StartupTimeout as exc:  # hook (reliability): one line, exit 1, no traceback
            log.error("startup_timeout", error=str(exc))
            return 1
        finally:
            await self.shutdown()
        return 0

    def _on_signal(self, sig: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("shutdown_forced", signal=signal.Signals(sig).name)
            os._exit(130)  # a second signal means "now": no drain, no flush
        log.info(
            "shutdown_requested",
            signal=signal.Signals(sig).name,
            timeout_s=self.settings.shutdown_timeout,
        )
        self.request_stop()

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def start(self) -> None:
        if self.uri.startswith(EMBEDDED):
            raise ConfigError(
                "mongodb.uri: embedded:// is started by the command line "
                "(changestream-worker run), not by the supervisor"
            )
        if self._built is None:
            from changestream_worker.config.registry import build_handlers

            self._built = build_handlers(self.settings)
        self.client = AsyncMongoClient(
            self.uri,
            appname=self.settings.mongodb.app_name,
            tz_aware=True,
            event_listeners=[self.reachability],
        )
        log.info(
            "worker_starting", mongodb=mask_uri(self.uri), watchers=len(self.settings.watchers)
        )
        # hook (reliability): alive and not ready while MongoDB is awaited
        await self._start_http()
        reached = await wait_for_mongodb(
            self.client,
            self.uri,
            self.reachability,
            self.stop_requested,
            self.settings.startup_timeout,
        )
        if not reached:
            return
        self._background.append(
            asyncio.create_task(
                watch_connection(self.client, self.uri, self.reachability, self.stop_requested)
            )
        )
        self.handlers = HandlerSet(
            self._built, self.client, self.settings.mongodb.database, self.settings.state.database
        )
        state_db = self.client[self.settings.state.database]
        self.dead_letters = DeadLetterStore(state_db)
        self.checkpoints = MongoCheckpointStore(state_db)
        self.status = StatusStore(state_db, self.instance_id)
        await self.handlers.start_all()
        self.coordinator = Coordinator(
            self.settings.leases,
            state_db,
            self.instance_id,
            self.metrics,
            self.stop_requested,
            hand_over=self._hand_over,
        )
        await self.coordinator.start()
        self._background.append(
            asyncio.create_task(
                watch_headroom(
                    self.client, self._active_watchers, self.metrics, self.headroom_interval
                )
            )
        )
        self.runner = SlotRunner(
            Parts(
                self.settings,
                self.client,
                self.handlers,
                self.dead_letters,
                self.checkpoints,
                self.status,
                self.metrics,
                self.coordinator,
                self.stop_requested,
            )
        )
        self._background.append(asyncio.create_task(self._report()))
        # hook (reliability): backlog and takeover estimates for /readyz, gauges and status
        self.observer = Observer(
            self.client,
            self.settings,
            self.instance_id,
            lambda: self.slots,
            self.metrics,
            self.checkpoints,
        )
        self._background.append(asyncio.create_task(self.observer.run(), name="observer"))
        for ws in self.settings.watchers:
            for partition, name in enumerate(instance_names(ws)):
                slot = WatcherSlot(ws, name, partition)
                self.slots.append(slot)
                slot.task = asyncio.create_task(self.runner.run(slot), name=f"watcher:{name}")

    def _hand_over(self, name: str) -> None:
        for slot in self.slots:
            if slot.name == name and slot.watcher is not None:
                slot.watcher.stopping.set()

    def _active_watchers(self) -> list[Watcher]:
        # a failed watcher keeps its gauge: negative headroom is the reason it failed
        return [s.watcher for s in self.slots if s.watcher is not None and s.state != "standby"]

    async def _start_http(self) -> None:
        if not self.settings.http.enabled:
            return
        from changestream_worker.service.http import HttpServer

        self.http = HttpServer(
            self.settings.http.host,
            self.settings.http.port,
            self.registry,
            health=self.health,
            readiness=self.readiness,
        )
        await self.http.start()

    async def _report(self) -> None:
        # the figures of running watchers move between state changes: refresh them
        while not self.stop_requested.is_set():
            await self._wait(self.status_interval)
            for slot in self.slots:
                if slot.state == "running":
                    await self.runner.publish(slot)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop_requested.wait(), seconds)

    # ---- shutdown ---------------------------------------------------------------
    async def shutdown(self) -> None:
        self.stop_requested.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        tasks = [s.task for s in self.slots if s.task is not None]
        if tasks:
            # watchers drain up to shutdown_timeout themselves; allow the final flush on top
            _done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_timeout + 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.handlers is not None:
            await self.handlers.stop_all()
        if self.http is not None:
            await self.http.stop()
        if self.client is not None:
            if self.coordinator is not None:
                await self.coordinator.close()
            await self.client.close()
        log.info("worker_stopped")

    # ---- health -----------------------------------------------------------------
    def watcher_states(self) -> dict[str, dict[str, Any]]:
        states = {slot.name: slot.report() for slot in self.slots}
        if self.observer is not None:  # hook (reliability): backlog and lease wait
            for name, state in states.items():
                state.update(self.observer.detail(name))
        return states

    def health(self) -> dict[str, Any]:
        return {"watchers": self.watcher_states()}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        states = self.watcher_states()
        ok = self.client is not None and all(s["state"] in READY_STATES for s in states.values())
        ok = ok and self.reachability.reachable  # hook (reliability)
        return ok, {"mongodb": self.reachability.detail(), "watchers": states}


async def run(
    settings: Settings, handlers: dict[str, Handler[Any]] | None = None, uri: str | None = None
) -> int:
    """Entry point of ``changestream-worker run``."""
    return await Supervisor(settings, handlers=handlers, uri=uri).run()
