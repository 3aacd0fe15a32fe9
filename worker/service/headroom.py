"""Oplog headroom: how long until each watcher's checkpoint falls off the oplog."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import structlog
from bson import Timestamp
from pymongo.errors import OperationFailure, PyMongoError

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

    from changestream_worker.metrics import Metrics
    from changestream_worker.stream.watcher import Watcher

log = structlog.get_logger("changestream_worker.service.headroom")


def headroom_seconds(checkpoint: Timestamp, oplog_first: Timestamp) -> float:
    """Seconds until the oplog's oldest entry passes the checkpoint.

    A capped oplog discards its oldest entries as fast as new ones arrive, so with a steady
    write rate its front moves forward at one second per second: the checkpoint stays
    resumable for as long as it is younger than the front is old. Negative means lost.
    """
    return float(checkpoint.time - oplog_first.time)


async def oplog_first(client: AsyncMongoClient[Any]) -> Timestamp | None:
    """The cluster time of the oldest oplog entry (needs read access to ``local``)."""
    docs = await client.local["oplog.rs"].find({}, {"ts": 1}).sort("$natural", 1).limit(1).to_list()
    return docs[0]["ts"] if docs else None


async def watch_headroom(
    client: AsyncMongoClient[Any],
    watchers: Callable[[], Iterable[Watcher]],
    metrics: Metrics,
    interval: float = 10.0,
) -> None:
    """Refresh ``oplog_headroom_seconds`` and ``checkpoint_age_seconds`` every ``interval``."""
    while True:
        try:
            first = await oplog_first(client)
        except OperationFailure as exc:
            log.warning(
                "oplog_headroom_unavailable",
                error=str(exc)[:200],
                hint="grant the worker's user read access to the local database",
            )
            return
        except PyMongoError as exc:
            log.warning("oplog_headroom_failed", error=str(exc)[:200])
            first = None
        for w in watchers():
            pos = w.checkpointer.last_written
            at = pos.cluster_time if pos is not None else None
            if at is None:  # nothing written by this run (e.g. it failed at start): the stored one
                with contextlib.suppress(PyMongoError):
                    stored = await w.store.load(w.name)
                    at = stored.cluster_time if stored is not None else None
            if at is None:
                continue
            metrics.checkpoint_age_seconds.labels(watcher=w.name).set(
                max(0.0, time.time() - at.time)
            )
            if first is not None:
                metrics.oplog_headroom_seconds.labels(watcher=w.name).set(
                    headroom_seconds(at, first)
                )
        await asyncio.sleep(interval)
