"""The supervisor: one task per watcher, restarts with backoff, signals, drain and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import traceback
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, PyMongoError

from changestream_worker.config.models import Settings, WatcherSettings
from changestream_worker.handler import Handler, HandlerContext
from changestream_worker.logs import mask_uri
from changestream_worker.metrics import Metrics
from changestream_worker.service.connect import (
    Reachability,
    StartupTimeout,
    describe_error,
    wait_for_mongodb,
    watch_connection,
)
from changestream_worker.service.coordination import Coordinator
from changestream_worker.service.headroom import watch_headroom
from changestream_worker.service.observer import Observer
from changestream_worker.state import names
from changestream_worker.state.checkpoints import MongoCheckpointStore
from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.state.leases import Lease, partition_stage
from changestream_worker.stream.dispatch import Dispatcher
from changestream_worker.stream.watcher import Watcher, WatcherStopped

log = structlog.get_logger("changestream_worker.service.supervisor")
EMBEDDED = "embedded://"


class WatcherSlot:
    """A watcher's place in the supervisor: its task, state and last failure."""

    def __init__(self, ws: WatcherSettings, name: str, partition: int = 0) -> None:
        self.ws, self.name, self.partition = ws, name, partition
        self.task: asyncio.Task[None] | None = None
        self.watcher: Watcher | None = None
        self.state = "starting"
        self.reason = ""
        self.restarts = 0
        self.seen_tracebacks: set[str] = set()
        self.held = False  # this process owns the slot's lease
        self.yield_requested = False  # give the lease up to rebalance partitions

    @property
    def ready(self) -> bool:
        return self.state in ("running", "standby", "stopped_by_policy", "snapshot")


