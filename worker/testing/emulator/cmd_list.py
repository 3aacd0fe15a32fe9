"""Listing commands: listCollections and listDatabases."""

from __future__ import annotations

from typing import Any

from changestream_worker.testing.emulator.cmd_ddl import ID_INDEX
from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.cursors import first_batch
from changestream_worker.testing.emulator.registry import command


@command("listCollections")
async def list_collections(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"filter", "nameOnly", "authorizedCollections", "cursor"})
    from mongomock.filtering import filter_applies

    out = []
    for name in ctx.store.collections(ctx.db):
        meta = ctx.store.meta[(ctx.db, name)]
        view = "viewOn" in meta["options"]
        doc: dict[str, Any] = {"name": name, "type": "view" if view else "collection"}
        if not cmd.get("nameOnly"):
            doc.update(options=dict(meta["options"]))
            if view:
                doc.update(info={"readOnly": True})
            else:
                doc.update(info={"readOnly": False, "uuid": meta["uuid"]}, idIndex=dict(ID_INDEX))
        if filter_applies(cmd.get("filter") or {}, doc):
            out.append(doc)
    batch = (cmd.get("cursor") or {}).get("batchSize")
    return first_batch(
        ctx.server.cursors,
        f"{ctx.db}.$cmd.listCollections",
        out,
        None if batch is None else int(batch),
    )


@command("listDatabases")
async def list_databases(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"filter", "nameOnly", "authorizedDatabases"})
    from mongomock.filtering import filter_applies

    names = sorted(set(ctx.store.databases()) | {"admin", "config", "local"})
    dbs = []
    for name in names:
        doc: dict[str, Any] = {"name": name}
        if not cmd.get("nameOnly"):
            doc.update(
                sizeOnDisk=8192 * (1 + len(ctx.store.collections(name))),
                empty=not ctx.store.collections(name),
            )
        if filter_applies(cmd.get("filter") or {}, doc):
            dbs.append(doc)
    reply: dict[str, Any] = {"databases": dbs, "ok": 1.0}
    if not cmd.get("nameOnly"):
        reply["totalSize"] = sum(d["sizeOnDisk"] for d in dbs)
        reply["totalSizeMb"] = reply["totalSize"] // (1024 * 1024)
    return reply
