"""Change streams over the emulator's oplog: tokens, event shapes, scopes and resume rules."""

from __future__ import annotations

import bisect
from typing import Any

from bson import Int64, Timestamp

from changestream_worker.testing.emulator import compat, cs_stages
from changestream_worker.testing.emulator.cs_stages import Pos, decode_token, encode_token
from changestream_worker.testing.emulator.errors import CommandError, unknown_field
from changestream_worker.testing.emulator.store import INTERNAL_DBS, OplogEntry, Store

compat.install()

# Token kinds, after the event's place: an event, the invalidate that follows it, and a
# high-water mark (everything up to and including that cluster time has been seen).
EVENT, INVALIDATE, HWM = 0, 1, 2
OPTIONS = {
    "fullDocument",
    "fullDocumentBeforeChange",
    "resumeAfter",
    "startAfter",
    "startAtOperationTime",
    "allChangesForCluster",
    "showExpandedEvents",
}
EXPANDED = {"create", "createIndexes", "dropIndexes", "modify"}


class ChangeStream:
    """One open change stream: its scope, options, user stages and position in the oplog."""

    def __init__(
        self,
        store: Store,
        db: str,
        coll: str | None,
        spec: dict[str, Any],
        pipeline: list[dict[str, Any]],
    ) -> None:
        self.store = store
        for key in spec:
            if key not in OPTIONS:
                raise unknown_field(f"$changeStream.{key}")
        self.cluster = bool(spec.get("allChangesForCluster"))
        if self.cluster and (db != "admin" or coll is not None):
            raise CommandError(
                72,
                "$changeStream may only be run with "
                "{allChangesForCluster: true} on the 'admin' database",
            )
        if not self.cluster and db in INTERNAL_DBS:
            raise CommandError(73, f"$changeStream may not be opened on the internal {db} database")
        self.db, self.coll = db, coll
        self.full_document = spec.get("fullDocument", "default")
        self.before = spec.get("fullDocumentBeforeChange", "off")
        if self.full_document not in ("default", "updateLookup", "whenAvailable", "required"):
            raise CommandError(2, f"'{self.full_document}' is not a valid fullDocument option")
        if self.before not in ("off", "whenAvailable", "required"):
            raise CommandError(2, f"'{self.before}' is not a valid fullDocumentBeforeChange option")
        self.expanded = bool(spec.get("showExpandedEvents"))
        cs_stages.check_user_stages(pipeline)
        self.pipeline, self.split = cs_stages.take_split(pipeline)
        self.closed = False
        self.resume_fragment = 0
        self.pos = self._start(spec)
        if self.pos[3] > cs_stages.FRAGMENT:
            self.resume_fragment = self.pos[3] - cs_stages.FRAGMENT
        find = (
            bisect.bisect_left if self.pos[3] < 0 or self.resume_fragment else bisect.bisect_right
        )
        self.index = self.store.truncated + find(
            self.store.oplog, self.pos[:3], key=lambda e: (e.ts.time, e.ts.inc, e.txn_index)
        )
        self.skip_first_invalidate = False

    def _start(self, spec: dict[str, Any]) -> Pos:
        given = [k for k in ("resumeAfter", "startAfter", "startAtOperationTime") if k in spec]
        if len(given) > 1:
            raise CommandError(
                40674, "Only one type of resume option is allowed, but multiple were found."
            )
        first = self.store.history_start
        if not given:
            last = self.store.clock.current()
            return (last.time, last.inc, 2**32 - 1, HWM)
        if given[0] == "startAtOperationTime":
            ts = spec["startAtOperationTime"]
            if not isinstance(ts, Timestamp):
                raise CommandError(14, "startAtOperationTime must be a Timestamp")
            if ts < first:
                raise self._lost()
            # events AT that time are included: start just before it
            return (ts.time, ts.inc, 0, -1) if ts.inc or ts.time else (0, 0, 0, -1)
        pos = decode_token(spec[given[0]])
        if pos[3] == INVALIDATE and given[0] == "resumeAfter":
            raise CommandError(
                260,
                "Attempting to resume a change stream using 'resumeAfter' is "
                "not allowed from an invalidate notification.",
            )
        if Timestamp(pos[0], pos[1]) < first:
            raise self._lost()
        if pos[3] in (EVENT, *range(cs_stages.FRAGMENT, 256)) and not self._event_exists(pos):
            raise CommandError(280, "cannot resume stream; the resume token was not found.")
        if pos[3] == INVALIDATE:
            # startAfter an invalidate: a new stream begins after the drop
            return (pos[0], pos[1], pos[2], HWM)
        return pos

    def _event_exists(self, pos: Pos) -> bool:
        i = bisect.bisect_left(
            self.store.oplog, pos[:3], key=lambda e: (e.ts.time, e.ts.inc, e.txn_index)
        )
        return i < len(self.store.oplog) and self.store.oplog[i].pos[:3] == pos[:3]

    @staticmethod
    def _lost() -> CommandError:
        return CommandError(
            286,
            "Resume of change stream was not possible, as the resume point "
            "may no longer be in the oplog.",
        )

    @property
    def resume_token(self) -> dict[str, str]:
        t, inc, _, kind = self.pos
        if kind < 0:  # started at an operation time: everything before it counts as seen
            t, inc = (t, inc - 1) if inc else (t - 1, 2**32 - 1)
            return encode_token((t, inc, 2**32 - 1, HWM))
        return encode_token(self.pos)

    def read(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events after the current position; advances the position."""
        store = self.store
        local = self.index - store.truncated
        if local < 0:
            raise self._lost()
        out: list[dict[str, Any]] = []
        oplog = store.oplog
        while local < len(oplog) and len(out) < limit and not self.closed:
            entry = oplog[local]
            local += 1
            for kind, doc in self._events(entry):
                if kind == INVALIDATE:
                    self.closed = True
                pos = (entry.ts.time, entry.ts.inc, entry.txn_index, kind)
                self.pos = pos
                if doc is None:
                    continue
                doc = cs_stages.apply_user_stages(doc, self.pipeline)
                if doc is None:
                    continue
                if not self.split:
                    out.append(doc)
                    continue
                self._emit_split(doc, pos, out)
        self.index = store.truncated + local
        if not self.closed and local >= len(oplog):
            last = store.clock.current()
            hwm = (last.time, last.inc, 2**32 - 1, HWM)
            if hwm > self.pos:
                self.pos = hwm
        return out

    def _emit_split(self, doc: dict[str, Any], pos: Pos, out: list[dict[str, Any]]) -> None:
        """Append an event, or the fragments of it a resumed stream has not seen yet."""
        for n, part in cs_stages.split(doc, pos):
            if n and n <= self.resume_fragment:
                continue
            if n:
                self.pos = (*pos[:3], cs_stages.FRAGMENT + n)
            out.append(part)
        self.resume_fragment = 0

    def _in_scope(self, db: str, coll: str | None) -> bool:
        if self.cluster:
            return db not in INTERNAL_DBS
        if db != self.db:
            return False
        return self.coll is None or coll == self.coll

    def _events(self, e: OplogEntry) -> list[tuple[int, dict[str, Any] | None]]:
        if not self._in_scope(e.db, e.coll):
            return []
        if e.op in EXPANDED:
            return [(EVENT, self._base(e) | e.extra if self.expanded else None)]
        if e.op == "dropDatabase":
            if self.coll is not None:
                return []
            ev = self._base(e)
            return [(EVENT, ev)] + ([] if self.cluster else [(INVALIDATE, self._invalidate(e))])
        ev = self._base(e)
        if e.op == "drop":
            invalidates = self.coll is not None and not self.cluster
            return [(EVENT, ev)] + ([(INVALIDATE, self._invalidate(e))] if invalidates else [])
        if e.op == "rename":
            assert e.to is not None
            ev["to"] = {"db": e.to[0], "coll": e.to[1]}
            if self.expanded and "operationDescription" in e.extra:
                ev["operationDescription"] = e.extra["operationDescription"]
            invalidates = self.coll is not None and not self.cluster
            return [(EVENT, ev)] + ([(INVALIDATE, self._invalidate(e))] if invalidates else [])
        return [(EVENT, self._document_event(e, ev))]

    def _base(self, e: OplogEntry) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "_id": encode_token((e.ts.time, e.ts.inc, e.txn_index, EVENT)),
            "operationType": e.op,
            "clusterTime": e.ts,
            "wallTime": e.wall,
            "ns": {"db": e.db} if e.coll is None else {"db": e.db, "coll": e.coll},
        }
        if self.expanded and e.uuid is not None:
            ev["collectionUUID"] = e.uuid
        return ev

    def _invalidate(self, e: OplogEntry) -> dict[str, Any]:
        return {
            "_id": encode_token((e.ts.time, e.ts.inc, e.txn_index, INVALIDATE)),
            "operationType": "invalidate",
            "clusterTime": e.ts,
            "wallTime": e.wall,
        }

    def _document_event(self, e: OplogEntry, ev: dict[str, Any]) -> dict[str, Any]:
        op = e.op
        if op in ("insert", "replace"):
            ev["fullDocument"] = e.post
        elif op == "update" and self.full_document != "default":
            if self.full_document == "updateLookup":
                assert e.coll is not None and e.key is not None
                ev["fullDocument"] = self.store.collection(e.db, e.coll).find_one(e.key)
            elif e.images:
                ev["fullDocument"] = e.post
            elif self.full_document == "required":
                raise CommandError(
                    47,
                    "Change stream was configured to require a post-image for "
                    "all update, delete and replace events, but the post-image "
                    "was not found for event.",
                )
            else:
                ev["fullDocument"] = None
        ev["ns"] = ev.pop("ns")
        ev["documentKey"] = e.key
        if op == "update":
            desc = e.update_desc or {}
            if "disambiguatedPaths" in desc and not self.expanded:
                desc = {k: v for k, v in desc.items() if k != "disambiguatedPaths"}
            ev["updateDescription"] = desc
        if op in ("update", "replace", "delete") and self.before != "off":
            if e.images:
                ev["fullDocumentBeforeChange"] = e.pre
            elif self.before == "required":
                raise CommandError(
                    47,
                    "Change stream was configured to require a pre-image for "
                    "all update, delete and replace events, but the pre-image "
                    "was not found for event.",
                )
            else:
                ev["fullDocumentBeforeChange"] = None
        if e.txn_number is not None:
            ev["txnNumber"] = Int64(e.txn_number)
            ev["lsid"] = e.lsid
        return ev