class Supervisor:
    """Owns the MongoDB client, handlers, metrics and every watcher's task.

    Args:
        settings: the validated configuration.
        registry: the Prometheus registry to register collectors on (a fresh one if None).
    """

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.stop_requested = asyncio.Event()
        self.slots: list[WatcherSlot] = []
        self.handlers: dict[str, Handler] = {}
        self.client: AsyncMongoClient[dict[str, Any]] | None = None
        self.emulator: Any = None
        self.http: Any = None
        self.uri = settings.mongodb.uri
        self.instance_id = settings.leases.instance_id or socket.gethostname()
        self.coordinator: Coordinator | None = None
        self._background: list[asyncio.Task[None]] = []
        self.headroom_interval = 10.0  # seconds between oplog headroom refreshes
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
        from changestream_worker.config.registry import build_handlers

        if self.uri.startswith(EMBEDDED):
            from changestream_worker.testing.emulator import ReplicaSetEmulator

            self.emulator = await ReplicaSetEmulator(port=0).start()
            self.uri = self.emulator.uri
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
        self.handlers = build_handlers(self.settings)
        state_db = self.client[self.settings.state.database]
        self.dead_letters = DeadLetterStore(state_db)
        self.checkpoints = MongoCheckpointStore(state_db)
        for name, handler in self.handlers.items():
            await handler.start(self._context(name, "*", self.settings.mongodb.database))
        self.coordinator = Coordinator(
            self.settings, state_db, self.instance_id, self.slots, self.metrics, self.stop_requested
        )
        await self.coordinator.start()
        self._background.append(
            asyncio.create_task(
                watch_headroom(
                    self.client, self._active_watchers, self.metrics, self.headroom_interval
                )
            )
        )
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
            for partition, name in enumerate(self._instance_names(ws)):
                slot = WatcherSlot(ws, name, partition)
                self.slots.append(slot)
                slot.task = asyncio.create_task(self._supervise(slot), name=f"watcher:{name}")

    def _active_watchers(self) -> list[Watcher]:
        # a failed watcher keeps its gauge: negative headroom is the reason it failed
        return [s.watcher for s in self.slots if s.watcher is not None and s.state != "standby"]

    def _instance_names(self, ws: WatcherSettings) -> list[str]:
        if ws.partitions <= 1:
            return [ws.name]
        return [f"{ws.name}#{i}" for i in range(ws.partitions)]

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

    def _context(self, handler: str, watcher: str, database: str) -> HandlerContext:
        assert self.client is not None
        return HandlerContext(
            client=self.client,
            database=self.client[database],
            state_database=self.client[self.settings.state.database],
            log=structlog.get_logger("handler").bind(watcher=watcher, handler=handler),
            watcher=watcher,
            handler=handler,
        )

    # ---- one watcher ------------------------------------------------------------
    def build_watcher(self, slot: WatcherSlot, lease: Lease | None = None) -> Watcher:
        assert self.client is not None
        ws = slot.ws
        database = ws.database or self.settings.mongodb.database
        bound = [(h, self.handlers[h], self._context(h, slot.name, database)) for h in ws.handlers]
        dispatcher = Dispatcher(
            slot.name,
            bound,
            ws,
            self.dead_letters,
            self.metrics,
            guard=None if lease is None else lease.valid,
        )
        extra = [partition_stage(slot.partition, ws.partitions)] if ws.partitions > 1 else []
        return Watcher(
            self.settings,
            ws,
            self.client[database],
            dispatcher,
            self.checkpoints,
            self.metrics,
            name=slot.name,
            extra_stages=extra,
            fence=None if lease is None else _constant(lease.epoch),
        )

    async def _supervise(self, slot: WatcherSlot) -> None:
        assert self.coordinator is not None, "start() first"
        delay = 0.5
        while not self.stop_requested.is_set():
            lease = await self.coordinator.acquire(slot, self._publish)
            if lease is None and self.settings.leases.enabled:
                return  # asked to stop while standing by
            watcher = slot.watcher = self.build_watcher(slot, lease)
            helpers = [asyncio.create_task(self._relay_stop(watcher, lease))]
            if lease is not None:
                helpers.append(asyncio.create_task(lease.keep()))
            try:
                slot.state, slot.reason = "running", ""
                await self._publish(slot)
                await watcher.run()
                if lease is not None and lease.lost.is_set() and not self.stop_requested.is_set():
                    self._deposed(slot)
                    continue
                if slot.yield_requested and not self.stop_requested.is_set():
                    slot.yield_requested = False
                    slot.state, slot.reason = "standby", "handed over to rebalance partitions"
                    continue
                return
            except WatcherStopped as exc:
                if exc.fenced and not self.stop_requested.is_set():
                    self._deposed(slot)
                    continue
                slot.state = "stopped_by_policy" if exc.expected else "failed"
                slot.reason = exc.reason
                log.error(
                    "watcher_stopped", watcher=slot.name, reason=exc.reason, expected=exc.expected
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a crash: log each distinct traceback once, then restart
                self._crashed(slot, exc)
                await self._wait(delay * (0.5 + random.random()))
                delay = min(delay * 2, 60.0)
            finally:
                for task in helpers:
                    task.cancel()
                if lease is not None:
                    await lease.release()
                    self.coordinator.released(slot)
                await self._publish(slot)

    def _deposed(self, slot: WatcherSlot) -> None:
        slot.state, slot.reason = "standby", "lease lost: another replica owns it now"
        log.warning("watcher_deposed", watcher=slot.name)

    def _crashed(self, slot: WatcherSlot, exc: BaseException) -> None:
        slot.restarts += 1
        slot.state, slot.reason = "restarting", f"{type(exc).__name__}: {exc}"
        self.metrics.watcher_restarts_total.labels(slot.name).inc()
        if isinstance(exc, ConnectionFailure):  # hook (reliability): the network, not a bug
            slot.reason = describe_error(exc)
            log.warning("watcher_connection_failed", watcher=slot.name, error=slot.reason)
            return
        tb = "".join(traceback.format_exception(exc))
        if tb not in slot.seen_tracebacks:
            slot.seen_tracebacks.add(tb)
            log.error("watcher_crashed", watcher=slot.name, error=slot.reason, traceback=tb)
        else:
            log.warning(
                "watcher_crashed_again",
                watcher=slot.name,
                error=slot.reason,
                restarts=slot.restarts,
            )

    async def _publish(self, slot: WatcherSlot) -> None:
        """Record the slot's state for `changestream-worker status` (best effort)."""
        if self.client is None:
            return
        with contextlib.suppress(PyMongoError):
            await self.client[self.settings.state.database][names.WATCHER_STATUS].update_one(
                {"_id": slot.name},
                {
                    "$set": {
                        "state": slot.state,
                        "reason": slot.reason,
                        "instance": self.instance_id,
                        "restarts": slot.restarts,
                        "updated": datetime.now(UTC),
                    }
                },
                upsert=True,
            )

    async def _relay_stop(self, watcher: Watcher, lease: Lease | None) -> None:
        waits = [asyncio.create_task(self.stop_requested.wait())]
        if lease is not None:
            waits.append(asyncio.create_task(lease.lost.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        watcher.stopping.set()

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
        for name, handler in self.handlers.items():
            try:
                await handler.stop()
            except Exception as exc:  # one handler's failing stop must not block the others
                log.warning("handler_stop_failed", handler=name, error=str(exc))
        if self.http is not None:
            await self.http.stop()
        if self.client is not None:
            if self.coordinator is not None:
                await self.coordinator.close()
            await self.client.close()
        if self.emulator is not None:
            await self.emulator.stop()
        log.info("worker_stopped")

    # ---- health -----------------------------------------------------------------
    def watcher_states(self) -> dict[str, dict[str, Any]]:
        out = {}
        for slot in self.slots:
            w = slot.watcher
            state = slot.state
            if w is not None and state == "running":
                state = w.state
            out[slot.name] = {
                "state": state,
                "reason": slot.reason or (w.reason if w else ""),
                "restarts": slot.restarts,
            }
            if self.observer is not None:  # hook (reliability)
                out[slot.name].update(self.observer.detail(slot.name))
        return out

    def health(self) -> dict[str, Any]:
        return {"watchers": self.watcher_states()}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        states = self.watcher_states()
        ok = self.client is not None and all(
            s["state"] in ("running", "standby", "stopped_by_policy", "snapshot", "resuming")
            for s in states.values()
        )
        ok = ok and self.reachability.reachable  # hook (reliability)
        return ok, {"mongodb": self.reachability.detail(), "watchers": states}


def _constant(epoch: int | None) -> Any:
    # the epoch at acquisition, fixed: after a loss the lease forgets it, the fence must not
    return lambda: epoch


async def run(settings: Settings) -> int:
    """Entry point of ``changestream-worker run``."""
    return await Supervisor(settings).run()
