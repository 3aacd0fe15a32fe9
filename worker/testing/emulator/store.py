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
        self._armed = False
        self.profiling: dict[
            str, dict[str, Any]
        ] = {}  # per database: the profile command's settings

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
                extra={"operationDescription": _create_description(options or {})},
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
        self._wake()

    def _wake(self) -> None:
        # a fresh Event only when someone waits on the current one: appends are the hot path
        if self._armed:
            self._armed = False
            self._new_data.set()
            self._new_data = asyncio.Event()

    async def wait_for_data(self, timeout: float) -> None:
        """Wait until something is appended, or ``timeout`` seconds pass."""
        event = self._new_data
        self._armed = True
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
        per_ns: dict[tuple[str, str], tuple[bool, Binary | None]] = {}
        for i, ch in enumerate(changes):
            if not in_txn and i:
                ts = self.clock.tick()
            self.versions[key_bytes(ch.db, ch.coll, ch.key)] = ts
            ns = per_ns.get((ch.db, ch.coll))
            if ns is None:
                ns = per_ns[(ch.db, ch.coll)] = (
                    self.images_enabled(ch.db, ch.coll),
                    self.meta.get((ch.db, ch.coll), {}).get("uuid"),
                )
            self.oplog.append(
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
                    images=ns[0],
                    lsid=lsid if in_txn else None,
                    txn_number=txn_number if in_txn else None,
                    uuid=ns[1],
                )
            )
        self._wake()
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
        described: dict[str, Any] = {"to": {"db": to_db, "coll": to_coll}}
        if (to_db, to_coll) in self.meta:
            if not drop_target:
                raise CommandError(48, "target namespace exists")
            described["dropTarget"] = self.meta[(to_db, to_coll)]["uuid"]
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
                extra={"operationDescription": described},
            )
        )


def _create_description(options: dict[str, Any]) -> dict[str, Any]:
    if "viewOn" in options:
        return {"viewOn": options["viewOn"], "pipeline": list(options.get("pipeline") or [])}
    return {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=datetime.now(UTC).microsecond // 1000 * 1000)


def clone(doc: Any) -> Any:
    return copy.deepcopy(doc)
