"""The emulator's data: documents (in the engine), collection metadata, the oplog, the clock."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bson
from bson import Binary, Timestamp

from changestream_worker.testing.emulator.engine import Collection, Engine
from changestream_worker.testing.emulator.errors import CommandError

INTERNAL_DBS = ("admin", "config", "local")


@dataclass(slots=True)
class Change:
    """One document-level change, before it gets a place in the oplog."""

    op: str  # insert | update | replace | delete
    db: str
    coll: str
    key: dict[str, Any]
    post: dict[str, Any] | None
    pre: dict[str, Any] | None
    update_desc: dict[str, Any] | None = None


@dataclass(slots=True)
class OplogEntry:
    """What change streams read: one operation at one cluster time."""

    ts: Timestamp
    txn_index: int
    op: str
    db: str
    coll: str | None
    wall: datetime
    key: dict[str, Any] | None = None
    post: dict[str, Any] | None = None
    pre: dict[str, Any] | None = None
    update_desc: dict[str, Any] | None = None
    images: bool = False
    to: tuple[str, str] | None = None
    lsid: dict[str, Any] | None = None
    txn_number: int | None = None
    uuid: Binary | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pos(self) -> tuple[int, int, int, int]:
        return (self.ts.time, self.ts.inc, self.txn_index, 0)


def key_bytes(db: str, coll: str, key: dict[str, Any]) -> bytes:
    """A hashable identity of a document, for write-conflict bookkeeping."""
    return f"{db}.{coll}\x00".encode() + bson.encode(key)


def update_description(pre: dict[str, Any], post: dict[str, Any]) -> dict[str, Any]:
    """Derive updatedFields/removedFields/truncatedArrays from two versions, as a delta oplog;
    ``disambiguatedPaths`` lists paths whose field names look like indexes or hold dots."""
    updated: dict[str, Any] = {}
    removed: list[str] = []
    truncated: list[dict[str, Any]] = []
    ambiguous: dict[str, list[str | int]] = {}
    _diff(pre, post, [], _Out(updated, removed, truncated, ambiguous))
    out: dict[str, Any] = {
        "updatedFields": updated,
        "removedFields": removed,
        "truncatedArrays": truncated,
    }
    if ambiguous:
        out["disambiguatedPaths"] = ambiguous
    return out


@dataclass(slots=True)
class _Out:
    updated: dict[str, Any]
    removed: list[str]
    truncated: list[dict[str, Any]]
    ambiguous: dict[str, list[str | int]]

    def path(self, parts: list[str | int]) -> str:
        text = ".".join(str(p) for p in parts)
        if any(isinstance(p, str) and (p.isdigit() or "." in p) for p in parts):
            self.ambiguous[text] = list(parts)
        return text


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _diff(pre: dict[str, Any], post: dict[str, Any], prefix: list[str | int], out: _Out) -> None:
    for k, new in post.items():
        parts: list[str | int] = [*prefix, k]
        if k not in pre:
            out.updated[out.path(parts)] = new
            continue
        old = pre[k]
        if _same(old, new):
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            _diff(old, new, parts, out)
        elif isinstance(old, list) and isinstance(new, list):
            _diff_array(old, new, parts, out)
        else:
            out.updated[out.path(parts)] = new
    for k in pre:
        if k not in post:
            out.removed.append(out.path([*prefix, k]))


def _diff_array(old: list[Any], new: list[Any], parts: list[str | int], out: _Out) -> None:
    common = min(len(old), len(new))
    if len(new) < len(old):
        out.truncated.append({"field": ".".join(str(p) for p in parts), "newSize": len(new)})
    for i in range(common):
        if _same(old[i], new[i]):
            continue
        if isinstance(old[i], dict) and isinstance(new[i], dict):
            _diff(old[i], new[i], [*parts, i], out)
        else:
            out.updated[out.path([*parts, i])] = new[i]
    for i in range(common, len(new)):
        out.updated[out.path([*parts, i])] = new[i]


class Clock:
    """Cluster time: a Timestamp that strictly increases with every tick."""

    def __init__(self) -> None:
        self.last = Timestamp(int(time.time()), 0)

    def current(self) -> Timestamp:
        """The cluster time now: it follows the wall clock between writes, as a real
        replica set's periodic no-op writes make it do."""
        now = int(time.time())
        return self.last if now <= self.last.time else Timestamp(now, 0)

    def tick(self) -> Timestamp:
        now = int(time.time())
        if now > self.last.time:
            self.last = Timestamp(now, 1)
        else:
            self.last = Timestamp(self.last.time, self.last.inc + 1)
        return self.last


