"""Leases on the replica set: one owner at a time, epochs that grow, release and expiry."""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from changestream_worker.state.leases import Lease, Membership

Db = AsyncDatabase[dict[str, Any]]


class TestLease:
    async def test_one_owner_at_a_time(self, db: Db) -> None:
        """While a lease is held and unexpired, a second process cannot take it."""
        a, b = Lease(db, "w", "a", ttl=30), Lease(db, "w", "b", ttl=30)
        assert await a.try_acquire()
        assert not await b.try_acquire()
        assert a.valid() and not b.valid()
        doc = await db.leases.find_one({"_id": "w"})
        assert doc is not None and doc["owner"] == "a"

    async def test_each_acquisition_raises_the_epoch(self, db: Db) -> None:
        """Taking a released lease gives a higher epoch than the previous owner had."""
        a, b = Lease(db, "w", "a", ttl=30), Lease(db, "w", "b", ttl=30)
        assert await a.try_acquire()
        first = a.epoch
        await a.release()
        assert a.epoch is None
        assert await b.try_acquire()
        assert first is not None and b.epoch is not None and b.epoch > first

    async def test_expired_lease_is_taken_and_the_old_owner_cannot_renew(self, db: Db) -> None:
        """After the TTL, another process takes the lease; the old owner's renewal fails."""
        a, b = Lease(db, "w", "a", ttl=0.3), Lease(db, "w", "b", ttl=30)
        assert await a.try_acquire()
        await asyncio.sleep(0.4)
        assert not a.valid()  # its own deadline (0.8 x ttl) passed first
        assert await b.try_acquire()
        assert not await a.renew()
        assert a.lost.is_set()

    async def test_renewal_keeps_the_lease_valid(self, db: Db) -> None:
        """Renewing pushes the expiry forward and keeps the owner valid."""
        a = Lease(db, "w", "a", ttl=0.6)
        assert await a.try_acquire()
        before = await db.leases.find_one({"_id": "w"})
        await asyncio.sleep(0.3)
        assert await a.renew()
        after = await db.leases.find_one({"_id": "w"})
        assert before is not None and after is not None
        assert after["expires_at"] > before["expires_at"]
        assert a.valid()

    async def test_keep_gives_up_when_another_owner_took_over(self, db: Db) -> None:
        """The renewal loop notices a takeover, sets ``lost`` and returns."""
        a = Lease(db, "w", "a", ttl=0.3)
        assert await a.try_acquire()
        await db.leases.update_one({"_id": "w"}, {"$set": {"owner": "z"}, "$inc": {"epoch": 1}})
        await asyncio.wait_for(a.keep(), 2)
        assert a.lost.is_set() and a.epoch is None


class TestMembership:
    async def test_counts_live_members_and_forgets_those_that_leave(self, db: Db) -> None:
        """Members that beat are counted; one that leaves is not."""
        one, two = Membership(db, "one", ttl=30), Membership(db, "two", ttl=30)
        await one.beat()
        assert await two.beat() == 2
        await two.leave()
        assert await one.beat() == 1
