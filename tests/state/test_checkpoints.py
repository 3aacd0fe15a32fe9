"""Checkpoints: the in-memory store's fencing rules and the Checkpointer's flush cadence."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bson import Timestamp
from structlog.testing import capture_logs

from changestream_worker.state.checkpoints import Checkpoint, MemoryCheckpointStore
from changestream_worker.stream.checkpointer import Checkpointer
from changestream_worker.stream.position import Position, token_cluster_time
from changestream_worker.testing.factories import cluster_time_of, token_of


class Source:
    """A watermark source with the dispatcher's surface, moved by hand."""

    def __init__(self) -> None:
        self.watermark: Position | None = None
        self.completed_count = 0
        self.listeners: list[Callable[[int], None]] = []

    def add_listener(self, listener: Callable[[int], None]) -> None:
        self.listeners.append(listener)

    def complete(self, seq: int) -> None:
        self.watermark = Position(token_of(seq), cluster_time_of(seq), None)
        self.completed_count += 1
        for listener in self.listeners:
            listener(self.completed_count)


class GatedStore(MemoryCheckpointStore):
    """A memory store whose saves wait for a gate (to cancel a flush mid-write)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def save(self, watcher: str, checkpoint: Checkpoint, epoch: int | None = None) -> bool:
        self.entered.set()
        await self.gate.wait()
        return await super().save(watcher, checkpoint, epoch)


async def settle(cond: Callable[[], bool], tries: int = 500) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def cp(seq: int, **kw: Any) -> Checkpoint:
    return Checkpoint(token=token_of(seq), cluster_time=cluster_time_of(seq), **kw)


class TestMemoryStore:
    async def test_round_trip(self) -> None:
        """What is saved loads back, with the count and write time."""
        store = MemoryCheckpointStore()
        assert await store.load("w") is None
        assert await store.save("w", cp(3, events_handled=7))
        loaded = await store.load("w")
        assert loaded is not None and loaded.token == token_of(3)
        assert loaded.events_handled == 7 and loaded.updated is not None

    async def test_older_epoch_is_fenced_off(self) -> None:
        """A write with an epoch older than the stored one changes nothing and says so."""
        store = MemoryCheckpointStore()
        assert await store.save("w", cp(1), epoch=2)
        assert await store.save("w", cp(2), epoch=2)
        assert not await store.save("w", cp(3), epoch=1)
        assert await store.claim("w", 5)
        assert not await store.save("w", cp(4), epoch=4)
        loaded = await store.load("w")
        assert loaded is not None and loaded.token == token_of(2) and loaded.epoch == 5

    async def test_snapshot_progress_survives_checkpoint_writes(self) -> None:
        """Saving a position keeps the snapshot progress stored next to it."""
        store = MemoryCheckpointStore()
        at = Timestamp(100, 1)
        await store.save_snapshot_progress(
            "w", {"done": False, "last_id": 9, "start_at_operation_time": at}
        )
        await store.save("w", cp(1))
        loaded = await store.load("w")
        assert loaded is not None and loaded.snapshot is not None
        assert loaded.snapshot["last_id"] == 9 and loaded.token == token_of(1)

    async def test_reset_to_a_time_keeps_the_epoch(self) -> None:
        """A reset replaces the position (and forgets the snapshot) but keeps fencing."""
        store = MemoryCheckpointStore()
        await store.save("w", cp(1), epoch=3)
        await store.save_snapshot_progress("w", {"done": True})
        await store.reset("w", Checkpoint(token=None, cluster_time=Timestamp(50, 0)))
        loaded = await store.load("w")
        assert loaded is not None and loaded.token is None and loaded.snapshot is None
        assert loaded.cluster_time == Timestamp(50, 0) and loaded.epoch == 3
        assert not await store.save("w", cp(2), epoch=2)


class TestTokenTime:
    def test_cluster_time_is_read_from_the_token(self) -> None:
        """A server-shaped token yields its timestamp; anything else yields None."""
        assert token_cluster_time(token_of(250)) == cluster_time_of(250)
        assert token_cluster_time({"_data": "zz"}) is None
        assert token_cluster_time({}) is None and token_cluster_time(None) is None


class TestCheckpointer:
    async def test_writes_after_max_events_before_the_interval(self) -> None:
        """``max_events`` completions wake the checkpointer long before its interval."""
        store, source = MemoryCheckpointStore(), Source()
        cpr = Checkpointer(store, "w", source, interval=3600, max_events=5)
        cpr.start()
        try:
            for seq in range(4):
                source.complete(seq)
            await asyncio.sleep(0.01)
            assert store.writes == 0
            source.complete(4)
            await settle(lambda: store.writes == 1)
            loaded = await store.load("w")
            assert loaded is not None and loaded.token == token_of(4)
            assert loaded.events_handled == 5 and loaded.cluster_time == cluster_time_of(4)
        finally:
            await cpr.stop()

    async def test_writes_every_interval_and_only_when_moved(self) -> None:
        """The interval flushes a moved watermark; an unmoved one is not written again."""
        store, source = MemoryCheckpointStore(), Source()
        cpr = Checkpointer(store, "w", source, interval=0.005, max_events=1000)
        cpr.start()
        try:
            source.complete(1)
            await settle(lambda: store.writes == 1)
            await asyncio.sleep(0.03)  # several intervals with nothing new
            assert store.writes == 1 and cpr.writes == 1
        finally:
            await cpr.stop()
        assert store.writes == 1

    async def test_stop_writes_the_final_watermark(self) -> None:
        """``stop`` flushes what completed since the last write."""
        store, source = MemoryCheckpointStore(), Source()
        cpr = Checkpointer(store, "w", source, interval=3600, max_events=1000)
        cpr.start()
        source.complete(8)
        await cpr.stop()
        loaded = await store.load("w")
        assert loaded is not None and loaded.token == token_of(8)

    async def test_events_handled_accumulates_across_runs(self) -> None:
        """The stored count continues from the previous run's."""
        store, source = MemoryCheckpointStore(), Source()
        await store.save("w", cp(1, events_handled=40))
        cpr = Checkpointer(store, "w", source, interval=3600, max_events=1000)
        source.complete(2)
        source.complete(3)
        assert await cpr.flush()
        loaded = await store.load("w")
        assert loaded is not None and loaded.events_handled == 42

    async def test_fenced_write_stops_checkpointing(self) -> None:
        """A newer epoch fences the writer: ``fenced`` is set, the callback runs, no writes."""
        store, source = MemoryCheckpointStore(), Source()
        await store.claim("w", 7)
        called: list[bool] = []
        cpr = Checkpointer(
            store,
            "w",
            source,
            interval=3600,
            max_events=1000,
            epoch=6,
            on_fenced=lambda: called.append(True),
        )
        source.complete(1)
        with capture_logs() as logs:
            assert not await cpr.flush()
        assert cpr.fenced and called == [True]
        assert [e["event"] for e in logs] == ["checkpoint_fenced"]
        source.complete(2)
        assert not await cpr.flush()
        loaded = await store.load("w")
        assert loaded is not None and loaded.token is None

    async def test_flush_completes_even_if_its_caller_is_cancelled(self) -> None:
        """The write runs under ``asyncio.shield``: cancelling the caller does not lose it."""
        store, source = GatedStore(), Source()
        cpr = Checkpointer(store, "w", source, interval=3600, max_events=1000)
        source.complete(5)
        await store.save_snapshot_progress("w", {"done": True})
        caller = asyncio.create_task(cpr.flush())
        await store.entered.wait()
        caller.cancel()
        store.gate.set()
        await settle(lambda: cpr.writes == 1)
        loaded = await store.load("w")
        assert loaded is not None and loaded.token == token_of(5)
        assert caller.cancelled()
