"""The aggregate command: change streams, collection and database pipelines, $out and $merge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import bson
from bson import ObjectId

from changestream_worker.testing.emulator import docops, pipeline, query, views
from changestream_worker.testing.emulator.changestream import ChangeStream
from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.cursors import first_batch
from changestream_worker.testing.emulator.engine import Collection, DuplicateKey
from changestream_worker.testing.emulator.errors import CommandError, unsupported
from changestream_worker.testing.emulator.registry import command
from changestream_worker.testing.emulator.store import Change
from changestream_worker.testing.emulator.update_ops import copy_value

AGG_FIELDS = {
    "pipeline",
    "cursor",
    "explain",
    "allowDiskUse",
    "collation",
    "hint",
    "let",
    "bypassDocumentValidation",
}


def _change_stream(ctx: Ctx, cmd: dict[str, Any], stages: list[Any], batch: Any) -> dict[str, Any]:
    level = (cmd.get("readConcern") or {}).get("level")
    if level is not None and level != "majority":
        raise CommandError(
            72,
            f"Aggregation stage $changeStream cannot run with a readConcern other than "
            f"'majority'. Current readConcern: {level}",
        )
    target = cmd["aggregate"]
    coll = target if isinstance(target, str) else None
    stream = ChangeStream(
        ctx.store, ctx.db, coll, dict(stages[0]["$changeStream"] or {}), stages[1:]
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


async def _source(
    ctx: Ctx,
    target: Any,
    stages: list[Any],
    values: dict[str, Any],
    strength: int | None,
    lsid: Any = None,
) -> tuple[list[dict[str, Any]], list[Any]]:
    """The documents entering the pipeline and the stages still to run."""
    if stages and pipeline.stage_name(stages[0]) == "$documents":
        if target != 1:
            raise CommandError(
                40602, "$documents is only valid on a database-level aggregate ({aggregate: 1})"
            )
        return pipeline.documents_stage(stages[0]["$documents"], values), stages[1:]
    if stages and pipeline.stage_name(stages[0]) == "$listLocalSessions":
        if target != 1:
            raise CommandError(
                40602,
                "$listLocalSessions must be run against the 'admin' database with {aggregate: 1}",
            )
        return _local_sessions(ctx, lsid), stages[1:]
    if not isinstance(target, str):
        raise unsupported("a database-level aggregate without $documents or $changeStream")
    resolved = views.resolve(ctx.store, ctx.db, target)
    if resolved is not None:
        source, defined = resolved
        docs = [copy_value(d) for d in ctx.ws.coll(ctx.db, source).all()]
        return docs, defined + stages
    coll = ctx.ws.coll(ctx.db, target)
    if stages and pipeline.stage_name(stages[0]) == "$match":
        q = query.bind_filter(query.check_filter(stages[0]["$match"]), values)
        found = await query.scan(coll, q, strength)
        return [copy_value(d) for d in found], stages[1:]
    return [copy_value(d) for d in coll.all()], stages


def _local_sessions(ctx: Ctx, lsid: Any) -> list[dict[str, Any]]:
    """``$listLocalSessions``: the sessions this server has seen, the caller's included."""
    ids = [bson.decode(k)["id"] for k in ctx.server.sessions.sessions]
    own = (lsid or {}).get("id")
    if own is not None and own not in ids:
        ids.append(own)
    now = datetime.now(UTC).replace(tzinfo=None)
    return [{"_id": {"id": i, "uid": b"\x00" * 32}, "lastUse": now} for i in ids]


def _target(spec: Any, db: str, field: str) -> tuple[str, str]:
    if isinstance(spec, str):
        return db, spec
    if isinstance(spec, dict) and isinstance(spec.get("coll"), str):
        return str(spec.get("db", db)), spec["coll"]
    raise CommandError(14, f"{field} must be a string or an object with 'db' and 'coll'")


def _out(ctx: Ctx, spec: Any, docs: list[dict[str, Any]]) -> None:
    db, name = _target(spec, ctx.db, "$out")
    old = ctx.store.collection(db, name)
    fresh = Collection(db, name)
    for idx in old.indexes.values():
        fresh.create_index(idx.key, idx.name, idx.unique, idx.sparse, idx.partial)
    try:
        for doc in docs:
            fresh.insert(doc if "_id" in doc else {"_id": ObjectId(), **doc})
    except DuplicateKey as exc:
        raise CommandError(11000, f"E11000 duplicate key error collection: {db}.{name}") from exc
    ctx.store.ensure(db, name)
    ctx.store.data[db][name] = fresh


