"""Coordination between replicas: standing by for leases, membership, fair partition shares."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from pymongo.errors import PyMongoError

from changestream_worker.state.leases import Lease, Membership, fair_share

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

    from changestream_worker.config.models import Settings
    from changestream_worker.metrics import Metrics
    from changestream_worker.service.supervisor import WatcherSlot

log = structlog.get_logger("changestream_worker.service.coordination")


class Coordinator:
    """Decides which of this process's watcher slots may run, when leases are on.

    Args:
        settings: the configuration (``leases`` and ``watchers``).
        state_db: where leases and membership heartbeats live.
        instance_id: this process's stable name.
        slots: the supervisor's slots (read, never replaced).
        metrics: collectors (``lease_held``).
        stop: set when the process is shutting down.
    """

    def __init__(
        self,
        settings: Settings,
        state_db: AsyncDatabase[Any],
        instance_id: str,
        slots: list[WatcherSlot],
        metrics: Metrics,
        stop: asyncio.Event,
    ) -> None:
        self.settings, self.state_db, self.instance_id = settings, state_db, instance_id
        self.slots, self.metrics, self.stop = slots, metrics, stop
        self.membership: Membership | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.leases.enabled

    async def start(self) -> None:
        if not self.enabled:
            return
        self.membership = Membership(self.state_db, self.instance_id, self.settings.leases.ttl)
        await self.membership.beat()
        self._task = asyncio.create_task(self._membership_loop(), name="membership")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.membership is not None:
            await self.membership.leave()

    async def acquire(
        self, slot: WatcherSlot, publish: Callable[[WatcherSlot], Awaitable[None]]
    ) -> Lease | None:
        """Stand by until this process owns the slot's lease (None: leases off, or stopping)."""
        if not self.enabled:
            return None
        lease = Lease(self.state_db, slot.name, self.instance_id, self.settings.leases.ttl)
        poll = min(1.0, self.settings.leases.ttl / 3)
        while not self.stop.is_set():
            try:
                if self._may_take(slot) and await lease.try_acquire():
                    slot.held = True
                    self.metrics.lease_held.labels(slot.name).set(1)
                    return lease
            except PyMongoError as exc:
                log.warning("lease_acquire_failed", watcher=slot.name, error=str(exc)[:200])
            if slot.state != "standby":
                slot.state, slot.reason = "standby", "another replica holds the lease"
                self.metrics.lease_held.labels(slot.name).set(0)
                await publish(slot)
            await self._wait(poll)
        return None

    def released(self, slot: WatcherSlot) -> None:
        slot.held = False
        self.metrics.lease_held.labels(slot.name).set(0)

    def _may_take(self, slot: WatcherSlot) -> bool:
        """Partitions are shared: take one only while under this process's fair share."""
        if slot.ws.partitions <= 1 or self.membership is None:
            return True
        held = sum(1 for s in self.slots if s.ws is slot.ws and s.held)
        return held < fair_share(slot.ws.partitions, self.membership.alive)

    async def _membership_loop(self) -> None:
        assert self.membership is not None
        while not self.stop.is_set():
            await self._wait(self.settings.leases.ttl / 3)
            try:
                alive = await self.membership.beat()
            except PyMongoError as exc:
                log.warning("membership_beat_failed", error=str(exc)[:200])
                continue
            for ws in self.settings.watchers:
                if ws.partitions <= 1:
                    continue
                held = [s for s in self.slots if s.ws is ws and s.held and not s.yield_requested]
                extra = len(held) - fair_share(ws.partitions, alive)
                for slot in held[len(held) - extra :] if extra > 0 else []:
                    log.info("partition_handover", watcher=slot.name, members=alive)
                    slot.yield_requested = True
                    if slot.watcher is not None:
                        slot.watcher.stopping.set()

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
