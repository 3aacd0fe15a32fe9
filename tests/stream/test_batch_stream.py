"""Batches end to end: a ``handle_batch`` handler drains a backlog from the emulator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from pymongo import AsyncMongoClient

from changestream_worker import ChangeEvent, Handler, HandlerContext
from tests.support.harness import config_dict, eventually, running, settings_of, unique, watcher

DOCS, VERSIONS = 600, 5  # 3,000 changes, as issue 16 asks


class Collect(Handler):
    """Records every batch it gets, per watcher database."""

    batches: ClassVar[dict[str, list[list[tuple[Any, int]]]]] = {}

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        key = ctx.database.name
        self.batches.setdefault(key, []).append([(e.document_id, _version(e)) for e in events])


class TestBatchesFromTheStream:
    async def test_a_backlog_arrives_in_batches_in_document_order(self, mongo_uri: str) -> None:
        """3,000 changes written while the worker is down: batches larger than one, no more
        than ``max_events``, every change once, each document's versions in order."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
        db, state = unique("db"), unique("state")
        handlers = {"collect": {"type": f"{__name__}:Collect"}}
        cfg = settings_of(
            config_dict(
                mongo_uri,
                db,
                state,
                [
                    watcher(
                        handlers=["collect"],
                        concurrency=4,
                        batch={"max_events": 50},
                    )
                ],
                handlers=handlers,
            )
        )
        try:
            async with running(cfg):
                await eventually(lambda: _stored(client[state], "items"), what="the starting point")
            items = client[db].items
            await items.insert_many([{"_id": k, "v": 0} for k in range(DOCS)])
            for _ in range(VERSIONS - 1):  # one event per document each time, 50 a call
                for low in range(0, DOCS, 50):
                    match = {"_id": {"$gte": low, "$lt": low + 50}}
                    await items.update_many(match, {"$inc": {"v": 1}})
            async with running(cfg):

                async def drained() -> bool:
                    return sum(len(b) for b in Collect.batches.get(db, [])) >= DOCS * VERSIONS

                await eventually(drained, timeout=90, what="every change")
            batches = Collect.batches.pop(db)
            assert max(len(b) for b in batches) > 1 and all(len(b) <= 50 for b in batches)
            versions: dict[Any, list[int]] = {}
            for batch in batches:
                for key, version in batch:
                    versions.setdefault(key, []).append(version)
            assert sorted(versions) == list(range(DOCS))
            assert all(v == list(range(VERSIONS)) for v in versions.values())
            cp = await client[state].checkpoints.find_one({"_id": "items"})
            assert cp is not None and cp["events_handled"] >= DOCS * VERSIONS
        finally:
            await client.drop_database(db)
            await client.drop_database(state)
            await client.close()


def _version(event: ChangeEvent) -> int:
    if event.operation_type == "insert":
        return int(event.get("fullDocument.v"))
    return int(event.get("updateDescription.updatedFields.v"))


async def _stored(state: Any, name: str) -> bool:
    return await state.checkpoints.find_one({"_id": name}) is not None
