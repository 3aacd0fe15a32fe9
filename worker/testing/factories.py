"""Event factories for tests: realistic raw change documents with ordered resume tokens."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ParamSpec

from bson import Timestamp

from changestream_worker.events import ChangeEvent

P = ParamSpec("P")
BASE_SECONDS = 1_700_000_000
_counter = itertools.count()
# the tail a server appends after the timestamp in a v2 token (version, event kind, key…)
_TOKEN_TAIL = "2B042C0100296E5A1004"


def cluster_time_of(seq: int) -> Timestamp:
    """The cluster time ``make_event`` gives sequence number ``seq`` (100 per second)."""
    return Timestamp(BASE_SECONDS + seq // 100, seq % 100 + 1)


def token_of(seq: int) -> dict[str, str]:
    """A resume token for ``seq``; tokens sort (as hex strings) in sequence order."""
    ts = cluster_time_of(seq)
    return {"_data": f"82{ts.time:08X}{ts.inc:08X}{_TOKEN_TAIL}{seq:032X}04"}


def make_raw(
    op: str = "insert",
    key: Any = 1,
    doc: Mapping[str, Any] | None = None,
    coll: str = "c",
    db: str = "d",
    seq: int | None = None,
) -> dict[str, Any]:
    """A raw change document as a server sends it.

    Args:
        op: ``insert``, ``update``, ``replace``, ``delete``, ``drop``, ``rename``, …
        key: the document's ``_id``.
        doc: the full document (default ``{"_id": key}``) for insert, update and replace.
        coll: collection name.
        db: database name.
        seq: position in the stream; default: the next of a process-wide counter.
    """
    n = next(_counter) if seq is None else seq
    ts = cluster_time_of(n)
    raw: dict[str, Any] = {
        "_id": token_of(n),
        "operationType": op,
        "clusterTime": ts,
        "wallTime": datetime.fromtimestamp(ts.time, UTC),
        "ns": {"db": db, "coll": coll},
    }
    if op in ("insert", "update", "replace", "delete"):
        raw["documentKey"] = {"_id": key}
    full = dict(doc) if doc is not None else {"_id": key}
    if op in ("insert", "replace"):
        raw["fullDocument"] = full
    elif op == "update":
        fields = {k: v for k, v in full.items() if k != "_id"}
        raw["updateDescription"] = {
            "updatedFields": fields,
            "removedFields": [],
            "truncatedArrays": [],
        }
        if doc is not None:
            raw["fullDocument"] = full
    return raw


def _as_event(raw: Callable[P, dict[str, Any]]) -> Callable[P, ChangeEvent]:
    def event(*args: P.args, **kwargs: P.kwargs) -> ChangeEvent:
        return ChangeEvent(raw(*args, **kwargs))

    event.__doc__ = f"A ``ChangeEvent`` over ``{raw.__name__}(...)`` (same arguments)."
    event.__name__ = event.__qualname__ = "make_event"
    return event


#: a ``ChangeEvent`` over ``make_raw(...)``, with the same (typed) arguments
make_event = _as_event(make_raw)
