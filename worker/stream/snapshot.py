"""Initial snapshot: deliver existing documents as insert-shaped events, resumably."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bson import Timestamp

from changestream_worker.events import ChangeEvent

if TYPE_CHECKING:
    from changestream_worker.stream.watcher import Watcher

PAGE = 1000


async def cluster_time_now(watcher: Watcher) -> Timestamp:
    """The cluster's current operation time, taken before a scan begins."""
    reply = await watcher.db.client.admin.command("ping")
    ts = reply.get("operationTime")
    if not isinstance(ts, Timestamp):
        raise RuntimeError("the server did not report an operationTime")
    return ts


async def run_snapshot(watcher: Watcher, progress: Mapping[str, Any] | None) -> Timestamp:
    """Scan the collection in ``_id`` order, page by page, then return where streaming starts.

    Progress (last ``_id`` delivered, the cluster time taken before the scan) is saved after
    every page whose events are all done, so an interrupted snapshot resumes, not restarts.
    Events are handled at least once: a crash mid-page re-delivers that page.
    """
    if watcher.ws.collection is None:
        raise ValueError(f"watcher {watcher.name!r}: start_at: snapshot needs a collection")
    coll = watcher.db[watcher.ws.collection]
    if progress and isinstance(progress.get("start_at_operation_time"), Timestamp):
        at: Timestamp = progress["start_at_operation_time"]
        last_id = progress.get("last_id")
        started = "last_id" in progress
    else:
        at = await cluster_time_now(watcher)
        last_id, started = None, False
    watcher.log.info("snapshot_started", resumed=started, start_at=at.as_datetime().isoformat())
    ns = {"db": watcher.db.name, "coll": watcher.ws.collection}
    delivered = 0
    while not watcher.stopping.is_set():
        query = {"_id": {"$gt": last_id}} if started else {}
        docs = await coll.find(query).sort("_id", 1).limit(PAGE).to_list()
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
            await watcher.dispatcher.submit(ChangeEvent(raw, from_snapshot=True))
        await watcher.dispatcher.drain(None)
        if watcher.dispatcher.stopped is not None:
            break
        last_id, started = docs[-1]["_id"], True
        delivered += len(docs)
        await watcher.store.save_snapshot_progress(
            watcher.name,
            {"done": False, "last_id": last_id, "start_at_operation_time": at},
            epoch=watcher._epoch(),
        )
    if watcher.stopping.is_set() or watcher.dispatcher.stopped is not None:
        return at
    await watcher.store.save_snapshot_progress(
        watcher.name, {"done": True, "start_at_operation_time": at}, epoch=watcher._epoch()
    )
    watcher.log.info("snapshot_done", documents=delivered)
    return at
