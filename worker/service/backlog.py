"""Backlog estimates: how many changes a watcher has yet to handle, and how far behind it is.

Read from the oplog, which is where the change stream itself comes from: the entries of the
watched namespace after the watcher's position (handled, or stored by a dead owner). The
count is an estimate: the watcher's ``operations``/``match`` filters are not applied (more),
a transaction's ``applyOps`` entry counts once (fewer); it is capped, so one estimate reads at
most ``cap`` small entries. The seconds come from the server's ``operationTime`` (a ping), so
the observer can refresh them often and count rarely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import Timestamp

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

__all__ = ["Backlog", "measure_backlog", "namespace_filter", "oplog_last", "server_time"]

DEFAULT_CAP = 10_000


@dataclass(frozen=True, slots=True)
class Backlog:
    """One estimate.

    Args:
        events: oplog entries of the namespace after the position (at most the cap).
        capped: ``events`` reached the cap: the backlog is at least that.
        seconds: the server's newest cluster time minus the position's; 0 with no events.
        since: the position measured from.
    """

    events: int
    capped: bool
    seconds: float
    since: Timestamp | None

    def detail(self) -> dict[str, Any]:
        """The JSON /readyz and ``status`` show."""
        return {
            "events": self.events,
            "events_capped": self.capped,
            "seconds": round(self.seconds, 1),
            "since": None if self.since is None else self.since.as_datetime().isoformat(),
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


def namespace_filter(database: str, collection: str | None) -> dict[str, Any]:
    """The oplog entries of document changes a watcher's stream is made of: inserts, updates
    and deletes of the namespace, and transactions (``applyOps``) touching it."""
    ns: Any = (
        f"{database}.{collection}"
        if collection is not None
        else {"$regex": f"^{re.escape(database)}\\."}
    )
    return {
        "$or": [
            {"ns": ns, "op": {"$in": ["i", "u", "d"]}},
            {"ns": "admin.$cmd", "o.applyOps.ns": ns},
        ]
    }


async def oplog_last(client: AsyncMongoClient[Any]) -> Timestamp | None:
    """The cluster time of the newest oplog entry: the server's "now" in stream terms."""
    docs = (
        await client.local["oplog.rs"].find({}, {"ts": 1}).sort("$natural", -1).limit(1).to_list()
    )
    return docs[0]["ts"] if docs else None


async def server_time(client: AsyncMongoClient[Any]) -> Timestamp | None:
    """The server's ``operationTime``: its newest cluster time, from one ping (no oplog read)."""
    async with client.start_session() as session:
        await client.admin.command("ping", session=session)
        when = session.operation_time
    return when


async def measure_backlog(
    client: AsyncMongoClient[Any],
    since: Timestamp,
    namespace: dict[str, Any],
    cap: int = DEFAULT_CAP,
    last: Timestamp | None = None,
) -> Backlog:
    """Count the namespace's oplog entries after ``since`` (up to ``cap``).

    Args:
        client: a client allowed to read ``local.oplog.rs``.
        since: the watcher's position (a watermark or a stored checkpoint).
        namespace: from ``namespace_filter``.
        cap: the most entries one estimate reads.
        last: the newest oplog cluster time, if the caller already read it.
    """
    last = last if last is not None else await oplog_last(client)
    if last is None or last <= since:
        return Backlog(0, False, 0.0, since)
    query = {"ts": {"$gt": since}, **namespace}
    cursor = client.local["oplog.rs"].find(query, {"_id": 0, "ts": 1}).limit(cap + 1)
    events = len(await cursor.to_list())
    seconds = float(max(0, last.time - since.time)) if events else 0.0
    return Backlog(min(events, cap), events > cap, seconds, since)
