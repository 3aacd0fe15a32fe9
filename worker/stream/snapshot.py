"""Initial snapshot, a peer of the change stream: existing documents as insert-shaped events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from bson import Timestamp

from changestream_worker.events import ChangeEvent
from changestream_worker.stream.source import cluster_time_now

if TYPE_CHECKING:
    import asyncio

    from pymongo.asynchronous.collection import AsyncCollection
    from structlog.typing import FilteringBoundLogger

    from changestream_worker.state.checkpoints import CheckpointStore

PAGE = 1000


class EventSink(Protocol):
    """Where the snapshot hands its events (the dispatcher)."""

    async def submit(self, event: ChangeEvent) -> None: ...

    async def drain(self, timeout: float | None) -> bool: ...

    @property
    def stopped(self) -> BaseException | None: ...


class Snapshot:
    """Scans one collection in ``_id`` order, page by page, resumably.

    Progress (the last ``_id`` delivered and the cluster time taken before the scan) is
    saved after every page whose events are all done, so an interrupted snapshot resumes,
    not restarts. Events are handled at least once: a crash mid-page re-delivers that page.

    Args:
        collection: the collection to scan.
        name: the watcher's name (where progress is saved).
        store: the checkpoint store that keeps the progress.
        epoch: the lease epoch progress is written under (``None`` without leases).
        log: the watcher's logger.
    """

    def __init__(
        self,
        collection: AsyncCollection[Any],
        name: str,
        store: CheckpointStore,
        epoch: int | None,
        log: FilteringBoundLogger,
    ) -> None:
        self.collection, self.name, self.store = collection, name, store
        self.epoch, self.log = epoch, log

    async def run(
        self, sink: EventSink, progress: Mapping[str, Any] | None, stopping: asyncio.Event
    ) -> Timestamp:
        """Deliver every document to ``sink``, then return where streaming starts."""
        if progress and isinstance(progress.get("start_at_operation_time"), Timestamp):
            at: Timestamp = progress["start_at_operation_time"]
            last_id = progress.get("last_id")
            started = "last_id" in progress
        else:
            at = await cluster_time_now(self.collection.database.client)
            last_id, started = None, False
        self.log.info("snapshot_started", resumed=started, start_at=at.as_datetime().isoformat())
        ns = {"db": self.collection.database.name, "coll": self.collection.name}
        delivered = 0
        while not stopping.is_set():
            query = {"_id": {"$gt": last_id}} if started else {}
            docs = await self.collection.find(query).sort("_id", 1).limit(PAGE).to_list()
            if not docs:
                break
            for doc in docs:
                raw = {
                    "_id": None,
                    "operationType": "insert",
                    "ns": ns,
                    "documentKey": {"_id": doc["_id"]},
                    "fullDocument": doc,
                }
                await sink.submit(ChangeEvent(raw, from_snapshot=True))
            await sink.drain(None)
            if sink.stopped is not None:
                break
            last_id, started = docs[-1]["_id"], True
            delivered += len(docs)
            await self._save({"done": False, "last_id": last_id, "start_at_operation_time": at})
        if stopping.is_set() or sink.stopped is not None:
            return at
        await self._save({"done": True, "start_at_operation_time": at})
        self.log.info("snapshot_done", documents=delivered)
        return at

    async def _save(self, progress: dict[str, Any]) -> None:
        await self.store.save_snapshot_progress(self.name, progress, epoch=self.epoch)
