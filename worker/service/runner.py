"""Running one watcher slot: stand by for its lease, run the watcher, restart after crashes."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure

from changestream_worker.config.models import Settings
from changestream_worker.metrics import Metrics
from changestream_worker.service.connect import describe_error
from changestream_worker.service.coordination import Coordinator
from changestream_worker.service.handlers import HandlerSet
from changestream_worker.service.slots import WatcherSlot
from changestream_worker.state.checkpoints import MongoCheckpointStore
from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.state.leases import Lease
from changestream_worker.state.status import StatusStore
from changestream_worker.stream.dispatch import Dispatcher
from changestream_worker.stream.retry import backoff
from changestream_worker.stream.source import partition_stage
from changestream_worker.stream.watcher import Watcher, WatcherSpec, WatcherStopped

log = structlog.get_logger("changestream_worker.service.supervisor")


@dataclass(frozen=True, slots=True)
class Parts:
    """What every slot of a running service shares."""

    settings: Settings
    client: AsyncMongoClient[dict[str, Any]]
    handlers: HandlerSet
    dead_letters: DeadLetterStore
    checkpoints: MongoCheckpointStore
    status: StatusStore
    metrics: Metrics
    coordinator: Coordinator
    stop: asyncio.Event


class SlotRunner:
    """Runs watcher slots on the service's shared parts.

    Args:
        parts: the client, stores, handlers, metrics and coordinator of the service.
    """

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.settings, self.client, self.handlers = parts.settings, parts.client, parts.handlers
        self.dead_letters, self.checkpoints = parts.dead_letters, parts.checkpoints
        self.status, self.metrics = parts.status, parts.metrics
        self.coordinator, self.stop = parts.coordinator, parts.stop

    def build_watcher(self, slot: WatcherSlot, lease: Lease | None = None) -> Watcher:
        ws = slot.ws
        database = ws.database or self.settings.mongodb.database
        bound = [
            (h, self.handlers.handlers[h], self.handlers.context(h, slot.name, database))
            for h in ws.handlers
        ]
        dispatcher = Dispatcher(
            slot.name,
            bound,
            ws,
            self.dead_letters,
            self.metrics,
            guard=None if lease is None else lease.valid,
        )
        extra = [partition_stage(slot.partition, ws.partitions)] if ws.partitions > 1 else []
        spec = WatcherSpec(
            ws,
            slot.name,
            self.settings.checkpoint,
            self.settings.shutdown_timeout,
            extra_stages=tuple(extra),
            epoch=None if lease is None else lease.epoch,  # fixed for the whole acquisition
        )
        return Watcher(spec, self.client[database], dispatcher, self.checkpoints, self.metrics)

    async def run(self, slot: WatcherSlot) -> None:
        """Run ``slot`` until the process stops: stand by for its lease, run its watcher,
        restart it after a crash (with backoff), stand by again after losing the lease."""
        restart_delay = backoff(0.5, 60.0)
        attempt = 0
        while not self.stop.is_set():
            lease = await self.coordinator.acquire(slot.name, slot.ws, lambda: self._standby(slot))
            if lease is None and self.settings.leases.enabled:
                return  # asked to stop while standing by
            watcher = slot.watcher = self.build_watcher(slot, lease)
            helpers = [asyncio.create_task(self._relay_stop(watcher, lease))]
            if lease is not None:
                helpers.append(asyncio.create_task(lease.keep()))
            try:
                slot.set("running")
                await self.publish(slot)
                await watcher.run()
                if lease is not None and lease.lost.is_set() and not self.stop.is_set():
                    self._deposed(slot)
                    continue
                if self.coordinator.handed_over(slot.name) and not self.stop.is_set():
                    slot.set("standby", "handed over to rebalance partitions")
                    continue
                return
            except WatcherStopped as exc:
                if exc.fenced and not self.stop.is_set():
                    self._deposed(slot)
                    continue
                slot.set("stopped_by_policy" if exc.expected else "failed", exc.reason)
                log.error(
                    "watcher_stopped", watcher=slot.name, reason=exc.reason, expected=exc.expected
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a crash: log each distinct traceback once, then restart
                self._crashed(slot, exc)
                attempt += 1
                await self._wait(restart_delay(attempt))
            finally:
                for task in helpers:
                    task.cancel()
                if lease is not None:
                    await lease.release()
                    self.coordinator.released(slot.name)
                await self.publish(slot)

    async def _standby(self, slot: WatcherSlot) -> None:
        slot.set("standby", "another replica holds the lease")
        await self.publish(slot)

    def _deposed(self, slot: WatcherSlot) -> None:
        slot.set("standby", "lease lost: another replica owns it now")
        log.warning("watcher_deposed", watcher=slot.name)

    def _crashed(self, slot: WatcherSlot, exc: BaseException) -> None:
        self.metrics.watcher_restarts_total.labels(slot.name).inc()
        if isinstance(exc, ConnectionFailure):  # hook (reliability): the network, not a bug
            slot.crashed(exc)
            slot.reason = describe_error(exc)
            log.warning("watcher_connection_failed", watcher=slot.name, error=slot.reason)
            return
        if slot.crashed(exc):
            log.error("watcher_crashed", watcher=slot.name, error=slot.reason, traceback=slot.tb)
        else:
            log.warning(
                "watcher_crashed_again",
                watcher=slot.name,
                error=slot.reason,
                restarts=slot.restarts,
            )

    async def publish(self, slot: WatcherSlot) -> None:
        """Record the slot's state for `changestream-worker status` (best effort)."""
        w = slot.watcher
        await self.status.publish(
            slot.name,
            state=slot.state,
            reason=slot.reason,
            restarts=slot.restarts,
            in_flight=w.dispatcher.in_flight if w is not None else 0,
        )

    async def _relay_stop(self, watcher: Watcher, lease: Lease | None) -> None:
        waits = [asyncio.create_task(self.stop.wait())]
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
            await asyncio.wait_for(self.stop.wait(), seconds)
