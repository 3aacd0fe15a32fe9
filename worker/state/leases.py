"""Leases: one active owner per watcher (or partition) across replicas, with fencing epochs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from changestream_worker.state import names

log = structlog.get_logger("changestream_worker.state.leases")


class Lease:
    """A lease on one watcher name, held by ``owner`` while renewed.

    Acquisition bumps ``epoch``; every checkpoint write is filtered on it, so an owner that
    was deposed while paused writes nothing. Expiry uses the replicas' wall clocks: keep
    them in NTP sync, and keep ``ttl`` far above the expected skew.

    Args:
        state_db: the state database (collection ``leases``).
        name: the watcher (or partition) name.
        owner: this process's stable instance id.
        ttl: seconds a lease lives without renewal.
    """

    def __init__(self, state_db: AsyncDatabase[Any], name: str, owner: str, ttl: float) -> None:
        self.coll = state_db[names.LEASES]
        self.name, self.owner, self.ttl = name, owner, ttl
        self.epoch: int | None = None
        self.valid_until = 0.0  # monotonic deadline: after it we must not act as owner
        self.lost = asyncio.Event()

    def valid(self) -> bool:
        """True while this process may act as the owner (before its lease could expire)."""
        return self.epoch is not None and time.monotonic() < self.valid_until

    def _deadline(self, started: float) -> float:
        # count from before the request was sent, and keep a margin: a slow reply or a
        # paused process must not believe in a lease that others already see as expired
        return started + self.ttl * 0.8

    async def try_acquire(self) -> bool:
        """Take the lease if it is free or expired; True when this process now owns it."""
        started = time.monotonic()
        now = datetime.now(UTC)
        try:
            doc = await self.coll.find_one_and_update(
                {"_id": self.name, "$or": [{"expires_at": {"$lt": now}}, {"owner": None}]},
                {
                    "$set": {
                        "owner": self.owner,
                        "expires_at": now + timedelta(seconds=self.ttl),
                        "acquired_at": now,
                        "renewed_at": now,
                    },
                    "$inc": {"epoch": 1},
                },
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # someone else holds it (the filter missed, the upsert collided)
        if doc is None:  # cannot happen with upsert and AFTER; keep mypy and readers honest
            return False
        self.epoch = int(doc["epoch"])
        self.valid_until = self._deadline(started)
        self.lost.clear()
        log.info("lease_acquired", lease=self.name, owner=self.owner, epoch=self.epoch)
        return True

    async def renew(self) -> bool:
        """Extend the lease; False (and ``lost`` set) when another owner took it."""
        if self.epoch is None:
            return False
        started = time.monotonic()
        now = datetime.now(UTC)
        doc = await self.coll.find_one_and_update(
            {"_id": self.name, "owner": self.owner, "epoch": self.epoch},
            {"$set": {"expires_at": now + timedelta(seconds=self.ttl), "renewed_at": now}},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            self._lose("taken over")
            return False
        self.valid_until = self._deadline(started)
        return True

    def _lose(self, why: str) -> None:
        if self.epoch is not None:
            log.warning(
                "lease_lost", lease=self.name, owner=self.owner, epoch=self.epoch, reason=why
            )
        self.epoch = None
        self.lost.set()

    async def keep(self) -> None:
        """Renew every ttl/3 until lost; give up before expiry if renewals keep failing."""
        while self.epoch is not None:
            await asyncio.sleep(self.ttl / 3)
            if not self.valid():
                self._lose("renewal deadline passed (paused or cut off)")
                return
            try:
                if not await self.renew():
                    return
            except PyMongoError as exc:
                log.warning("lease_renew_failed", lease=self.name, error=str(exc)[:200])
                if not self.valid():
                    self._lose("renewal failed until the deadline")
                    return

    async def release(self) -> None:
        """Give the lease up at once (graceful shutdown) so a standby takes over now."""
        if self.epoch is None:
            return
        with contextlib.suppress(PyMongoError):
            await self.coll.update_one(
                {"_id": self.name, "owner": self.owner, "epoch": self.epoch},
                {"$set": {"owner": None, "expires_at": datetime.fromtimestamp(0, UTC)}},
            )
            log.info("lease_released", lease=self.name, owner=self.owner, epoch=self.epoch)
        self.epoch = None


class Membership:
    """Which worker processes are alive, so partitions can be shared fairly between them.

    Each process keeps a heartbeat document in ``<state_db>.members``; one that stops
    beating drops out after ``ttl``.
    """

    def __init__(self, state_db: AsyncDatabase[Any], instance: str, ttl: float) -> None:
        self.coll = state_db[names.MEMBERS]
        self.instance, self.ttl = instance, ttl
        self.alive = 1

    async def beat(self) -> int:
        """Renew this process's heartbeat and count the live members."""
        now = datetime.now(UTC)
        await self.coll.update_one(
            {"_id": self.instance},
            {"$set": {"expires_at": now + timedelta(seconds=self.ttl), "seen": now}},
            upsert=True,
        )
        self.alive = max(1, await self.coll.count_documents({"expires_at": {"$gt": now}}))
        return self.alive

    async def leave(self) -> None:
        with contextlib.suppress(PyMongoError):
            await self.coll.delete_one({"_id": self.instance})
