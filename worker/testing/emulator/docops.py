"""Document writes on one engine collection, each returning the changes it made."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import bson
from mongomock.filtering import filter_applies

from changestream_worker.testing.emulator import pipeline, query
from changestream_worker.testing.emulator.deltas import update_description
from changestream_worker.testing.emulator.engine import Collection, DuplicateKey, WriteFailure
from changestream_worker.testing.emulator.errors import CommandError
from changestream_worker.testing.emulator.inserts import dup_failure, insert, size_ok, validate
from changestream_worker.testing.emulator.keys import keyof
from changestream_worker.testing.emulator.store import Change
from changestream_worker.testing.emulator.update_ops import OPS
from changestream_worker.testing.emulator.updates import apply_operators

__all__ = [
    "SLICE_CHANGES",
    "WriteFailure",
    "apply",
    "delete",
    "insert",
    "kind_of",
    "update",
    "upsert",
]
# Recording a change in the oplog costs about as much as making it: flush in bounded slices.
SLICE_CHANGES = 256


def kind_of(update: Any) -> str:
    """``pipeline``, ``replacement`` or ``operators``; refuses malformed update documents."""
    if isinstance(update, list):
        return "pipeline"
    if not isinstance(update, dict):
        raise WriteFailure(14, "Update argument must be either an object or an array")
    dollar = [k.startswith("$") for k in update]
    if not any(dollar):
        return "replacement"
    if not all(dollar):
        raise WriteFailure(
            9,
            "Update document requires atomic operators"
            if dollar[0]
            else "The dollar ($) prefixed field is not allowed in a replacement",
        )
    for op in update:
        if op not in OPS:
            raise WriteFailure(
                9,
                f"Unknown modifier: {op}. Expected a valid update modifier "
                "or pipeline-style update specified as an array",
            )
    return "operators"


def _dollar_paths(update: dict[str, Any]) -> None:
    for fields in update.values():
        for path in fields if isinstance(fields, dict) else ():
            for part in path.split("."):
                if part.startswith("$") and part != "$" and not part.startswith("$["):
                    raise WriteFailure(
                        52,
                        f"The dollar ($) prefixed field '{part}' in '{path}' is not allowed in "
                        "the context of an update's replacement document. Consider using an "
                        "aggregation pipeline with $replaceWith.",
                    )


def new_version(
    pre: dict[str, Any],
    spec: dict[str, Any],
    kind: str,
    values: dict[str, Any],
    inserting: bool = False,
) -> dict[str, Any]:
    """The document an update statement makes of ``pre`` (a seed, when upserting)."""
    u: Any = spec.get("u")
    try:
        if kind == "pipeline":
            post = pipeline.update_with_pipeline(pre, u, values)
        elif kind == "replacement":
            post = {k: v for k, v in u.items()}
            if "_id" in pre:
                post = {"_id": pre["_id"], **post}
        else:
            if not inserting:
                _dollar_paths(u)
            post = apply_operators(
                pre,
                u,
                array_filters=spec.get("arrayFilters"),
                query=spec.get("q") or {},
                inserting=inserting,
            )
    except CommandError as exc:
        raise WriteFailure(exc.code, exc.errmsg) from exc
    if kind == "pipeline" and "_id" in pre and "_id" not in post:
        post = {"_id": pre["_id"], **post}  # a pipeline that drops _id keeps the original
    if "_id" in pre and ("_id" not in post or keyof(post["_id"]) != keyof(pre["_id"])):
        if kind == "replacement":
            raise WriteFailure(
                66,
                "After applying the update, the (immutable) field '_id' was found to have "
                f"been altered to _id: {post.get('_id')!r}",
            )
        raise WriteFailure(
            66, "Performing an update on the path '_id' would modify the immutable field '_id'"
        )
    if "_id" in post and next(iter(post)) != "_id":
        post = {"_id": post["_id"], **post}
    size_ok(post, False)
    return post


def seed(q: dict[str, Any]) -> dict[str, Any]:
    """The fields an upsert's new document takes from its query's equality conditions."""
    out: dict[str, Any] = {}
    for key, cond in q.items():
        if key == "$and" and isinstance(cond, list):
            for sub in cond:
                if isinstance(sub, dict):
                    out.update(seed(sub))
            continue
        if key.startswith("$"):
            continue
        if isinstance(cond, dict) and any(str(k).startswith("$") for k in cond):
            if "$eq" not in cond:
                continue
            cond = cond["$eq"]
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                break
            node = nxt
        else:
            node[parts[-1]] = cond
    return out


def _change(db: str, name: str, pre: dict[str, Any], post: dict[str, Any], kind: str) -> Change:
    if kind == "replacement":
        return Change("replace", db, name, {"_id": pre["_id"]}, post, pre)
    return Change("update", db, name, {"_id": pre["_id"]}, post, pre, update_description(pre, post))


def apply(
    coll: Collection,
    db: str,
    name: str,
    pre: dict[str, Any],
    spec: dict[str, Any],
    kind: str,
    values: dict[str, Any],
) -> tuple[dict[str, Any], Change | None]:
    """Update one stored document; returns its new version and the change (None if no-op)."""
    post = new_version(pre, spec, kind, values)
    if bson.encode(post) == bson.encode(pre):
        return pre, None
    validate(coll, post, pre)
    try:
        coll.replace(pre, post)
    except DuplicateKey as exc:
        raise dup_failure(coll, exc) from exc
    return post, _change(db, name, pre, post, kind)


def upsert(
    coll: Collection, db: str, name: str, spec: dict[str, Any], kind: str, values: dict[str, Any]
) -> tuple[dict[str, Any], Change]:
    """Insert the document an upsert makes when nothing matched."""
    base = seed(spec.get("q") or {})
    if kind == "replacement":
        doc = dict(spec["u"])
        if "_id" in base:
            if "_id" in doc and keyof(doc["_id"]) != keyof(base["_id"]):
                raise WriteFailure(66, "The _id field cannot be changed by an upsert replacement")
            doc = {"_id": base["_id"], **doc}
    else:
        doc = new_version(base, spec, kind, values, inserting=True)
    change = insert(coll, db, name, doc)
    assert change.post is not None
    return change.post, change


Flush = Callable[[list[Change]], None]


async def _pause(changes: list[Change], flush: Flush | None) -> None:
    """Hand what is done so far to ``flush`` and let other connections run."""
    if flush is not None:
        flush(changes[:])
        changes.clear()
    await asyncio.sleep(0)


async def update(
    coll: Collection,
    db: str,
    name: str,
    spec: dict[str, Any],
    values: dict[str, Any],
    flush: Flush | None = None,
) -> tuple[int, int, Any, list[Change]]:
    """Apply one update statement: returns (matched, modified, upserted _id, changes).

    A long multi-update hands finished changes to ``flush`` between slices of work (then
    yields); the changes returned are the ones not flushed yet.
    """
    q = query.bind_filter(query.check_filter(spec.get("q")), values)
    multi = bool(spec.get("multi"))
    kind = kind_of(spec.get("u"))
    if kind == "replacement" and multi:
        raise WriteFailure(9, "multi update is not supported for replacement-style update")
    strength = query.strength_of(spec.get("collation"))
    try:
        targets = await query.scan(coll, q, strength)
    except CommandError as exc:
        raise WriteFailure(exc.code, exc.errmsg) from exc
    if not multi:
        targets = targets[:1]
    if not targets:
        if not spec.get("upsert"):
            return 0, 0, None, []
        post, change = upsert(coll, db, name, {**spec, "q": q}, kind, values)
        return 0, 0, post["_id"], [change]
    changes: list[Change] = []
    matched = modified = 0
    deadline = time.monotonic() + query.SLICE_S
    for doc in targets:
        current = coll.get(doc["_id"])
        if current is None or (current is not doc and not filter_applies(q, current)):
            continue  # changed by a command that ran while this one scanned
        matched += 1
        _post, done = apply(coll, db, name, current, {**spec, "q": q}, kind, values)
        if done is not None:
            changes.append(done)
            modified += 1
        if len(changes) >= SLICE_CHANGES or time.monotonic() > deadline:
            await _pause(changes, flush)
            deadline = time.monotonic() + query.SLICE_S
    return matched, modified, None, changes


async def delete(
    coll: Collection,
    db: str,
    name: str,
    spec: dict[str, Any],
    values: dict[str, Any],
    flush: Flush | None = None,
) -> list[Change]:
    """Apply one delete statement (``limit`` 1 or 0 = all)."""
    q = query.bind_filter(query.check_filter(spec.get("q")), values)
    limit = int(spec.get("limit", 0))
    if limit not in (0, 1):
        raise WriteFailure(9, "The limit field in delete objects must be 0 or 1.")
    strength = query.strength_of(spec.get("collation"))
    try:
        found = await query.scan(coll, q, strength)
    except CommandError as exc:
        raise WriteFailure(exc.code, exc.errmsg) from exc
    changes: list[Change] = []
    deadline = time.monotonic() + query.SLICE_S
    for doc in found:
        if coll.remove(doc):
            changes.append(Change("delete", db, name, {"_id": doc["_id"]}, None, doc))
            if limit == 1:
                break
        if len(changes) >= SLICE_CHANGES or time.monotonic() > deadline:
            await _pause(changes, flush)
            deadline = time.monotonic() + query.SLICE_S
    return changes
