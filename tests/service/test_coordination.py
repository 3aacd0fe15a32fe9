"""The coordinator: standing by for leases, fair shares of partitions, hand-overs."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import CollectorRegistry
from pymongo.asynchronous.database import AsyncDatabase

from changestream_worker.config.models import LeaseSettings, WatcherSettings
from changestream_worker.metrics import Metrics
from changestream_worker.service.coordination import Coordinator, fair_share

Db = AsyncDatabase[dict[str, Any]]


def coordinator(db: Db, me: str, stop: asyncio.Event, handed: list[str]) -> Coordinator:
    return Coordinator(
        LeaseSettings(ttl=30, instance_id=me),
        db,
        me,
        Metrics(CollectorRegistry()),
        stop,
        hand_over=handed.append,
    )


def partitioned(n: int) -> WatcherSettings:
    return WatcherSettings(name="p", collection="c", handlers=["h"], partitions=n)


class TestFairShare:
    def test_rounds_up(self) -> None:
        """Four partitions over three members: at most two each; never zero members."""
        assert fair_share(4, 3) == 2
        assert fair_share(4, 4) == 1
        assert fair_share(3, 0) == 3


class TestCoordinator:
    async def test_acquires_a_free_lease_at_once(self, db: Db) -> None:
        """A free watcher lease is acquired without standing by."""
        stop, handed = asyncio.Event(), []
        c = coordinator(db, "a", stop, handed)
        standby = []

        async def standing_by() -> None:
            standby.append(1)

        ws = WatcherSettings(name="w", collection="c", handlers=["h"])
        lease = await c.acquire("w", ws, standing_by)
        assert lease is not None and lease.epoch == 1
        assert standby == []

    async def test_stands_by_while_another_replica_holds_it(self, db: Db) -> None:
        """A held lease makes the second process stand by (announced once) until released."""
        stop, handed = asyncio.Event(), []
        a, b = coordinator(db, "a", stop, handed), coordinator(db, "b", stop, handed)
        ws = WatcherSettings(name="w", collection="c", handlers=["h"])
        held = await a.acquire("w", ws, lambda: asyncio.sleep(0))
        assert held is not None
        standby: list[int] = []

        async def standing_by() -> None:
            standby.append(1)

        waiting = asyncio.create_task(b.acquire("w", ws, standing_by))
        await asyncio.sleep(1.5)
        assert not waiting.done() and standby == [1]
        await held.release()
        a.released("w")
        lease = await asyncio.wait_for(waiting, 5)
        assert lease is not None and lease.owner == "b"
        assert standby == [1]

    async def test_returns_none_when_stopping(self, db: Db) -> None:
        """Standing by ends with None once the process is asked to stop."""
        stop, handed = asyncio.Event(), []
        a, b = coordinator(db, "a", stop, handed), coordinator(db, "b", stop, handed)
        ws = WatcherSettings(name="w", collection="c", handlers=["h"])
        assert await a.acquire("w", ws, lambda: asyncio.sleep(0)) is not None
        waiting = asyncio.create_task(b.acquire("w", ws, lambda: asyncio.sleep(0)))
        await asyncio.sleep(0.2)
        stop.set()
        assert await asyncio.wait_for(waiting, 5) is None

    async def test_takes_no_more_than_its_fair_share_of_partitions(self, db: Db) -> None:
        """With two live members, one process takes at most two of four partitions."""
        stop, handed = asyncio.Event(), []
        a, other = coordinator(db, "a", stop, handed), coordinator(db, "b", stop, handed)
        await a.start()
        await other.start()
        await a.membership.beat() if a.membership else None
        ws = partitioned(4)
        got = [await a.acquire(f"p#{i}", ws, lambda: asyncio.sleep(0)) for i in range(2)]
        assert all(lease is not None for lease in got)
        third = asyncio.create_task(a.acquire("p#2", ws, lambda: asyncio.sleep(0)))
        await asyncio.sleep(1.5)
        assert not third.done()
        stop.set()
        assert await asyncio.wait_for(third, 5) is None
        await a.close()
        await other.close()

    async def test_hands_over_partitions_beyond_the_fair_share(self, db: Db) -> None:
        """When members join, the partitions above the new fair share are handed over."""
        stop, handed = asyncio.Event(), []
        a = coordinator(db, "a", stop, handed)
        await a.start()
        ws = partitioned(4)
        for i in range(4):
            assert await a.acquire(f"p#{i}", ws, lambda: asyncio.sleep(0)) is not None
        a._rebalance(alive=2)
        assert sorted(handed) == ["p#2", "p#3"]
        assert a.handed_over("p#3") and not a.handed_over("p#3")
        assert not a.handed_over("p#0")
        await a.close()
