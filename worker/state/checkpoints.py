"""Checkpoints: where each watcher resumes, stored in MongoDB (or memory), fenced by lease epoch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from bson import Timestamp
from pymongo import WriteConcern
from pymongo.errors import DuplicateKeyError

from changestream_worker.state import names

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

    from changestream_worker.metrics import Metrics
    from changestream_worker.stream.position import Position

log = structlog.get_logger("changestream_worker.state.checkpoints")


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


class WatermarkSource(Protocol):
    """What the checkpointer reads from the dispatcher."""

    @property
    def watermark(self) -> Position | None: ...
    @property
    def completed_count(self) -> int: ...
    def add_listener(self, listener: Callable[[int], None]) -> None: ...


class Checkpointer:
    """Writes a watcher's low watermark every ``interval`` seconds or every ``max_events``
    completions, whichever comes first, and once more at ``stop``.

    A write is skipped when the watermark has not moved. When a write is fenced off
    (another process holds a newer lease epoch) ``fenced`` is set and ``on_fenced`` called;
    the checkpointer writes nothing further.

    Args:
        store: where checkpoints go.
        watcher: the watcher's name (the checkpoint's ``_id``).
        source: the dispatcher (``watermark``, ``completed_count``, ``add_listener``).
        interval: seconds between writes at most.
        max_events: completions that trigger a write before the interval is up.
        metrics: collectors, or ``None``.
        epoch: the lease epoch this watcher runs under, or ``None`` without leases.
        on_fenced: called once when a write is fenced off.
    """

    def __init__(
        self,
        store: CheckpointStore,
        watcher: str,
        source: WatermarkSource,
        interval: float,
        max_events: int,
        *,
        metrics: Metrics | None = None,
        epoch: int | None = None,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self.store, self.watcher, self.source = store, watcher, source
        self.interval, self.max_events = max(0.001, interval), max(1, max_events)
        self.metrics, self.epoch, self.on_fenced = metrics, epoch, on_fenced
        self.fenced = False
        self.writes = 0
        self.last_written: Position | None = None
        self._counted = 0  # completed_count at the last write
        self._base: int | None = None  # events_handled stored before this run
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        source.add_listener(self._on_complete)

    def _on_complete(self, count: int) -> None:
        if count - self._counted >= self.max_events:
            self._wake.set()

    def start(self) -> None:
        """Start the periodic flush loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"checkpointer:{self.watcher}")

    async def _loop(self) -> None:
        while not self.fenced:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next tick retries; the watermark is not lost
                log.warning(
                    "checkpoint_write_failed",
                    watcher=self.watcher,
                    error_type=type(exc).__name__,
                    error=str(exc)[:300],
                )

    async def flush(self) -> bool:
        """Write the watermark now if it moved, shielded from cancellation.

        Returns:
            ``False`` when fenced off, else ``True`` (written or nothing to write).
        """
        return await asyncio.shield(self._flush())

    async def _flush(self) -> bool:
        async with self._lock:
            if self.fenced:
                return False
            pos = self.source.watermark
            if (
                pos is None
                or pos == self.last_written
                or (pos.token is None and pos.cluster_time is None)
            ):
                return True
            if self._base is None:
                previous = await self.store.load(self.watcher)
                self._base = previous.events_handled if previous is not None else 0
            count = self.source.completed_count
            checkpoint = Checkpoint(
                token=pos.token,
                cluster_time=pos.cluster_time,
                wall_time=pos.wall_time,
                updated=datetime.now(UTC),
                events_handled=self._base + count,
            )
            epoch = self.epoch
            if not await self.store.save(self.watcher, checkpoint, epoch):
                self._fenced(epoch)
                return False
            self.last_written, self._counted = pos, count
            self.writes += 1
            self._observe(pos)
            return True

    def _fenced(self, epoch: int | None) -> None:
        self.fenced = True
        log.error("checkpoint_fenced", watcher=self.watcher, epoch=epoch)
        if self.on_fenced is not None:
            self.on_fenced()

    def _observe(self, pos: Position) -> None:
        if self.metrics is None:
            return
        self.metrics.checkpoint_writes_total.labels(watcher=self.watcher).inc()
        when = (
            pos.wall_time.timestamp()
            if pos.wall_time is not None
            else (pos.cluster_time.time if pos.cluster_time is not None else None)
        )
        if when is not None:
            self.metrics.checkpoint_age_seconds.labels(watcher=self.watcher).set(
                max(0.0, time.time() - when)
            )

    async def stop(self) -> None:
        """Stop the loop and write the final watermark (shielded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
