"""Coordination between replicas: standing by for leases, membership, fair partition shares."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog
from pymongo.errors import PyMongoError

from changestream_worker.state.leases import Lease, Membership

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

    from changestream_worker.config.models import LeaseSettings, WatcherSettings
    from changestream_worker.metrics import Metrics

log = structlog.get_logger("changestream_worker.service.coordination")


def fair_share(partitions: int, members: int) -> int:
    """How many of a watcher's partitions one process should own at most."""
    return -(-partitions // max(1, members))


class Coordinator:
    """Decides which watchers this process may run, when leases are on.

    It keeps its own account of the leases it holds (by watcher name) and tells the
    supervisor what to do through two callbacks; it never reaches into the supervisor.

    Args:
        leases: the ``leases`` settings.
        state_db: where leases and membership heartbeats live.
        instance_id: this process's stable name.
        metrics: collectors (``lease_held``).
        stop: set when the process is shutting down.
        hand_over: called with a watcher's name when it must give its lease up (a replica
            joined and this process holds more than its fair share of partitions).
    """

    def __init__(
        self,
        leases: LeaseSettings,
        state_db: AsyncDatabase[Any],
        instance_id: str,
        metrics: Metrics,
        stop: asyncio.Event,
        hand_over: Callable[[str], None],
    ) -> None:
        self.leases, self.state_db, self.instance_id = leases, state_db, instance_id
        self.metrics, self.stop, self._hand_over = metrics, stop, hand_over
        self.membership: Membership | None = None
        self._held: dict[str, WatcherSettings] = {}  # name -> the watcher it partitions
        self._yielding: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.leases.enabled

    async def start(self) -> None:
        if not self.enabled:
            return
        self.membership = Membership(self.state_db, self.instance_id, self.leases.ttl)
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
        self, name: str, ws: WatcherSettings, standing_by: Callable[[], Awaitable[None]]
    ) -> Lease | None:
        """Stand by until this process owns ``name``'s lease (None: leases off, or stopping).

        ``standing_by`` is awaited once when the lease is found held by another replica.
        """
        if not self.enabled:
            return None
        lease = Lease(self.state_db, name, self.instance_id, self.leases.ttl)
        poll = min(1.0, self.leases.ttl / 3)
        announced = False
        while not self.stop.is_set():
            try:
                if self._may_take(ws) and await lease.try_acquire():
                    self._held[name] = ws
                    self.metrics.lease_held.labels(name).set(1)
                    return lease
            except PyMongoError as exc:
                log.warning("lease_acquire_failed", watcher=name, error=str(exc)[:200])
            if not announced:
                announced = True
                self.metrics.lease_held.labels(name).set(0)
                await standing_by()
            await self._wait(poll)
        return None

    def released(self, name: str) -> None:
        """The supervisor let ``name``'s lease go (or lost it)."""
        self._held.pop(name, None)
        self.metrics.lease_held.labels(name).set(0)

    def handed_over(self, name: str) -> bool:
        """Whether ``name`` stopped because this coordinator asked it to (and forget it)."""
        if name in self._yielding:
            self._yielding.discard(name)
            return True
        return False

    def _may_take(self, ws: WatcherSettings) -> bool:
        """Partitions are shared: take one only while under this process's fair share."""
        if ws.partitions <= 1 or self.membership is None:
            return True
        held = sum(1 for w in self._held.values() if w is ws)
        return held < fair_share(ws.partitions, self.membership.alive)

    async def _membership_loop(self) -> None:
        assert self.membership is not None
        while not self.stop.is_set():
            await self._wait(self.leases.ttl / 3)
            try:
                alive = await self.membership.beat()
            except PyMongoError as exc:
                log.warning("membership_beat_failed", error=str(exc)[:200])
                continue
            self._rebalance(alive)

    def _rebalance(self, alive: int) -> None:
        by_watcher: dict[int, list[str]] = {}
        for name, ws in self._held.items():
            if ws.partitions > 1 and name not in self._yielding:
                by_watcher.setdefault(id(ws), []).append(name)
        for names in by_watcher.values():
            extra = len(names) - fair_share(self._held[names[0]].partitions, alive)
            for name in names[len(names) - extra :] if extra > 0 else []:
                log.info("partition_handover", watcher=name, members=alive)
                self._yielding.add(name)
                self._hand_over(name)

    async def _wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
