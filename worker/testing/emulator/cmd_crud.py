"""CRUD commands: insert, update, delete, find, getMore, killCursors, findAndModify, aggregate…"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from bson import Int64
from mongomock import filtering

from changestream_worker.testing.emulator import docops
from changestream_worker.testing.emulator.changestream import KNOWN_STAGES, ChangeStream
from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.cursors import first_batch
from changestream_worker.testing.emulator.errors import CommandError, unsupported
from changestream_worker.testing.emulator.registry import command


def _write_error(i: int, exc: docops.WriteFailure) -> dict[str, Any]:
    return {"index": i, "code": exc.code, "errmsg": exc.errmsg, **exc.extra}


def _ns(ctx: Ctx, cmd: dict[str, Any]) -> tuple[str, str]:
    name = cmd[next(iter(cmd))]
    if not isinstance(name, str) or not name:
        raise CommandError(73, f"collection name has invalid type {type(name).__name__}")
    return ctx.db, name


@command("insert", write=True)
async def insert(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"documents", "ordered", "bypassDocumentValidation"})
    db, name = _ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    ordered = cmd.get("ordered", True)
    changes, errors = [], []
    for i, doc in enumerate(cmd.get("documents", [])):
        try:
            changes.append(docops.insert(coll, db, name, doc))
        except docops.WriteFailure as exc:
            errors.append(_write_error(i, exc))
            if ordered:
                break
    ctx.ws.commit(changes)
    if not changes and not errors:
        ctx.store.ensure(db, name)
    reply: dict[str, Any] = {"n": len(changes), "ok": 1.0}
    if errors:
        reply["writeErrors"] = errors
    return reply


@command("update", write=True)
async def update(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"updates", "ordered", "bypassDocumentValidation", "let"})
    db, name = _ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    n = modified = 0
    upserted, errors, changes = [], [], []
    for i, spec in enumerate(cmd.get("updates", [])):
        for key in spec:
            if key not in ("q", "u", "upsert", "multi", "arrayFilters", "hint", "collation"):
                raise CommandError(40415, f"BSON field 'update.updates.{key}' is an unknown field.")
        if "collation" in spec:
            raise unsupported("collation")
        try:
            matched, mod, new_id, chs = docops.update(coll, db, name, spec)
        except docops.WriteFailure as exc:
            errors.append(_write_error(i, exc))
            if cmd.get("ordered", True):
                break
            continue
        changes.extend(chs)
        n += matched
        modified += mod
        if new_id is not None:
            n += 1
            upserted.append({"index": i, "_id": new_id})
    ctx.ws.commit(changes)
    reply: dict[str, Any] = {"n": n, "nModified": modified, "ok": 1.0}
    if upserted:
        reply["upserted"] = upserted
    if errors:
        reply["writeErrors"] = errors
    return reply


@command("delete", write=True)
async def delete(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"deletes", "ordered", "let"})
    db, name = _ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    changes, errors = [], []
    for i, spec in enumerate(cmd.get("deletes", [])):
        try:
            changes.extend(docops.delete(coll, db, name, spec))
        except docops.WriteFailure as exc:
            errors.append(_write_error(i, exc))
            if cmd.get("ordered", True):
                break
    ctx.ws.commit(changes)
    reply: dict[str, Any] = {"n": len(changes), "ok": 1.0}
    if errors:
        reply["writeErrors"] = errors
    return reply


def _sort(spec: Any) -> list[tuple[str, int]] | None:
    if not spec:
        return None
    items = [(k, v) for k, v in dict(spec).items() if k != "$natural"]
    for k, v in items:
        if v not in (1, -1):
            raise CommandError(
                2,
                f"$sort key ordering must be 1 (for ascending) or -1 "
                f"(for descending) for field {k}",
            )
    return items or None


def _oplog_view(ctx: Ctx, cmd: dict[str, Any]) -> list[dict[str, Any]]:
    ops = {"insert": "i", "update": "u", "replace": "u", "delete": "d"}
    docs = [
        {
            "ts": e.ts,
            "t": Int64(ctx.server.term),
            "wall": e.wall,
            "op": ops.get(e.op, "c"),
            "ns": f"{e.db}.{e.coll}" if e.coll else f"{e.db}.$cmd",
            "o": e.key or {},
        }
        for e in ctx.store.oplog
    ]
    # where history starts, as a no-op entry: a replica set's oplog is never empty, and its
    # oldest entry bounds what can be resumed (real sets write "initiating set" and
    # periodic no-ops)
    start = ctx.store.history_start
    if not docs or docs[0]["ts"] > start:
        docs.insert(
            0,
            {
                "ts": start,
                "t": Int64(ctx.server.term),
                "wall": datetime.fromtimestamp(start.time, UTC),
                "op": "n",
                "ns": "",
                "o": {"msg": "periodic noop"},
            },
        )
    if dict(cmd.get("sort") or {}).get("$natural") == -1:
        docs.reverse()
    query = cmd.get("filter") or {}
    return [d for d in docs if filtering.filter_applies(query, d)] if query else docs


@command("find")
async def find(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(
        cmd,
        {
            "filter",
            "sort",
            "projection",
            "skip",
            "limit",
            "batchSize",
            "singleBatch",
            "hint",
            "allowDiskUse",
            "let",
            "noCursorTimeout",
            "tailable",
            "awaitData",
            "allowPartialResults",
            "returnKey",
            "showRecordId",
            "min",
            "max",
            "collation",
        },
    )
    if cmd.get("tailable") or cmd.get("collation") or cmd.get("min") or cmd.get("max"):
        raise unsupported("find with tailable/collation/min/max")
    db, name = _ns(ctx, cmd)
    if (db, name) == ("local", "oplog.rs"):
        docs = _oplog_view(ctx, cmd)
    else:
        cur = ctx.ws.coll(db, name).find(cmd.get("filter") or {}, cmd.get("projection") or None)
        if (order := _sort(cmd.get("sort"))) is not None:
            cur = cur.sort(order)
        if cmd.get("skip"):
            cur = cur.skip(int(cmd["skip"]))
        try:
            docs = list(cur)
        except NotImplementedError as exc:
            raise unsupported(str(exc).split(".")[0]) from exc
    limit = int(cmd.get("limit") or 0)
    if limit:
        docs = docs[: abs(limit)]
    bs = cmd.get("batchSize")
    return first_batch(
        ctx.server.cursors,
        f"{db}.{name}",
        docs,
        None if bs is None else int(bs),
        single=bool(cmd.get("singleBatch")) or limit < 0,
    )


@command("getMore")
async def get_more(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"collection", "batchSize", "term", "lastKnownCommittedOpTime"})
    ns = f"{ctx.db}.{cmd.get('collection')}"
    cur = ctx.server.cursors.get(int(cmd["getMore"]), ns)
    if (data := ctx.server.failpoints.fail_get_more()) is not None:
        raise CommandError(
            int(data.get("errorCode", 237)),
            "Failing command via 'failGetMoreAfterCursorCheckout' failpoint",
            data.get("errorLabels"),
        )
    size = int(cmd.get("batchSize") or 0) or None
    if cur.stream is None:
        end = len(cur.docs) if size is None else cur.pos + size
        batch = cur.docs[cur.pos : end]
        cur.pos += len(batch)
        cid = cur.id if cur.pos < len(cur.docs) else 0
        if not cid:
            ctx.server.cursors.kill([cur.id])
        return {"cursor": {"nextBatch": batch, "id": cid, "ns": cur.ns}, "ok": 1.0}
    if not ctx.server.is_primary:
        raise CommandError(10107, "not primary", ["ResumableChangeStreamError"])
    stream = cur.stream
    deadline = time.monotonic() + float(cmd.get("maxTimeMS") or 1000) / 1000
    while True:
        batch = stream.read(size or 1000)
        left = deadline - time.monotonic()
        if batch or stream.closed or left <= 0:
            break
        await ctx.store.wait_for_data(left)
        if not ctx.server.is_primary:
            raise CommandError(
                11602,
                "operation was interrupted because a node stepped down",
                ["ResumableChangeStreamError"],
            )
    cid = 0 if stream.closed else cur.id
    if not cid:
        ctx.server.cursors.kill([cur.id])
    return {
        "cursor": {
            "nextBatch": batch,
            "postBatchResumeToken": stream.resume_token,
            "id": cid,
            "ns": cur.ns,
        },
        "ok": 1.0,
    }


@command("killCursors")
async def kill_cursors(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"cursors"})
    killed, missing = ctx.server.cursors.kill([int(c) for c in cmd.get("cursors", [])])
    return {
        "cursorsKilled": killed,
        "cursorsNotFound": missing,
        "cursorsAlive": [],
        "cursorsUnknown": [],
        "ok": 1.0,
    }


@command("findAndModify", "findandmodify", write=True)
async def find_and_modify(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(
        cmd,
        {
            "query",
            "sort",
            "remove",
            "update",
            "new",
            "fields",
            "upsert",
            "bypassDocumentValidation",
            "arrayFilters",
            "hint",
            "let",
            "collation",
        },
    )
    db, name = _ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    query = cmd.get("query") or {}
    cur = coll.find(query)
    if (order := _sort(cmd.get("sort"))) is not None:
        cur = cur.sort(order)
    target = next(iter(cur), None)
    fields = cmd.get("fields")
    last: dict[str, Any] = {"n": 0}
    try:
        if cmd.get("remove"):
            if cmd.get("update") is not None or cmd.get("new") or cmd.get("upsert"):
                raise CommandError(9, "Cannot specify 'remove' with 'update', 'new' or 'upsert'")
            changes = (
                docops.delete(coll, db, name, {"q": {"_id": target["_id"]}, "limit": 1})
                if target
                else []
            )
            value = target
        else:
            spec: dict[str, Any] = {
                "q": {"_id": target["_id"]} if target else query,
                "u": cmd.get("update"),
                "upsert": bool(cmd.get("upsert")),
            }
            if cmd.get("arrayFilters"):
                spec["arrayFilters"] = cmd["arrayFilters"]
            _m, _mod, new_id, changes = docops.update(coll, db, name, spec)
            last["updatedExisting"] = target is not None
            if new_id is not None:
                last["upserted"] = new_id
            key = target["_id"] if target else new_id
            value = coll.find_one({"_id": key}) if cmd.get("new") else target
    except docops.WriteFailure as exc:
        raise CommandError(exc.code, exc.errmsg, extra=exc.extra) from exc
    last["n"] = 1 if (target is not None or last.get("upserted") is not None) else 0
    ctx.ws.commit(changes)
    if value is not None and fields:
        value = (
            next(iter(coll.find({"_id": value["_id"]}, fields)), value)
            if not cmd.get("remove")
            else {k: v for k, v in value.items() if k == "_id" or fields.get(k)}
        )
    return {"lastErrorObject": last, "value": value, "ok": 1.0}


@command("aggregate")
async def aggregate(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(
        cmd,
        {
            "pipeline",
            "cursor",
            "explain",
            "allowDiskUse",
            "collation",
            "hint",
            "let",
            "bypassDocumentValidation",
        },
    )
    if cmd.get("explain") or cmd.get("collation"):
        raise unsupported("aggregate with explain or collation")
    pipeline = list(cmd.get("pipeline") or [])
    target = cmd["aggregate"]
    batch = (cmd.get("cursor") or {}).get("batchSize")
    if pipeline and "$changeStream" in pipeline[0]:
        coll = target if isinstance(target, str) else None
        stream = ChangeStream(
            ctx.store, ctx.db, coll, dict(pipeline[0]["$changeStream"] or {}), pipeline[1:]
        )
        ns = f"{ctx.db}.{coll}" if coll else f"{ctx.db}.$cmd.aggregate"
        docs = stream.read(101 if batch is None else int(batch))
        cur = ctx.server.cursors.add(ns, stream=stream, lsid=cmd.get("lsid"))
        return {
            "cursor": {
                "firstBatch": docs,
                "postBatchResumeToken": stream.resume_token,
                "id": 0 if stream.closed else cur.id,
                "ns": ns,
            },
            "ok": 1.0,
        }
    if not isinstance(target, str):
        raise unsupported("database-level aggregate without $changeStream")
    for stage in pipeline:
        name = next(iter(stage), "")
        if name in ("$out", "$merge"):
            raise unsupported(f"the {name} stage")
        if name == "$changeStream":
            raise CommandError(
                40602, "$changeStream is only valid as the first stage in a pipeline"
            )
        if name not in KNOWN_STAGES:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
    try:
        docs = list(ctx.ws.coll(ctx.db, target).aggregate(pipeline))
    except NotImplementedError as exc:
        raise unsupported(str(exc).split(".")[0]) from exc
    return first_batch(
        ctx.server.cursors, f"{ctx.db}.{target}", docs, None if batch is None else int(batch)
    )


@command("count")
async def count(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"query", "limit", "skip", "hint", "collation"})
    db, name = _ns(ctx, cmd)
    n = len(list(ctx.ws.coll(db, name).find(cmd.get("query") or {}, {"_id": 1})))
    n = max(0, n - int(cmd.get("skip") or 0))
    if cmd.get("limit"):
        n = min(n, abs(int(cmd["limit"])))
    return {"n": n, "ok": 1.0}


@command("distinct")
async def distinct(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"key", "query", "hint", "collation"})
    db, name = _ns(ctx, cmd)
    values = ctx.ws.coll(db, name).distinct(cmd["key"], cmd.get("query") or {})
    return {"values": list(values), "ok": 1.0}
