"""The change stream as a source: the server-side filter, opening or resuming, reading ahead."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import Timestamp
from pymongo.errors import OperationFailure

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.change_stream import AsyncChangeStream

    from changestream_worker.config.models import WatcherSettings

INVALID_RESUME_TOKEN = 260


class Idle:
    """An empty batch: the stream has caught up; ``token`` is its post-batch resume token."""

    __slots__ = ("token",)

    def __init__(self, token: Mapping[str, Any] | None) -> None:
        self.token = token


END = object()  # the stream closed (after an invalidate)


def build_pipeline(
    ws: WatcherSettings, extra: tuple[Mapping[str, Any], ...] | list[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The server-side filter: operations and the user's match, as one ``$match`` stage."""
    clauses: list[dict[str, Any]] = []
    if ws.operations:
        ops = list(ws.operations)
        if "invalidate" not in ops:
            ops.append("invalidate")  # the watcher must see invalidates to apply its policy
        clauses.append({"operationType": {"$in": ops}})
    if ws.match:
        clauses.append(dict(ws.match))
    stages: list[dict[str, Any]] = []
    if clauses:
        stages.append({"$match": clauses[0] if len(clauses) == 1 else {"$and": clauses}})
    return stages + [dict(stage) for stage in extra]


def partition_stage(index: int, count: int) -> dict[str, Any]:
    """A ``$match`` keeping one partition's documents (and every collection-level event).

    ``$toHashedIndexKey`` (MongoDB ≥ 7.0) hashes the key exactly as a hashed index does, so a
    key always lands in the same partition and per-key order holds.
    """
    bucket = {"$mod": [{"$abs": {"$toHashedIndexKey": "$documentKey._id"}}, count]}
    return {
        "$match": {
            "$or": [{"documentKey._id": {"$exists": False}}, {"$expr": {"$eq": [bucket, index]}}]
        }
    }


def timestamp_of(when: datetime) -> Timestamp:
    """The cluster time of a wall-clock instant (naive means UTC)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Timestamp(int(when.timestamp()), 0)


async def cluster_time_now(client: AsyncMongoClient[Any]) -> Timestamp:
    """The cluster's current operation time."""
    reply = await client.admin.command("ping")
    ts = reply.get("operationTime")
    if not isinstance(ts, Timestamp):
        raise RuntimeError("the server did not report an operationTime")
    return ts


class ChangeSource:
    """Opens one watcher's change stream and reads it one batch ahead of the dispatcher.

    Args:
        target: the watched collection or database.
        ws: the watcher's settings (full-document modes, batch size, await time).
        pipeline: the stages to push to the server.
    """

    def __init__(self, target: Any, ws: WatcherSettings, pipeline: list[dict[str, Any]]) -> None:
        self.target, self.ws, self.pipeline = target, ws, pipeline

    def _kwargs(self) -> dict[str, Any]:
        ws = self.ws
        return {
            "full_document": None if ws.full_document == "default" else ws.full_document,
            "full_document_before_change": None
            if ws.full_document_before_change == "off"
            else ws.full_document_before_change,
            "batch_size": ws.batch_size,
            "max_await_time_ms": int(ws.max_await_time * 1000),
        }

    async def open(
        self, resume: Mapping[str, Any] | None, at: Timestamp | None, start_after: bool = False
    ) -> AsyncChangeStream[Any]:
        """Resume after ``resume``, else start at ``at``, else start now."""
        kw = self._kwargs()
        if resume is not None:
            kw["start_after" if start_after else "resume_after"] = resume
        elif at is not None:
            kw["start_at_operation_time"] = at
        try:
            stream: AsyncChangeStream[Any] = await self.target.watch(self.pipeline, **kw)
            return stream
        except OperationFailure as exc:
            if exc.code == INVALID_RESUME_TOKEN and resume is not None and not start_after:
                # the stored token is an invalidate: only startAfter may begin after it
                return await self.open(resume, None, start_after=True)
            raise

    @staticmethod
    async def pump(
        stream: AsyncChangeStream[Any], queue: asyncio.Queue[Any], stopping: asyncio.Event
    ) -> None:
        """Fetch ahead (at most a queue's worth), so the server's next batch is on its way
        while this one is handled: changes, ``Idle`` after an empty batch, ``END``, or the
        exception that ended the stream."""
        try:
            while stream.alive and not stopping.is_set():
                change = await stream.try_next()
                await queue.put(change if change is not None else Idle(stream.resume_token))
            await queue.put(END)
        except Exception as exc:  # handed to the reading loop, which owns the policies
            await queue.put(exc)
