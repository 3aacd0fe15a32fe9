"""Write commands: insert, update, delete, findAndModify (reads live in cmd_find/cmd_aggregate)."""

from __future__ import annotations

import asyncio
from typing import Any

from changestream_worker.testing.emulator import (
    docops,
    query,
    validation,
    views,
)
from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.errors import CommandError
from changestream_worker.testing.emulator.registry import command
from changestream_worker.testing.emulator.store import Change

CODE_UNSATISFIABLE_WC = 100


def _write_error(i: int, exc: docops.WriteFailure) -> dict[str, Any]:
    return {"index": i, "code": exc.code, "errmsg": exc.errmsg, **exc.extra}


def ns(ctx: Ctx, cmd: dict[str, Any]) -> tuple[str, str]:
    """The namespace a write names; a view refuses writes."""
    name = cmd[next(iter(cmd))]
    if not isinstance(name, str) or not name:
        raise CommandError(73, f"collection name has invalid type {type(name).__name__}")
    views.refuse_write(ctx.store, ctx.db, name)
    return ctx.db, name


def write_concern(ctx: Ctx, cmd: dict[str, Any], reply: dict[str, Any]) -> dict[str, Any]:
    """Add the writeConcernError a one-member set gives a ``w`` it cannot satisfy."""
    wc = cmd.get("writeConcern") or {}
    w = wc.get("w") if isinstance(wc, dict) else None
    if isinstance(w, int | float) and not isinstance(w, bool) and w > 1:
        reply["writeConcernError"] = {
            "code": CODE_UNSATISFIABLE_WC,
            "codeName": "UnsatisfiableWriteConcern",
            "errmsg": "Not enough data-bearing nodes",
            "errInfo": {"writeConcern": {"w": w, "wtimeout": wc.get("wtimeout", 0)}},
        }
    return reply


