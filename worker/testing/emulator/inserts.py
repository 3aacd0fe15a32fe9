"""Inserting one document: _id rules, the 16 MiB limit, validators and unique keys."""

from __future__ import annotations

from typing import Any

import bson
from bson import ObjectId

from changestream_worker.testing.emulator import validation
from changestream_worker.testing.emulator.engine import Collection, DuplicateKey, WriteFailure
from changestream_worker.testing.emulator.store import Change

MAX_BSON = 16 * 1024 * 1024


def dup_failure(coll: Collection, exc: DuplicateKey) -> WriteFailure:
    shown = ", ".join(f"{k}: {v!r}" for k, v in exc.value.items())
    return WriteFailure(
        11000,
        f"E11000 duplicate key error collection: {coll.full_name} index: {exc.index} "
        f"dup key: {{ {shown} }}",
        {"keyPattern": exc.pattern, "keyValue": exc.value},
    )


def _check_id(value: Any) -> None:
    if isinstance(value, list):
        raise WriteFailure(53, "The '_id' value cannot be of type array")
    if hasattr(value, "pattern") and hasattr(value, "flags"):
        raise WriteFailure(53, "The '_id' value cannot be of type regex")
    if isinstance(value, dict):
        for k, v in value.items():
            if str(k).startswith("$"):
                raise WriteFailure(
                    52,
                    f"_id fields may not contain '$'-prefixed fields: {k} is not valid "
                    "for storage.",
                )
            if isinstance(v, dict):
                _check_id(v)


def size_ok(doc: dict[str, Any], inserting: bool) -> None:
    size = len(bson.encode(doc))
    if size > MAX_BSON:
        if inserting:
            raise WriteFailure(
                2, f"object to insert too large. size in bytes: {size}, max size: {MAX_BSON}"
            )
        raise WriteFailure(17419, f"Resulting document after update is larger than {MAX_BSON}")


def validate(coll: Collection, doc: dict[str, Any], pre: dict[str, Any] | None) -> None:
    """Apply the collection's validator (moderate level: only to documents valid before)."""
    if coll.validator is None or validation.BYPASS.get():
        return
    rule, level, action = coll.validator
    if level == "off" or action != "error":
        return
    if pre is not None and level == "moderate" and not validation.valid(rule, pre):
        return
    if not validation.valid(rule, doc):
        raise WriteFailure(*validation.failure(doc))


def insert(coll: Collection, db: str, name: str, doc: dict[str, Any]) -> Change:
    """Insert one document (``_id`` first, generated when missing)."""
    doc = {"_id": doc["_id"], **doc} if "_id" in doc else {"_id": ObjectId(), **doc}
    _check_id(doc["_id"])
    size_ok(doc, True)
    validate(coll, doc, None)
    try:
        coll.insert(doc)
    except DuplicateKey as exc:
        raise dup_failure(coll, exc) from exc
    return Change("insert", db, name, {"_id": doc["_id"]}, doc, None)