def _merge(ctx: Ctx, spec: Any, docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    if not isinstance(spec, dict):
        spec = {"into": spec}
    db, name = _target(spec.get("into"), ctx.db, "$merge.into")
    on = spec.get("on", "_id")
    on_fields = [on] if isinstance(on, str) else list(on)
    coll = ctx.ws.coll(db, name)
    if on_fields != ["_id"] and not any(
        idx.unique and sorted(idx.fields) == sorted(on_fields) for idx in coll.indexes.values()
    ):
        raise CommandError(51183, "Cannot find index to verify that join fields will be unique")
    matched_mode = spec.get("whenMatched", "merge")
    unmatched_mode = spec.get("whenNotMatched", "insert")
    merge_values = {**values, **query.variables(spec.get("let"))}
    changes: list[Change] = []
    try:
        for doc in docs:
            key = {f: doc.get(f) for f in on_fields}
            existing = coll.find_one(key)
            if existing is None:
                if unmatched_mode == "insert":
                    changes.append(docops.insert(coll, db, name, doc))
                elif unmatched_mode == "fail":
                    raise CommandError(
                        13113, "$merge could not find a matching document in the target collection"
                    )
                continue
            if matched_mode == "keepExisting":
                continue
            if matched_mode == "fail":
                shown = ", ".join(f"{k}: {v!r}" for k, v in key.items())
                raise CommandError(
                    11000,
                    f"E11000 duplicate key error collection: {db}.{name} index: "
                    f"{'_id_' if on_fields == ['_id'] else '_'.join(on_fields)} "
                    f"dup key: {{ {shown} }}",
                    extra={"keyPattern": {f: 1 for f in on_fields}, "keyValue": key},
                )
            if matched_mode == "replace":
                u: Any = {k: v for k, v in doc.items() if k != "_id"}
            elif matched_mode == "merge":
                u = (
                    {"$set": {k: v for k, v in doc.items() if k != "_id"}}
                    if len(doc) > 1
                    else {"$set": {}}
                )
            elif isinstance(matched_mode, list):
                u = matched_mode
                merge_values = {**merge_values, "new": doc}
            else:
                raise CommandError(51191, f"unknown whenMatched mode {matched_mode!r}")
            kind = docops.kind_of(u)
            _post, change = docops.apply(
                coll, db, name, existing, {"q": key, "u": u}, kind, merge_values
            )
            if change is not None:
                changes.append(change)
    except docops.WriteFailure as exc:
        raise CommandError(exc.code, exc.errmsg, extra=exc.extra) from exc
    finally:
        ctx.ws.commit(changes)


@command("aggregate")
async def aggregate(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, AGG_FIELDS)
    if cmd.get("explain"):
        raise unsupported("aggregate with explain")
    stages = cmd.get("pipeline")
    if not isinstance(stages, list):
        raise CommandError(14, "'pipeline' option must be specified as an array")
    if "cursor" not in cmd and not cmd.get("explain"):
        raise CommandError(
            9, "The 'cursor' option is required, except for aggregate with the explain argument"
        )
    batch = (cmd.get("cursor") or {}).get("batchSize")
    if stages and isinstance(stages[0], dict) and "$changeStream" in stages[0]:
        return _change_stream(ctx, cmd, stages, batch)
    pipeline.check_stages(stages)
    writes = any(pipeline.stage_name(st) in ("$out", "$merge") for st in stages)
    if writes and (cmd.get("readConcern") or {}).get("level") == "linearizable":
        raise CommandError(72, "readConcern level linearizable is not allowed with $out or $merge")
    values = query.variables(cmd.get("let"), ctx.store.clock.last)
    strength = query.strength_of(cmd.get("collation"))
    target = cmd["aggregate"]
    if isinstance(target, str) and cmd.get("hint") is not None and ctx.store.exists(ctx.db, target):
        query.check_hint(ctx.ws.coll(ctx.db, target), cmd["hint"])
    docs, rest = await _source(ctx, target, stages, values, strength, cmd.get("lsid"))
    final = pipeline.stage_name(rest[-1]) if rest else ""
    writer = rest[-1] if final in ("$out", "$merge") else None
    body = rest[:-1] if writer is not None else rest
    docs = pipeline.run_stages(
        docs,
        query.bind(body, values),
        foreign=lambda name: ctx.ws.coll(ctx.db, name),
        strength=strength,
    )
    ns = f"{ctx.db}.{target}" if isinstance(target, str) else f"{ctx.db}.$cmd.aggregate"
    if writer is not None:
        if final == "$out":
            _out(ctx, writer["$out"], docs)
        else:
            _merge(ctx, writer["$merge"], docs, values)
        docs = []
    return first_batch(
        ctx.server.cursors, ns, docs, None if batch is None else int(batch), lsid=cmd.get("lsid")
    )