def _values(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    return query.variables(cmd.get("let"), ctx.store.clock.last)


def _hint(ctx: Ctx, db: str, name: str, hint: Any) -> None:
    if hint is not None and ctx.store.exists(db, name):
        query.check_hint(ctx.ws.coll(db, name), hint)


@command("insert", write=True)
async def insert(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    validation.BYPASS.set(bool(cmd.get("bypassDocumentValidation")))
    check_fields(cmd, {"documents", "ordered", "bypassDocumentValidation"})
    db, name = ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    ordered = cmd.get("ordered", True)
    changes: list[Change] = []
    errors = []
    n = 0
    for i, doc in enumerate(cmd.get("documents", [])):
        try:
            changes.append(docops.insert(coll, db, name, doc))
        except docops.WriteFailure as exc:
            errors.append(_write_error(i, exc))
            if ordered:
                break
        if len(changes) >= docops.SLICE_CHANGES:
            n += len(changes)
            ctx.ws.commit(changes)
            changes = []
            await asyncio.sleep(0)  # a big insert lets other connections in between slices
    n += len(changes)
    ctx.ws.commit(changes)
    if not n and not errors:
        ctx.store.ensure(db, name)
    reply: dict[str, Any] = {"n": n, "ok": 1.0}
    if errors:
        reply["writeErrors"] = errors
    return write_concern(ctx, cmd, reply)


UPDATE_FIELDS = {"q", "u", "upsert", "multi", "arrayFilters", "hint", "collation"}


@command("update", write=True)
async def update(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    validation.BYPASS.set(bool(cmd.get("bypassDocumentValidation")))
    check_fields(cmd, {"updates", "ordered", "bypassDocumentValidation", "let"})
    db, name = ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    values = _values(ctx, cmd)
    n = modified = 0
    upserted, errors = [], []
    for i, spec in enumerate(cmd.get("updates", [])):
        for key in spec:
            if key not in UPDATE_FIELDS:
                raise CommandError(40415, f"BSON field 'update.updates.{key}' is an unknown field.")
        try:
            _hint(ctx, db, name, spec.get("hint"))
            matched, mod, new_id, chs = await docops.update(
                coll, db, name, spec, values, flush=ctx.ws.commit
            )
        except (docops.WriteFailure, CommandError) as exc:
            errors.append(_write_error(i, _as_failure(exc)))
            if cmd.get("ordered", True):
                break
            continue
        ctx.ws.commit(chs)
        n += matched
        modified += mod
        if new_id is not None:
            n += 1
            upserted.append({"index": i, "_id": new_id})
    reply: dict[str, Any] = {"n": n, "nModified": modified, "ok": 1.0}
    if upserted:
        reply["upserted"] = upserted
    if errors:
        reply["writeErrors"] = errors
    return write_concern(ctx, cmd, reply)


def _as_failure(exc: Exception) -> docops.WriteFailure:
    if isinstance(exc, docops.WriteFailure):
        return exc
    assert isinstance(exc, CommandError)
    return docops.WriteFailure(exc.code, exc.errmsg)


@command("delete", write=True)
async def delete(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"deletes", "ordered", "let"})
    db, name = ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    values = _values(ctx, cmd)
    n = 0
    errors = []

    def flush(chs: list[Change]) -> None:
        nonlocal n
        n += len(chs)
        ctx.ws.commit(chs)

    for i, spec in enumerate(cmd.get("deletes", [])):
        try:
            _hint(ctx, db, name, spec.get("hint"))
            flush(await docops.delete(coll, db, name, spec, values, flush=flush))
        except (docops.WriteFailure, CommandError) as exc:
            errors.append(_write_error(i, _as_failure(exc)))
            if cmd.get("ordered", True):
                break
    reply: dict[str, Any] = {"n": n, "ok": 1.0}
    if errors:
        reply["writeErrors"] = errors
    return write_concern(ctx, cmd, reply)


FAM_FIELDS = {
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
}


@command("findAndModify", "findandmodify", write=True)
async def find_and_modify(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    validation.BYPASS.set(bool(cmd.get("bypassDocumentValidation")))
    check_fields(cmd, FAM_FIELDS)
    db, name = ns(ctx, cmd)
    coll = ctx.ws.coll(db, name)
    values = _values(ctx, cmd)
    _hint(ctx, db, name, cmd.get("hint"))
    if cmd.get("remove") and (cmd.get("update") is not None or cmd.get("new") or cmd.get("upsert")):
        raise CommandError(9, "Cannot specify 'remove' with 'update', 'new' or 'upsert'")
    if not cmd.get("remove") and cmd.get("update") is None:
        raise CommandError(9, "Either an update or remove=true must be specified")
    fields = cmd.get("fields")
    if fields is not None and not isinstance(fields, dict):
        raise CommandError(14, "BSON field 'findAndModify.fields' is the wrong type")
    found = await query.find_docs(
        coll,
        cmd.get("query") or {},
        sort=cmd.get("sort"),
        limit=1,
        collation=cmd.get("collation"),
        let=values,
    )
    target = found[0] if found else None
    last: dict[str, Any] = {"n": 0}
    value: dict[str, Any] | None
    spec = {
        "q": query.bind_filter(cmd.get("query") or {}, values),
        "u": cmd.get("update"),
        "arrayFilters": cmd.get("arrayFilters"),
    }
    try:
        if cmd.get("remove"):
            changes = []
            if target is not None and coll.remove(target):
                changes = [Change("delete", db, name, {"_id": target["_id"]}, None, target)]
                last["n"] = 1
            value = target
        else:
            kind = docops.kind_of(cmd.get("update"))
            if target is not None:
                post, change = docops.apply(coll, db, name, target, spec, kind, values)
                changes = [change] if change is not None else []
                last.update(n=1, updatedExisting=True)
                value = post if cmd.get("new") else target
            elif cmd.get("upsert"):
                post, change = docops.upsert(coll, db, name, spec, kind, values)
                changes = [change]
                last.update(n=1, updatedExisting=False, upserted=post["_id"])
                value = post if cmd.get("new") else None
            else:
                changes = []
                last["updatedExisting"] = False
                value = None
    except docops.WriteFailure as exc:
        raise CommandError(exc.code, exc.errmsg, extra=exc.extra) from exc
    ctx.ws.commit(changes)
    if value is not None and fields:
        value = query.project([value], fields)[0]
    return write_concern(ctx, cmd, {"lastErrorObject": last, "value": value, "ok": 1.0})
