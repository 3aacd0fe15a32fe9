"""What operators need to see between two log lines: each watcher's backlog and pending takeovers.

Every ``interval`` the observer estimates the backlog of the watchers this process owns, and,
for those it stands by for, whether the owner stopped renewing its lease (a SIGKILLed or cut
off process): then it reports the takeover it waits for and the backlog piling up meanwhile.
Results go to the gauges, to /readyz and to the ``watcher_status`` document ``status`` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from bson import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

from changestream_worker.service.backlog import (
    Backlog,
    measure_backlog,
    namespace_filter,
    server_time,
)
from changestream_worker.state import names

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

    from changestream_worker.config.models import Settings, WatcherSettings
    from changestream_worker.metrics import Metrics
    from changestream_worker.state.checkpoints import CheckpointStore
    from changestream_worker.stream.watcher import Watcher

log = structlog.get_logger("changestream_worker.service.observer")


class Slot(Protocol):
    """What the observer reads of a supervisor's watcher slot."""

    name: str
    ws: WatcherSettings
    state: str
    watcher: Watcher | None


# a slot in one of these runs its watcher, so it holds the lease when leases are on
RUNNING = frozenset({"running", "snapshot", "resuming"})


class Observer:
    """Measures backlogs and lease waits every ``interval`` seconds (see the module doc).

    Args:
        client: the worker's client (reads ``local.oplog.rs`` and the state database).
        settings: the configuration (databases, leases).
        instance_id: this process's name, written as ``observed_by``.
        slots: returns the supervisor's current slots.
        metrics: where the gauges live.
        store: the checkpoint store, for positions of watchers not running here.
        interval: seconds between two rounds (backlog seconds and lease waits).
        count_interval: seconds between two oplog counts of one watcher's backlog events;
            in between the last count stands (counting reads the oplog, the rest is cheap).
    """

    def __init__(
        self,
        client: AsyncMongoClient[Any],
        settings: Settings,
        instance_id: str,
        slots: Callable[[], Sequence[Slot]],
        metrics: Metrics,
        store: CheckpointStore,
        interval: float = 2.0,
        count_interval: float = 15.0,
    ) -> None:
        self.client, self.settings, self.instance_id = client, settings, instance_id
        self.slots, self.metrics, self.store, self.interval = slots, metrics, store, interval
        self.count_interval = count_interval
        self._counts: dict[str, tuple[float, int, bool]] = {}  # name: (monotonic, events, capped)
        self.state_db = client[settings.state.database]
        self.details: dict[str, dict[str, Any]] = {}
        self._announced: set[tuple[str, Any, Any]] = set()
        self._oplog_readable = True
        self._last_error = ""

    def detail(self, name: str) -> dict[str, Any]:
        """``{"backlog": ..., "lease_wait": ...}`` of one watcher, as last measured."""
        return self.details.get(name, {})

    async def run(self) -> None:
        """Observe until cancelled; a failed round is logged (once per distinct error)."""
        while True:
            try:
                await self.observe()
                self._last_error = ""
            except PyMongoError as exc:
                error = str(exc).split(", Timeout:")[0][:200]
                if error != self._last_error:
                    log.warning("backlog_observation_failed", error=error)
                self._last_error = error
            await asyncio.sleep(self.interval)

    async def observe(self) -> None:
        """One round over every slot."""
        slots = list(self.slots())
        now = datetime.now(UTC)
        leases: dict[str, dict[str, Any]] = {}
        if self.settings.leases.enabled and slots:
            found = self.state_db[names.LEASES].find({"_id": {"$in": [s.name for s in slots]}})
            leases = {d["_id"]: d for d in await found.to_list()}
        last = await server_time(self.client)
        for slot in slots:
            wait = self._lease_wait(slot, leases.get(slot.name), now)
            self.metrics.lease_wait_seconds.labels(slot.name).set(
                wait["remaining_s"] if wait else 0.0
            )
            mine = not self.settings.leases.enabled or slot.state in RUNNING
            backlog = None
            if last is not None and (mine or wait is not None):
                backlog = await self._backlog(slot, last)
            self._gauges(slot.name, backlog)
            self.details[slot.name] = {"backlog": backlog, "lease_wait": wait}
            if mine or wait is not None:
                await self._publish(slot.name, backlog, wait, now)

    def _lease_wait(
        self, slot: Slot, lease: dict[str, Any] | None, now: datetime
    ) -> dict[str, Any] | None:
        """The takeover this standby waits for, when the owner stopped renewing."""
        # an owner named like this process is a previous incarnation (restarted after a kill)
        if lease is None or slot.state in RUNNING or lease.get("owner") is None:
            return None
        ttl = self.settings.leases.ttl
        renewed, expires = _aware(lease.get("renewed_at")), _aware(lease.get("expires_at"))
        if renewed is None or expires is None:
            return None
        silent = (now - renewed).total_seconds()
        if silent <= ttl / 2:  # a live owner renews every ttl/3
            return None
        wait = {
            "owner": lease["owner"],
            "epoch": lease.get("epoch"),
            "remaining_s": round(max(0.0, (expires - now).total_seconds()), 1),
            "owner_silent_s": round(silent, 1),
        }
        key = (slot.name, wait["owner"], wait["epoch"])
        if key not in self._announced:
            self._announced.add(key)
            log.warning("lease_takeover_waiting", watcher=slot.name, **wait)
        return wait

    async def _backlog(self, slot: Slot, last: Timestamp) -> dict[str, Any] | None:
        since = await self._position(slot)
        if since is None:
            return None
        if self._caught_up(slot):
            self._counts.pop(slot.name, None)
            return Backlog(0, False, 0.0, since).detail()
        seconds = float(max(0, last.time - since.time))
        counted = self._counts.get(slot.name)
        now = time.monotonic()
        if counted is None or counted[1] == 0 or now - counted[0] >= self.count_interval:
            if not self._oplog_readable:
                return None
            database = slot.ws.database or self.settings.mongodb.database
            ns = namespace_filter(database, slot.ws.collection)
            try:
                got = await measure_backlog(self.client, since, ns, last=last)
            except OperationFailure as exc:
                self._oplog_readable = False
                log.warning(
                    "backlog_unavailable",
                    error=str(exc)[:200],
                    hint="grant the worker's user read access to the local database",
                )
                return None
            counted = self._counts[slot.name] = (now, got.events, got.capped)
        # nothing of the namespace after the position: only other collections moved on
        return Backlog(counted[1], counted[2], seconds if counted[1] else 0.0, since).detail()

    def _caught_up(self, slot: Slot) -> bool:
        """The running stream's last batch was empty and nothing is in flight: no backlog."""
        w = slot.watcher
        if w is None or slot.state not in RUNNING or w.dispatcher.in_flight:
            return False
        # the watcher sets lag to exactly 0 on an empty batch, never after an event
        lag = self.metrics.registry.get_sample_value(
            "changestream_worker_lag_seconds", {"watcher": slot.name}
        )
        return lag == 0.0

    async def _position(self, slot: Slot) -> Timestamp | None:
        w = slot.watcher
        if w is not None and slot.state in RUNNING:
            for pos in (w.dispatcher.watermark, w.checkpointer.last_written):
                if pos is not None and pos.cluster_time is not None:
                    return pos.cluster_time
        stored = await self.store.load(slot.name)
        return None if stored is None else stored.cluster_time

    def _gauges(self, name: str, backlog: dict[str, Any] | None) -> None:
        m = self.metrics
        if backlog is None:
            # a standby with a live owner reports nothing: the owner's numbers are the truth
            for gauge in (m.backlog_events, m.backlog_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(name)
            return
        m.backlog_events.labels(name).set(backlog["events"])
        m.backlog_seconds.labels(name).set(backlog["seconds"])

    async def _publish(
        self,
        name: str,
        backlog: dict[str, Any] | None,
        wait: dict[str, Any] | None,
        now: datetime,
    ) -> None:
        await self.state_db[names.WATCHER_STATUS].update_one(
            {"_id": name},
            {
                "$set": {
                    # scalars for the status table's columns, the details for --json
                    "backlog": None if backlog is None else backlog["events"],
                    "backlog_seconds": None if backlog is None else backlog["seconds"],
                    "backlog_detail": backlog,
                    "lease_wait_s": None if wait is None else wait["remaining_s"],
                    "takeover": wait,
                    "observed_by": self.instance_id,
                    "observed_at": now,
                }
            },
            upsert=True,
        )


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
