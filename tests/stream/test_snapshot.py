"""The snapshot source: existing documents in _id order, page by page, resumable."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from bson import Timestamp
from pymongo.asynchronous.database import AsyncDatabase

from changestream_worker.events import ChangeEvent
from changestream_worker.state.checkpoints import MemoryCheckpointStore
from changestream_worker.stream import snapshot as snapshot_module
from changestream_worker.stream.snapshot import Snapshot

Db = AsyncDatabase[dict[str, Any]]


class Sink:
    """Collects what the snapshot hands over; may stop after some events."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[ChangeEvent] = []
        self.stop_after = stop_after
        self.stopped: BaseException | None = None

    async def submit(self, event: ChangeEvent) -> None:
        self.events.append(event)
        if self.stop_after is not None and len(self.events) >= self.stop_after:
            self.stopped = RuntimeError("handler stopped the watcher")

    async def drain(self, timeout: float | None) -> bool:
        return True


def snap(db: Db, store: MemoryCheckpointStore) -> Snapshot:
    return Snapshot(db["items"], "w", store, None, structlog.get_logger("test"))


class TestSnapshot:
    async def test_delivers_every_document_as_an_insert_in_id_order(self, db: Db) -> None:
        """Every document arrives once, insert-shaped, flagged from_snapshot, in _id order."""
        await db.items.insert_many([{"_id": i, "v": i * 10} for i in (5, 1, 3)])
        store, sink = MemoryCheckpointStore(), Sink()
        at = await snap(db, store).run(sink, None, asyncio.Event())
        assert isinstance(at, Timestamp)
        assert [e.document_id for e in sink.events] == [1, 3, 5]
        assert all(e.operation_type == "insert" and e.from_snapshot for e in sink.events)
        assert sink.events[1].full_document == {"_id": 3, "v": 30}
        cp = await store.load("w")
        assert cp is not None and cp.snapshot is not None and cp.snapshot["done"] is True

    async def test_resumes_after_the_last_completed_page(self, db: Db, monkeypatch: Any) -> None:
        """Stopped mid-scan, a new snapshot continues after the last saved page."""
        monkeypatch.setattr(snapshot_module, "PAGE", 2)
        await db.items.insert_many([{"_id": i} for i in range(5)])
        store = MemoryCheckpointStore()
        first = Sink(stop_after=3)  # stops inside the second page: only page one is saved
        await snap(db, store).run(first, None, asyncio.Event())
        cp = await store.load("w")
        assert cp is not None and cp.snapshot is not None
        assert cp.snapshot["last_id"] == 1 and cp.snapshot["done"] is False
        again = Sink()
        await snap(db, store).run(again, cp.snapshot, asyncio.Event())
        assert [e.document_id for e in again.events] == [2, 3, 4]
        done = await store.load("w")
        assert done is not None and done.snapshot is not None and done.snapshot["done"]
        assert done.snapshot["start_at_operation_time"] == cp.snapshot["start_at_operation_time"]
