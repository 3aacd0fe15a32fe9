"""ChangeEvent: a typed, read-only view over one raw change-stream document."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId, Timestamp, json_util

_SIMPLE_IDS = (ObjectId, str, int)


@dataclass(frozen=True, slots=True)
class Namespace:
    """Database and collection an event happened in (``coll`` is ``None`` for dropDatabase)."""

    db: str
    coll: str | None

    def __str__(self) -> str:
        return self.db if self.coll is None else f"{self.db}.{self.coll}"


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One change event, as the server sent it, with typed accessors.

    Args:
        raw: the change document exactly as received (``_id`` is the resume token).
        from_snapshot: ``True`` for insert-shaped events produced by an initial snapshot.
    """

    raw: Mapping[str, Any]
    from_snapshot: bool = False

    @property
    def operation_type(self) -> str:
        """``insert``, ``update``, ``replace``, ``delete``, ``drop``, ``rename``, …"""
        return str(self.raw.get("operationType", ""))

    @property
    def namespace(self) -> Namespace:
        """Where the change happened."""
        ns = self.raw.get("ns") or {}
        return Namespace(db=str(ns.get("db", "")), coll=ns.get("coll"))

    @property
    def document_key(self) -> Mapping[str, Any] | None:
        """``{"_id": …}`` (plus shard key fields) for document events, else ``None``."""
        key = self.raw.get("documentKey")
        return key if isinstance(key, Mapping) else None

    @property
    def document_id(self) -> Any:
        """The changed document's ``_id``, or ``None`` for collection-level events."""
        key = self.document_key
        return None if key is None else key.get("_id")

    @property
    def lane_key(self) -> str:
        """A stable string naming the document: events with the same one run in order.

        Collection-level events (drop, rename, invalidate) share one lane per namespace.
        """
        key = self.document_key
        if key is None:
            return f"ns:{self.namespace}"
        ns = self.raw.get("ns") or {}
        if len(key) == 1:
            value = key.get("_id")
            # the usual _id types get a cheap, still unambiguous key (type name + value)
            if type(value) in _SIMPLE_IDS:
                return f"{ns.get('db')}.{ns.get('coll')}:{type(value).__name__}:{value}"
        return f"{self.namespace}:{json_util.dumps(key, sort_keys=True)}"

    @property
    def full_document(self) -> Mapping[str, Any] | None:
        """The document after the change (inserts, replaces, updates with lookup)."""
        doc = self.raw.get("fullDocument")
        return doc if isinstance(doc, Mapping) else None

    @property
    def pre_image(self) -> Mapping[str, Any] | None:
        """The document before the change, when pre-images are enabled and requested."""
        doc = self.raw.get("fullDocumentBeforeChange")
        return doc if isinstance(doc, Mapping) else None

    @property
    def update_description(self) -> Mapping[str, Any] | None:
        """``updatedFields``/``removedFields``/``truncatedArrays`` of an update."""
        desc = self.raw.get("updateDescription")
        return desc if isinstance(desc, Mapping) else None

    @property
    def cluster_time(self) -> Timestamp | None:
        """The operation's cluster time (its oplog position)."""
        ts = self.raw.get("clusterTime")
        return ts if isinstance(ts, Timestamp) else None

    @property
    def wall_time(self) -> datetime | None:
        """The server's wall-clock time of the operation, when the server sends it."""
        wt = self.raw.get("wallTime")
        return wt if isinstance(wt, datetime) else None

    @property
    def token(self) -> Mapping[str, Any]:
        """The resume token (``_id`` of the change document)."""
        tok = self.raw.get("_id")
        return tok if isinstance(tok, Mapping) else {}

    @property
    def event_id(self) -> str:
        """A stable id for idempotency ledgers and inboxes: the token's hex, or a digest.

        Snapshot events have no resume token; theirs derives from namespace and key.
        """
        data = self.token.get("_data")
        if isinstance(data, str) and not self.from_snapshot:
            return data
        digest = hashlib.sha256(self.lane_key.encode()).hexdigest()[:32]
        return f"snapshot-{digest}"

    @property
    def txn_number(self) -> int | None:
        """The transaction number, for writes made in a transaction."""
        txn = self.raw.get("txnNumber")
        return int(txn) if txn is not None else None

    def get(self, path: str, default: Any = None) -> Any:
        """Read a dotted path from the raw event, e.g. ``fullDocument.email``."""
        return get_path(self.raw, path, default)


def get_path(doc: Any, path: str, default: Any = None) -> Any:
    """Read a dotted path (``a.b.0.c``) from a document; ``default`` when any part is missing."""
    cur: Any = doc
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return default
    return cur