class Store:
    """Documents, metadata and the oplog of the one-member replica set."""

    def __init__(self) -> None:
        self.data = Engine()
        self.clock = Clock()
        self.meta: dict[tuple[str, str], dict[str, Any]] = {}
        self.oplog: list[OplogEntry] = []
        self.truncated = 0  # entries discarded so far: absolute index = truncated + local index
        self.history_start = self.clock.tick()
        self.versions: dict[bytes, Timestamp] = {}
        self._new_data = asyncio.Event()

    # ---- metadata ---------------------------------------------------------------
    def collection(self, db: str, coll: str) -> Collection:
        return self.data[db][coll]

    def exists(self, db: str, coll: str) -> bool:
        return (db, coll) in self.meta

    def ensure(self, db: str, coll: str, options: dict[str, Any] | None = None) -> bool:
        """Create the collection's metadata if missing; True when it was created now."""
        if (db, coll) in self.meta:
            return False
        if not db or not coll or "$" in coll or "\x00" in db + coll:
            raise CommandError(73, f"Invalid namespace specified '{db}.{coll}'")
        self.meta[(db, coll)] = {
            "uuid": Binary.from_uuid(uuid.uuid4()),
            "options": dict(options or {}),
            "created": self.clock.last,
        }
        self.data[db].setdefault(coll, Collection(db, coll))
        self.append(
            OplogEntry(
                self.clock.tick(),
                0,
                "create",
                db,
                coll,
                _now(),
                uuid=self.meta[(db, coll)]["uuid"],
                extra={
                    "operationDescription": {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
                },
            )
        )
        return True

    def images_enabled(self, db: str, coll: str) -> bool:
        opts = self.meta.get((db, coll), {}).get("options", {})
        return bool(opts.get("changeStreamPreAndPostImages", {}).get("enabled"))

    def databases(self) -> list[str]:
        return sorted({db for db, _ in self.meta})

    def collections(self, db: str) -> list[str]:
        return sorted(c for d, c in self.meta if d == db)

    # ---- the oplog --------------------------------------------------------------
    def append(self, entry: OplogEntry) -> None:
        self.oplog.append(entry)
        self._new_data.set()
        self._new_data = asyncio.Event()

    async def wait_for_data(self, timeout: float) -> None:
        """Wait until something is appended, or ``timeout`` seconds pass."""
        event = self._new_data
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def record(
        self,
        changes: list[Change],
        lsid: dict[str, Any] | None = None,
        txn_number: int | None = None,
        in_txn: bool = False,
    ) -> Timestamp | None:
        """Give changes oplog places; a transaction's share one cluster time."""
        if not changes:
            return None
        ts = self.clock.tick()
        wall = _now()
        for i, ch in enumerate(changes):
            if not in_txn and i:
                ts = self.clock.tick()
            self.versions[key_bytes(ch.db, ch.coll, ch.key)] = ts
            self.append(
                OplogEntry(
                    ts,
                    i if in_txn else 0,
                    ch.op,
                    ch.db,
                    ch.coll,
                    wall,
                    key=ch.key,
                    post=ch.post,
                    pre=ch.pre,
                    update_desc=ch.update_desc,
                    images=self.images_enabled(ch.db, ch.coll),
                    lsid=lsid if in_txn else None,
                    txn_number=txn_number if in_txn else None,
                    uuid=self.meta.get((ch.db, ch.coll), {}).get("uuid"),
                )
            )
        return ts

    def truncate_before(self, ts: Timestamp) -> int:
        """Discard entries older than ``ts`` (emulator-only): resuming before it fails with 286."""
        keep = 0
        while keep < len(self.oplog) and self.oplog[keep].ts < ts:
            keep += 1
        del self.oplog[:keep]
        self.truncated += keep
        if ts > self.history_start:
            self.history_start = ts
        if ts > self.clock.last:
            self.clock.last = ts  # as if time had passed: history cannot start in the future
        return keep

    def first_ts(self) -> Timestamp:
        return self.oplog[0].ts if self.oplog else self.history_start

    # ---- collection-level operations --------------------------------------------
    def drop(self, db: str, coll: str) -> bool:
        if (db, coll) not in self.meta:
            return False
        meta = self.meta.pop((db, coll))
        self.data.drop(db, coll)
        self.append(OplogEntry(self.clock.tick(), 0, "drop", db, coll, _now(), uuid=meta["uuid"]))
        return True

    def drop_database(self, db: str) -> None:
        for coll in self.collections(db):
            self.drop(db, coll)
        self.data.pop(db, None)
        self.append(OplogEntry(self.clock.tick(), 0, "dropDatabase", db, None, _now()))

    def rename(self, db: str, coll: str, to_db: str, to_coll: str, drop_target: bool) -> None:
        if (db, coll) not in self.meta:
            raise CommandError(26, "Source collection does not exist")
        if (to_db, to_coll) in self.meta:
            if not drop_target:
                raise CommandError(48, "target namespace exists")
            self.drop(to_db, to_coll)
        moved = self.data[db].pop(coll)
        moved.db, moved.name = to_db, to_coll
        self.data[to_db][to_coll] = moved
        meta = self.meta.pop((db, coll))
        self.meta[(to_db, to_coll)] = meta
        self.append(
            OplogEntry(
                self.clock.tick(),
                0,
                "rename",
                db,
                coll,
                _now(),
                to=(to_db, to_coll),
                uuid=meta["uuid"],
            )
        )


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=datetime.now(UTC).microsecond // 1000 * 1000)


def clone(doc: Any) -> Any:
    return copy.deepcopy(doc)
