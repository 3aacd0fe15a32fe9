"""Checkpoints: where each watcher resumes, stored in MongoDB (or memory), fenced by lease epoch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from bson import Timestamp
from pymongo import WriteConcern
from pymongo.errors import DuplicateKeyError

from changestream_worker.state import names

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a watcher resumes.

    Args:
        token: the resume token; ``None`` means "start at ``cluster_time``" (after a reset).
        cluster_time: the cluster time of the checkpointed position, when known.
        wall_time: the server's wall time of that position, when known.
        updated: when the checkpoint was written.
        events_handled: events completed by this watcher over its lifetime.
        epoch: the lease epoch of the last writer (``None`` without leases).
        snapshot: initial-snapshot progress, ``{done, last_id, start_at_operation_time}``.
    """

    token: Mapping[str, Any] | None
    cluster_time: Timestamp | None = None
    wall_time: datetime | None = None
    updated: datetime | None = None
    events_handled: int = 0
    epoch: int | None = None
    snapshot: Mapping[str, Any] | None = None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Checkpoint:
        """Build from a stored document."""
        return cls(
            token=doc.get("token"),
            cluster_time=doc.get("cluster_time"),
            wall_time=doc.get("wall_time"),
            updated=doc.get("updated"),
            events_handled=int(doc.get("events_handled") or 0),
            epoch=doc.get("epoch"),
            snapshot=doc.get("snapshot"),
        )

    def fields(self) -> dict[str, Any]:
        """The position fields a save writes (never ``epoch`` or ``snapshot``)."""
        return {
            "token": None if self.token is None else dict(self.token),
            "cluster_time": self.cluster_time,
            "wall_time": self.wall_time,
            "updated": self.updated or datetime.now(UTC),
            "events_handled": self.events_handled,
        }


class CheckpointStore(Protocol):
    """Persistence of checkpoints. ``epoch`` fences writes: a writer whose lease epoch is
    older than the one recorded on the checkpoint writes nothing and gets ``False``."""

    async def load(self, watcher: str) -> Checkpoint | None: ...
    async def save(
        self, watcher: str, checkpoint: Checkpoint, epoch: int | None = None
    ) -> bool: ...
    async def save_snapshot_progress(
        self, watcher: str, progress: Mapping[str, Any], epoch: int | None = None
    ) -> bool: ...
    async def claim(self, watcher: str, epoch: int) -> bool: ...
    async def reset(self, watcher: str, to: Checkpoint | None = None) -> None: ...


def _fence(watcher: str, epoch: int | None) -> dict[str, Any]:
    if epoch is None:
        return {"_id": watcher}
    return {"_id": watcher, "$or": [{"epoch": {"$lte": epoch}}, {"epoch": {"$exists": False}}]}


class MongoCheckpointStore:
    """Checkpoints in ``<state_db>.checkpoints``, one document per watcher (``_id`` = name),
    written with majority write concern so a failover cannot roll one back.

    Fencing uses the lease epoch as a fencing token stored on the checkpoint: a write
    carrying epoch N matches only while the stored epoch is ≤ N, so once a newer owner has
    claimed or written the checkpoint, a deposed owner's write matches nothing (an upsert
    then collides on ``_id`` and reports ``False``). A new owner calls ``claim`` right after
    acquiring its lease, which closes the window before its first write. This needs no
    transaction and no read of the lease collection on the hot path.

    Args:
        state_db: the worker's state database.
    """

    def __init__(self, state_db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = state_db.get_collection(
            names.CHECKPOINTS, write_concern=WriteConcern("majority")
        )

    async def load(self, watcher: str) -> Checkpoint | None:
        """The stored checkpoint of ``watcher``, or ``None``."""
        doc = await self.collection.find_one({"_id": watcher})
        return None if doc is None else Checkpoint.from_doc(doc)

    async def _write(self, watcher: str, fields: dict[str, Any], epoch: int | None) -> bool:
        if epoch is not None:
            fields = {**fields, "epoch": epoch}
        try:
            await self.collection.update_one(_fence(watcher, epoch), {"$set": fields}, upsert=True)
        except DuplicateKeyError:
            return False  # the document exists with a newer epoch: we are fenced off
        return True

    async def save(self, watcher: str, checkpoint: Checkpoint, epoch: int | None = None) -> bool:
        """Write the position fields; ``False`` when fenced off by a newer epoch."""
        return await self._write(watcher, checkpoint.fields(), epoch)

    async def save_snapshot_progress(
        self, watcher: str, progress: Mapping[str, Any], epoch: int | None = None
    ) -> bool:
        """Record initial-snapshot progress next to the checkpoint; ``False`` when fenced."""
        return await self._write(watcher, {"snapshot": dict(progress)}, epoch)

    async def claim(self, watcher: str, epoch: int) -> bool:
        """Raise the checkpoint's epoch to ``epoch`` (a new lease owner); ``False`` if a
        newer epoch already holds it."""
        return await self._write(watcher, {}, epoch)

    async def reset(self, watcher: str, to: Checkpoint | None = None) -> None:
        """Forget the checkpoint (and snapshot progress), or replace it with ``to``.

        The stored epoch is kept, so fencing still holds across a reset.
        """
        doc = await self.collection.find_one({"_id": watcher}, {"epoch": 1})
        new = {"token": None} if to is None else to.fields()
        if doc is not None and doc.get("epoch") is not None:
            new["epoch"] = doc["epoch"]
        elif to is None:
            await self.collection.delete_one({"_id": watcher})
            return
        await self.collection.replace_one({"_id": watcher}, new, upsert=True)


class MemoryCheckpointStore:
    """An in-process ``CheckpointStore`` with the same fencing rules (unit tests)."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.writes = 0

    async def load(self, watcher: str) -> Checkpoint | None:
        """The stored checkpoint of ``watcher``, or ``None``."""
        doc = self.docs.get(watcher)
        return None if doc is None else Checkpoint.from_doc(doc)

    def _write(self, watcher: str, fields: dict[str, Any], epoch: int | None) -> bool:
        doc = self.docs.setdefault(watcher, {"_id": watcher})
        stored = doc.get("epoch")
        if epoch is not None and stored is not None and stored > epoch:
            return False
        doc.update(fields)
        if epoch is not None:
            doc["epoch"] = epoch
        self.writes += 1
        return True

    async def save(self, watcher: str, checkpoint: Checkpoint, epoch: int | None = None) -> bool:
        """Write the position fields; ``False`` when fenced off by a newer epoch."""
        return self._write(watcher, checkpoint.fields(), epoch)

    async def save_snapshot_progress(
        self, watcher: str, progress: Mapping[str, Any], epoch: int | None = None
    ) -> bool:
        """Record initial-snapshot progress; ``False`` when fenced."""
        return self._write(watcher, {"snapshot": dict(progress)}, epoch)

    async def claim(self, watcher: str, epoch: int) -> bool:
        """Raise the stored epoch to ``epoch``; ``False`` if a newer one holds it."""
        return self._write(watcher, {}, epoch)

    async def reset(self, watcher: str, to: Checkpoint | None = None) -> None:
        """Forget the checkpoint, or replace it with ``to``; the stored epoch is kept."""
        epoch = self.docs.get(watcher, {}).get("epoch")
        self.docs.pop(watcher, None)
        if to is not None or epoch is not None:
            doc = {"_id": watcher, "token": None} if to is None else {"_id": watcher, **to.fields()}
            if epoch is not None:
                doc["epoch"] = epoch
            self.docs[watcher] = doc
