"""Dead letters: events a handler could not process, parked in MongoDB for inspection and replay."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import bson
import structlog
from bson import ObjectId
from bson.codec_options import CodecOptions

from changestream_worker.events import ChangeEvent
from changestream_worker.state import names

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase


log = structlog.get_logger("changestream_worker.state.deadletters")
# room for the other fields under MongoDB's 16 MiB document limit
MAX_EVENT_BYTES = 15 * 1024 * 1024
_DECODE: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One parked event and why it failed (``event`` is the change document as received)."""

    id: ObjectId
    watcher: str
    handler: str
    event: ChangeEvent
    event_id: str
    operation: str
    document_key: Any
    error_type: str
    error_message: str
    attempts: int
    first_failure: datetime | None
    last_failure: datetime | None
    created: datetime | None
    truncated: bool = False

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> DeadLetter:
        """Build from a stored document (``event`` is BSON bytes, or a sub-document)."""
        raw = doc.get("event")
        if isinstance(raw, bytes | bytearray):
            raw = bson.decode(bytes(raw), codec_options=_DECODE)
        return cls(
            id=doc["_id"],
            watcher=str(doc.get("watcher", "")),
            handler=str(doc.get("handler", "")),
            event=ChangeEvent(raw or {}, from_snapshot=bool(doc.get("from_snapshot"))),
            event_id=str(doc.get("event_id", "")),
            operation=str(doc.get("operation", "")),
            document_key=doc.get("document_key"),
            error_type=str(doc.get("error_type", "")),
            error_message=str(doc.get("error_message", "")),
            attempts=int(doc.get("attempts", 0)),
            first_failure=doc.get("first_failure"),
            last_failure=doc.get("last_failure"),
            created=doc.get("created"),
            truncated=bool(doc.get("event_truncated")),
        )


def _encode_event(event: ChangeEvent) -> tuple[bytes, bool]:
    # BSON bytes keep the change document exactly, whatever its field names (dots, "$")
    data = bson.encode(dict(event.raw))
    if len(data) <= MAX_EVENT_BYTES:
        return data, False
    slim = {
        k: v for k, v in event.raw.items() if k not in ("fullDocument", "fullDocumentBeforeChange")
    }
    return bson.encode(slim), True


class DeadLetterStore:
    """Dead letters in ``<state_db>.dead_letters``.

    Args:
        state_db: the worker's state database.
    """

    def __init__(self, state_db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = state_db[names.DEAD_LETTERS]
        self._indexed = False

    async def add(
        self,
        watcher: str,
        handler: str,
        event: ChangeEvent,
        error: BaseException,
        attempts: int,
        first_failure: datetime,
        last_failure: datetime,
    ) -> ObjectId:
        """Park ``event``, which ``handler`` failed ``attempts`` times; returns its id."""
        if not self._indexed:
            await self.collection.create_index([("watcher", 1), ("created", 1)])
            self._indexed = True
        data, truncated = _encode_event(event)
        oid = ObjectId()
        doc = {
            "_id": oid,
            "watcher": watcher,
            "handler": handler,
            "event": data,
            "event_truncated": truncated,
            "from_snapshot": event.from_snapshot,
            "event_id": event.event_id,
            "operation": event.operation_type,
            "namespace": str(event.namespace),
            "document_key": event.document_key,
            "error_type": type(error).__name__,
            "error_message": str(error)[:4000],
            "attempts": attempts,
            "first_failure": first_failure,
            "last_failure": last_failure,
            "created": datetime.now(UTC),
        }
        await self.collection.insert_one(doc)
        return oid

    @staticmethod
    def _filter(watcher: str | None) -> dict[str, Any]:
        return {} if watcher is None else {"watcher": watcher}

    async def list(
        self, watcher: str | None = None, limit: int | None = None
    ) -> builtins.list[DeadLetter]:
        """Dead letters, oldest first, of one watcher or all."""
        cursor = self.collection.find(self._filter(watcher)).sort([("created", 1), ("_id", 1)])
        if limit is not None:
            cursor = cursor.limit(limit)
        return [DeadLetter.from_doc(doc) async for doc in cursor]

    async def count(self, watcher: str | None = None) -> int:
        """How many dead letters one watcher (or all) has."""
        return await self.collection.count_documents(self._filter(watcher))

    async def counts(self) -> dict[str, int]:
        """Dead letters per watcher."""
        pipeline = [{"$group": {"_id": "$watcher", "n": {"$sum": 1}}}]
        cursor = await self.collection.aggregate(pipeline)
        return {str(doc["_id"]): int(doc["n"]) async for doc in cursor}

    async def purge(self, watcher: str | None = None) -> int:
        """Delete the dead letters of one watcher (or all); returns how many."""
        return (await self.collection.delete_many(self._filter(watcher))).deleted_count

    async def get(self, id: ObjectId | str) -> DeadLetter | None:
        """One dead letter by id, or ``None``."""
        doc = await self.collection.find_one({"_id": _oid(id)})
        return None if doc is None else DeadLetter.from_doc(doc)

    async def delete(self, id: ObjectId | str) -> bool:
        """Remove one dead letter (after a successful replay)."""
        return (await self.collection.delete_one({"_id": _oid(id)})).deleted_count == 1

    async def take(self, id: ObjectId | str) -> DeadLetter | None:
        """Remove one dead letter and return it, or ``None`` if it was gone."""
        doc = await self.collection.find_one_and_delete({"_id": _oid(id)})
        return None if doc is None else DeadLetter.from_doc(doc)

    async def record_failure(self, id: ObjectId | str, error: BaseException, attempts: int) -> None:
        """Note a failed replay: new error, more attempts, a new last failure time."""
        await self.collection.update_one(
            {"_id": _oid(id)},
            {
                "$set": {
                    "error_type": type(error).__name__,
                    "error_message": str(error)[:4000],
                    "last_failure": datetime.now(UTC),
                },
                "$inc": {"attempts": attempts},
            },
        )


def _oid(id: ObjectId | str) -> ObjectId:
    return id if isinstance(id, ObjectId) else ObjectId(id)
