"""Read commands over collections: find, getMore, killCursors, count, distinct."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from bson import Int64
from mongomock import filtering

from changestream_worker.testing.emulator import query, views
from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.cursors import Cursor, Tail, first_batch, next_batch
from changestream_worker.testing.emulator.errors import CommandError, unsupported
from changestream_worker.testing.emulator.keys import keyof
from changestream_worker.testing.emulator.registry import command

FIND_FIELDS = {
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
    "oplogReplay",
    "readOnce",
}


def _ns(ctx: Ctx, cmd: dict[str, Any]) -> tuple[str, str]:
    name = cmd[next(iter(cmd))]
    if not isinstance(name, str) or not name:
        raise CommandError(73, f"collection name has invalid type {type(name).__name__}")
    return ctx.db, name


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
    q = cmd.get("filter") or {}
    return [d for d in docs if filtering.filter_applies(q, d)] if q else docs


def _non_negative(cmd: dict[str, Any], field: str) -> int:
    value = cmd.get(field)
    if value is None:
        return 0
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise CommandError(14, f"BSON field 'find.{field}' is the wrong type")
    if value < 0:
        raise CommandError(
            51024, f"BSON field '{field}' value must be >= 0, actual value '{value}'"
        )
    return int(value)


@command("find")
async def find(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, FIND_FIELDS)
    if cmd.get("returnKey"):
        raise unsupported("find with returnKey")
    db, name = _ns(ctx, cmd)
    skip, limit = _non_negative(cmd, "skip"), int(cmd.get("limit") or 0)
    bs = cmd.get("batchSize")
    if bs is not None and int(bs) < 0:
        raise CommandError(51024, f"BSON field 'batchSize' value must be >= 0, actual value '{bs}'")
    if (db, name) == ("local", "oplog.rs"):
        docs = _oplog_view(ctx, cmd)
        docs = docs[skip:][: abs(limit) or None]
    elif views.is_view(ctx.store, db, name):
        extra: list[dict[str, Any]] = [{"$match": cmd.get("filter") or {}}]
        if cmd.get("sort"):
            extra.append({"$sort": cmd["sort"]})
        extra += [{"$skip": skip}] if skip else []
        extra += [{"$limit": abs(limit)}] if limit else []
        docs = views.documents(ctx.ws, ctx.store, db, name, extra)
        docs = query.project(docs, cmd.get("projection"))
    else:
        coll = ctx.ws.coll(db, name)
        if cmd.get("hint") is not None and ctx.store.exists(db, name):
            query.check_hint(coll, cmd["hint"])
        values = query.variables(cmd.get("let"), ctx.store.clock.last)
        bounded = cmd.get("min") is not None or cmd.get("max") is not None
        docs = await query.find_docs(
            coll,
            cmd.get("filter") or {},
            sort=cmd.get("sort"),
            skip=0 if bounded else skip,
            limit=0 if bounded else limit,
            collation=cmd.get("collation"),
            let=values,
        )
        if bounded:
            docs = query.within_bounds(coll, docs, cmd.get("hint"), cmd.get("min"), cmd.get("max"))
            docs = docs[skip:][: abs(limit) or None]
        docs = query.project(docs, query.bind(cmd.get("projection"), values))
    if cmd.get("tailable"):
        return _tailable(ctx, cmd, docs, bs)
    return first_batch(
        ctx.server.cursors,
        f"{db}.{name}",
        docs,
        None if bs is None else int(bs),
        single=bool(cmd.get("singleBatch")) or limit < 0,
        lsid=cmd.get("lsid"),
    )


def _tailable(ctx: Ctx, cmd: dict[str, Any], docs: list[dict[str, Any]], bs: Any) -> dict[str, Any]:
    """A tailable cursor on a capped collection: it stays open at the end of the data."""
    db, name = _ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    if coll.capped is None:
        raise CommandError(
            2, "error processing query: tailable cursor requested on non capped collection"
        )
    if cmd.get("sort") and dict(cmd["sort"]) != {"$natural": 1}:
        raise CommandError(2, "cannot use tailable option with a sort other than {$natural: 1}")
    n = 101 if bs is None else int(bs) or 101
    batch, rest = docs[:n], docs[n:]
    last = coll.seq_of.get(keyof(batch[-1]["_id"]), 0) if batch else 0
    cur = ctx.server.cursors.add(f"{db}.{name}", rest, lsid=cmd.get("lsid"))
    cur.tail = Tail(coll, query.check_filter(cmd.get("filter")), last, bool(cmd.get("awaitData")))
    return {"cursor": {"firstBatch": batch, "id": cur.id, "ns": cur.ns}, "ok": 1.0}


async def _tail_more(ctx: Ctx, cur: Cursor, size: int | None, max_ms: Any) -> dict[str, Any]:
    assert cur.tail is not None
    tail = cur.tail
    deadline = time.monotonic() + float(max_ms or 1000) / 1000
    while True:
        fresh = [d for d in tail.coll.after(tail.seq) if filtering.filter_applies(tail.query, d)]
        left = deadline - time.monotonic()
        if fresh or not tail.await_data or left <= 0:
            break
        await ctx.store.wait_for_data(left)
    batch = fresh[: size or len(fresh)]
    if batch:
        tail.seq = tail.coll.seq_of.get(keyof(batch[-1]["_id"]), tail.seq)
    return {"cursor": {"nextBatch": batch, "id": cur.id, "ns": cur.ns}, "ok": 1.0}


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
    if cur.tail is not None and cur.pos >= len(cur.docs):
        return await _tail_more(ctx, cur, size, cmd.get("maxTimeMS"))
    if cur.stream is None:
        reply = next_batch(ctx.server.cursors, cur, size)
        if cur.tail is not None and reply["cursor"]["nextBatch"]:
            last = reply["cursor"]["nextBatch"][-1]
            cur.tail.seq = cur.tail.coll.seq_of.get(keyof(last["_id"]), cur.tail.seq)
            reply["cursor"]["id"] = cur.id
            ctx.server.cursors.open[cur.id] = cur  # a tailable cursor outlives its data
        return reply
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


@command("count")
async def count(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"query", "limit", "skip", "hint", "collation"})
    db, name = _ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    q = query.check_filter(cmd.get("query"))
    if views.is_view(ctx.store, db, name):
        n = len(views.documents(ctx.ws, ctx.store, db, name, [{"$match": q}]))
    elif not q and not cmd.get("collation"):
        n = len(coll)
    else:
        n = len(await query.scan(coll, q, query.strength_of(cmd.get("collation"))))
    n = max(0, n - int(cmd.get("skip") or 0))
    if cmd.get("limit"):
        n = min(n, abs(int(cmd["limit"])))
    return {"n": n, "ok": 1.0}


@command("distinct")
async def distinct(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"key", "query", "hint", "collation"})
    db, name = _ns(ctx, cmd)
    key = cmd.get("key")
    if not isinstance(key, str):
        raise CommandError(
            14, "BSON field 'distinct.key' is the wrong type, expected type 'string'"
        )
    strength = query.strength_of(cmd.get("collation"))
    q = query.check_filter(cmd.get("query"))
    if views.is_view(ctx.store, db, name):
        docs = views.documents(ctx.ws, ctx.store, db, name, [{"$match": q}])
    else:
        docs = await query.scan(ctx.ws.coll(db, name), q, strength)
    return {"values": query.distinct_values(docs, key, strength), "ok": 1.0}
