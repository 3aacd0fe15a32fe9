"""Collection and index commands: create, collMod, drop, rename, indexes."""

from __future__ import annotations

from typing import Any

from changestream_worker.testing.emulator import collections, views
from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.cursors import first_batch
from changestream_worker.testing.emulator.engine import DuplicateKey
from changestream_worker.testing.emulator.errors import CommandError, unsupported
from changestream_worker.testing.emulator.registry import command
from changestream_worker.testing.emulator.store import OplogEntry, _now

ID_INDEX = {"v": 2, "key": {"_id": 1}, "name": "_id_"}
INDEX_OPTIONS = {
    "key",
    "name",
    "unique",
    "expireAfterSeconds",
    "sparse",
    "partialFilterExpression",
    "background",
    "v",
}


def _indexes(ctx: Ctx, db: str, name: str) -> list[dict[str, Any]]:
    meta = ctx.store.meta.get((db, name))
    return [] if meta is None else meta.setdefault("indexes", [dict(ID_INDEX)])


@command("create", write=True)
async def create(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(
        cmd,
        {
            "changeStreamPreAndPostImages",
            "capped",
            "size",
            "max",
            "validator",
            "validationLevel",
            "validationAction",
            "timeseries",
            "clusteredIndex",
            "viewOn",
            "pipeline",
            "collation",
            "expireAfterSeconds",
            "storageEngine",
            "indexOptionDefaults",
        },
    )
    for opt in ("timeseries", "clusteredIndex", "collation"):
        if cmd.get(opt):
            raise unsupported(f"create with '{opt}'")
    name = cmd["create"]
    if ctx.store.exists(ctx.db, name):
        raise CommandError(48, f"Collection {ctx.db}.{name} already exists.")
    opts: dict[str, Any] = {}
    if "viewOn" in cmd:
        views.check_definition(cmd["viewOn"], cmd.get("pipeline", []))
        opts = {"viewOn": cmd["viewOn"], "pipeline": list(cmd.get("pipeline") or [])}
    elif "pipeline" in cmd:
        raise CommandError(9, "'pipeline' requires 'viewOn' to also be specified")
    if "changeStreamPreAndPostImages" in cmd:
        opts["changeStreamPreAndPostImages"] = dict(cmd["changeStreamPreAndPostImages"])
    opts.update(collections.collection_options(cmd))
    ctx.store.ensure(ctx.db, name, opts)
    collections.apply_options(ctx.store.collection(ctx.db, name), opts)
    return {"ok": 1.0}


@command("collMod", write=True)
async def coll_mod(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(
        cmd,
        {
            "changeStreamPreAndPostImages",
            "index",
            "validator",
            "validationLevel",
            "validationAction",
            "expireAfterSeconds",
        },
    )
    name = cmd["collMod"]
    if not ctx.store.exists(ctx.db, name):
        raise CommandError(26, f"ns does not exist: {ctx.db}.{name}")
    meta = ctx.store.meta[(ctx.db, name)]
    if "changeStreamPreAndPostImages" in cmd:
        meta["options"]["changeStreamPreAndPostImages"] = dict(cmd["changeStreamPreAndPostImages"])
    if "index" in cmd:
        spec = cmd["index"]
        for idx in _indexes(ctx, ctx.db, name):
            if idx["name"] == spec.get("name") or idx["key"] == spec.get("keyPattern"):
                if "expireAfterSeconds" in spec:
                    idx["expireAfterSeconds"] = spec["expireAfterSeconds"]
                break
        else:
            raise CommandError(27, "cannot find index")
    changed = collections.collection_options(cmd, modifying=True)
    meta["options"].update(changed)
    collections.apply_options(ctx.store.collection(ctx.db, name), meta["options"])
    ctx.store.append(
        OplogEntry(ctx.store.clock.tick(), 0, "modify", ctx.db, name, _now(), uuid=meta["uuid"])
    )
    return {"ok": 1.0}


@command("drop", write=True)
async def drop(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, set())
    name = cmd["drop"]
    n = len(_indexes(ctx, ctx.db, name))
    if not ctx.store.drop(ctx.db, name):
        return {"ok": 1.0}
    return {"nIndexesWas": n, "ns": f"{ctx.db}.{name}", "ok": 1.0}


@command("dropDatabase", write=True)
async def drop_database(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, set())
    ctx.store.drop_database(ctx.db)
    return {"ok": 1.0}


@command("renameCollection", write=True)
async def rename_collection(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"to", "dropTarget", "stayTemp"})
    if ctx.db != "admin":
        raise CommandError(13, "renameCollection may only be run against the admin database.")
    src, dst = str(cmd["renameCollection"]), str(cmd.get("to", ""))
    if "." not in src or "." not in dst:
        raise CommandError(73, f"Invalid namespace specified '{dst if '.' in src else src}'")
    sdb, scoll = src.split(".", 1)
    ddb, dcoll = dst.split(".", 1)
    ctx.store.rename(sdb, scoll, ddb, dcoll, bool(cmd.get("dropTarget")))
    return {"ok": 1.0}


@command("createIndexes", write=True)
async def create_indexes(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"indexes", "commitQuorum"})
    name = cmd["createIndexes"]
    created = ctx.store.ensure(ctx.db, name)
    existing = _indexes(ctx, ctx.db, name)
    before = len(existing)
    coll = ctx.store.collection(ctx.db, name)
    for spec in cmd.get("indexes", []):
        for key in spec:
            if key not in INDEX_OPTIONS:
                raise unsupported(f"index option '{key}'")
        key_doc = dict(spec["key"])
        same = next((i for i in existing if i["name"] == spec.get("name")), None)
        if same is not None:
            if same["key"] != key_doc or bool(same.get("unique")) != bool(spec.get("unique")):
                raise CommandError(
                    86,
                    f"An existing index has the same name as the requested "
                    f"index. Requested index: {spec}, existing index: {same}",
                )
            continue
        if any(i["key"] == key_doc for i in existing):
            continue
        try:
            coll.create_index(
                list(key_doc.items()),
                spec["name"],
                unique=bool(spec.get("unique")),
                sparse=bool(spec.get("sparse")),
                partial=spec.get("partialFilterExpression"),
            )
        except DuplicateKey as exc:
            raise CommandError(
                11000,
                f"Index build failed: E11000 duplicate key error "
                f"collection: {ctx.db}.{name} index: {spec['name']}",
                extra={"keyPattern": exc.pattern, "keyValue": exc.value},
            ) from exc
        idx = {"v": 2, "key": key_doc, "name": spec["name"]}
        for opt in ("unique", "expireAfterSeconds", "sparse", "partialFilterExpression"):
            if opt in spec:
                idx[opt] = spec[opt]
        existing.append(idx)
        ctx.store.append(
            OplogEntry(
                ctx.store.clock.tick(),
                0,
                "createIndexes",
                ctx.db,
                name,
                _now(),
                extra={"operationDescription": {"indexes": [idx]}},
            )
        )
    reply: dict[str, Any] = {
        "numIndexesBefore": before,
        "numIndexesAfter": len(existing),
        "createdCollectionAutomatically": created,
        "ok": 1.0,
    }
    if len(existing) == before:
        reply["note"] = "all indexes already exist"
    return reply


