"""Document writes on one (mongomock) collection, each returning the changes it made."""

from __future__ import annotations

from typing import Any

import mongomock
from bson import ObjectId

from changestream_worker.testing.emulator.errors import unsupported
from changestream_worker.testing.emulator.store import Change, update_description

UPDATE_OPERATORS = {
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$rename",
    "$setOnInsert",
    "$min",
    "$max",
    "$currentDate",
    "$addToSet",
    "$pop",
    "$pull",
    "$push",
    "$pullAll",
    "$bit",
}


class WriteFailure(Exception):
    """One statement of a write command failed: becomes an entry of ``writeErrors``."""

    def __init__(self, code: int, errmsg: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.extra = extra or {}


def _dup_key(coll: Any, doc: dict[str, Any] | None) -> WriteFailure:
    """Name the unique index the document collides on, as the server does."""
    for name, info in coll.index_information().items():
        if doc is None or not (info.get("unique") or name == "_id_"):
            continue
        fields = [k for k, _ in info["key"]]
        value = {k: doc.get(k) for k in fields}
        others = coll.find({**value, "_id": {"$ne": doc.get("_id")}} if name != "_id_" else value)
        if next(iter(others), None) is not None:
            shown = ", ".join(f"{k}: {v!r}" for k, v in value.items())
            return WriteFailure(
                11000,
                f"E11000 duplicate key error collection: {coll.full_name} "
                f"index: {name} dup key: {{ {shown} }}",
                {"keyPattern": {k: d for k, d in info["key"]}, "keyValue": value},
            )
    return WriteFailure(11000, f"E11000 duplicate key error collection: {coll.full_name}")


def _translate(exc: Exception, coll: Any, doc: dict[str, Any] | None = None) -> WriteFailure:
    if isinstance(exc, mongomock.DuplicateKeyError):
        return _dup_key(coll, doc)
    if isinstance(exc, NotImplementedError):
        raise unsupported(str(exc).split(".")[0]) from exc
    code = getattr(exc, "code", None) or 2
    return WriteFailure(int(code), str(exc))


def insert(coll: Any, db: str, name: str, doc: dict[str, Any]) -> Change:
    """Insert one document (``_id`` first, generated when missing)."""
    if "_id" not in doc:
        doc = {"_id": ObjectId(), **doc}
    try:
        coll.insert_one(dict(doc))
    except Exception as exc:  # mongomock raises its own hierarchy
        raise _translate(exc, coll, doc) from exc
    return Change("insert", db, name, {"_id": doc["_id"]}, doc, None)


def _is_replacement(update: Any) -> bool:
    if isinstance(update, list):
        raise unsupported("pipeline-style updates")
    if not isinstance(update, dict):
        raise WriteFailure(14, "Update argument must be either an object or an array")
    dollar = [k.startswith("$") for k in update]
    if any(dollar) and not all(dollar):
        raise WriteFailure(
            9,
            "Update document requires atomic operators"
            if dollar[0]
            else "The dollar ($) prefixed field is not allowed in a replacement",
        )
    replacement = not any(dollar)
    if not replacement:
        for op, fields in update.items():
            if op not in UPDATE_OPERATORS:
                raise WriteFailure(
                    9,
                    f"Unknown modifier: {op}. Expected a valid update modifier "
                    "or pipeline-style update specified as an array",
                )
            if isinstance(fields, dict) and any(f == "_id" or f.startswith("_id.") for f in fields):
                raise WriteFailure(
                    66,
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                )
    return replacement


def _apply_mul(coll: Any, _id: Any, u: dict[str, Any]) -> dict[str, Any]:
    """mongomock lacks $mul: turn it into a $set of the products (missing fields become 0)."""
    if "$mul" not in u:
        return u
    doc = coll.find_one({"_id": _id}) or {}
    sets = dict(u.get("$set") or {})
    for path, factor in u["$mul"].items():
        cur: Any = doc
        for part in path.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None and not isinstance(cur, int | float):
            raise WriteFailure(14, "Cannot apply $mul to a value of non-numeric type")
        sets[path] = (cur or 0) * factor if cur is not None else 0 * factor
    rest = {k: v for k, v in u.items() if k not in ("$mul", "$set")}
    return {**rest, "$set": sets}


def update(
    coll: Any, db: str, name: str, spec: dict[str, Any]
) -> tuple[int, int, Any, list[Change]]:
    """Apply one update statement: returns (matched, modified, upserted _id, changes)."""
    query = spec.get("q") or {}
    u: Any = spec.get("u")
    multi = bool(spec.get("multi"))
    upsert = bool(spec.get("upsert"))
    replacement = _is_replacement(u)
    if replacement and multi:
        raise WriteFailure(9, "multi update is not supported for replacement-style update")
    kwargs: dict[str, Any] = {}
    if spec.get("arrayFilters"):
        kwargs["array_filters"] = spec["arrayFilters"]
    try:
        targets = [d["_id"] for d in coll.find(query, {"_id": 1})]
    except Exception as exc:
        raise _translate(exc, coll) from exc
    if not multi:
        targets = targets[:1]
    changes: list[Change] = []
    if not targets:
        if not upsert:
            return 0, 0, None, []
        try:
            if replacement:
                res = coll.replace_one(query, dict(u), upsert=True)
            else:
                res = coll.update_one(query, _apply_mul(coll, None, u), upsert=True, **kwargs)
        except Exception as exc:
            raise _translate(exc, coll) from exc
        new_id = res.upserted_id
        post = coll.find_one({"_id": new_id})
        return 0, 0, new_id, [Change("insert", db, name, {"_id": new_id}, post, None)]
    modified = 0
    for _id in targets:
        pre = coll.find_one({"_id": _id})
        try:
            if replacement:
                new_doc = dict(u)
                if "_id" in new_doc and new_doc["_id"] != _id:
                    raise WriteFailure(
                        66,
                        "After applying the update, the (immutable) field "
                        "'_id' was found to have been altered to _id: "
                        f"{new_doc['_id']!r}",
                    )
                coll.replace_one({"_id": _id}, {"_id": _id, **new_doc})
            else:
                coll.update_one({"$and": [{"_id": _id}, query]}, _apply_mul(coll, _id, u), **kwargs)
        except WriteFailure:
            raise
        except Exception as exc:
            raise _translate(exc, coll) from exc
        post = coll.find_one({"_id": _id})
        if post == pre:
            continue
        modified += 1
        if replacement:
            changes.append(Change("replace", db, name, {"_id": _id}, post, pre))
        else:
            changes.append(
                Change("update", db, name, {"_id": _id}, post, pre, update_description(pre, post))
            )
    return len(targets), modified, None, changes


def delete(coll: Any, db: str, name: str, spec: dict[str, Any]) -> list[Change]:
    """Apply one delete statement (``limit`` 1 or 0 = all)."""
    query = spec.get("q") or {}
    limit = int(spec.get("limit", 0))
    try:
        found = list(coll.find(query))
    except Exception as exc:
        raise _translate(exc, coll) from exc
    if limit == 1:
        found = found[:1]
    changes = []
    for doc in found:
        coll.delete_one({"_id": doc["_id"]})
        changes.append(Change("delete", db, name, {"_id": doc["_id"]}, None, doc))
    return changes