@command("listIndexes")
async def list_indexes(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"cursor"})
    name = cmd["listIndexes"]
    if not ctx.store.exists(ctx.db, name):
        raise CommandError(26, f"ns does not exist: {ctx.db}.{name}")
    batch = (cmd.get("cursor") or {}).get("batchSize")
    return first_batch(
        ctx.server.cursors,
        f"{ctx.db}.{name}",
        [dict(i) for i in _indexes(ctx, ctx.db, name)],
        None if batch is None else int(batch),
    )


@command("dropIndexes", "deleteIndexes", write=True)
async def drop_indexes(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"index"})
    name = cmd[next(iter(cmd))]
    if not ctx.store.exists(ctx.db, name):
        raise CommandError(26, f"ns not found {ctx.db}.{name}")
    existing = _indexes(ctx, ctx.db, name)
    which = cmd.get("index")
    if which == "*":
        victims = [i for i in existing if i["name"] != "_id_"]
    else:
        victims = [i for i in existing if i["name"] == which or i["key"] == which]
        if not victims:
            raise CommandError(27, f"index not found with name [{which}]")
        if victims[0]["name"] == "_id_":
            raise CommandError(72, "cannot drop _id index")
    coll = ctx.store.collection(ctx.db, name)
    for idx in victims:
        existing.remove(idx)
        coll.drop_index(idx["name"])
        ctx.store.append(
            OplogEntry(
                ctx.store.clock.tick(),
                0,
                "dropIndexes",
                ctx.db,
                name,
                _now(),
                extra={"operationDescription": {"indexes": [idx]}},
            )
        )
    return {"nIndexesWas": len(existing) + len(victims), "ok": 1.0}
