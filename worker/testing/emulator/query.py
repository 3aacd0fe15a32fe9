"""Queries over the engine: collation, sort, projection, yielding scans (and ``let``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import mongomock
from bson import Int64, ObjectId
from mongomock import filtering

from changestream_worker.testing.emulator.collation import collate, collate_str, strength_of
from changestream_worker.testing.emulator.engine import Collection
from changestream_worker.testing.emulator.errors import CommandError, unsupported
from changestream_worker.testing.emulator.keys import MISSING, NOTHING, keyof, path_values
from changestream_worker.testing.emulator.variables import bind, bind_filter, variables

__all__ = [
    "SLICE_S",
    "bind",
    "bind_filter",
    "check_filter",
    "check_hint",
    "collate",
    "collate_str",
    "distinct_values",
    "find_docs",
    "project",
    "scan",
    "sort_docs",
    "sort_spec",
    "strength_of",
    "variables",
    "within_bounds",
]
# A long scan gives other connections the loop back this often (seconds).
SLICE_S = 0.02
_PROJECTOR: Any = mongomock.MongoClient().projection.scratch


# ---- matching, sort and projection --------------------------------------------------
def check_filter(query: Any) -> dict[str, Any]:
    if query is None:
        return {}
    if not isinstance(query, dict):
        raise CommandError(14, "filter must be an object")
    return query


async def scan(
    coll: Collection, query: dict[str, Any], strength: int | None = None, enough: int = 0
) -> list[dict[str, Any]]:
    """Matching documents in natural order (the first ``enough`` when that is not 0); a
    full scan yields the loop between slices."""
    if strength is None:
        if not query:
            return coll.all()[:enough] if enough else coll.all()
        pool = coll.candidates(query)
        if pool is not None:
            return [d for d in pool if filtering.filter_applies(query, d)]
    pool = coll.all()
    if not pool:
        filtering.filter_applies(query, {})  # a bad filter fails even on nothing
        return []
    keyed = collate(query, strength, in_filter=True)
    out = []
    deadline = time.monotonic() + SLICE_S
    for i, doc in enumerate(pool):
        target = doc if strength is None else collate(doc, strength)
        if filtering.filter_applies(keyed, target):
            out.append(doc)
            if len(out) == enough:
                break
        if i & 255 == 255 and time.monotonic() > deadline:
            await asyncio.sleep(0)
            deadline = time.monotonic() + SLICE_S
    return out


def check_hint(coll: Collection, hint: Any) -> None:
    """Refuse a hint that names no index of the collection, as the query planner does."""
    if isinstance(hint, str):
        if hint == "_id_" or hint in coll.indexes:
            return
    elif isinstance(hint, dict):
        spec = list(hint.items())
        if not spec or spec[0][0] == "$natural" or spec == [("_id", 1)] or spec == [("_id", -1)]:
            return
        if any(list(idx.key) == spec for idx in coll.indexes.values()):
            return
    else:
        raise CommandError(9, "hint must be a string or an object")
    raise CommandError(
        2,
        "error processing query: planner returned error :: caused by :: "
        "hint provided does not correspond to an existing index",
    )


def sort_spec(spec: Any) -> list[tuple[str, int]] | None:
    """A sort document as (field, direction) pairs; ``$natural`` is the stored order."""
    if not spec:
        return None
    items = list(dict(spec).items())
    for k, v in items:
        if isinstance(v, dict) and v.get("$meta"):
            raise unsupported(f"sort by $meta on '{k}'")
        if v not in (1, -1):
            raise CommandError(
                2,
                "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
            )
    return items


def _sort_value(doc: dict[str, Any], key: str, descending: bool, strength: int | None) -> Any:
    values = [v for v in filtering.iter_key_candidates(key, doc) if v is not NOTHING]
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, list) and v else [v])
    if not flat:
        return filtering.BsonComparable(None)
    flat = [collate(v, strength) for v in flat]
    pick = filtering.BsonComparable(flat[0])
    for v in flat[1:]:
        cand = filtering.BsonComparable(v)
        if (pick < cand) if descending else (cand < pick):
            pick = cand
    return pick


# BSON's order of the common scalar types, for a sort key Python compares natively
_RANK: dict[type, int] = {type(None): 5, int: 10, float: 10, Int64: 10, str: 15, bool: 40}


def fast_key(value: Any) -> tuple[int, Any] | None:
    """A native sort key in BSON order for common scalars; None when only a BSON compare will do."""
    kind = type(value)
    rank = _RANK.get(kind)
    if rank is not None:
        return (rank, 0 if value is None else value)
    if kind is ObjectId:
        return (35, value.binary)
    if kind is datetime:
        return (45, value.replace(tzinfo=None) - value.utcoffset() if value.tzinfo else value)
    return None


def bson_sorted(values: list[Any], key: Any, reverse: bool = False) -> list[Any]:
    """Sort by ``key(item)`` in BSON order: natively when every key is a common scalar."""
    keys = [key(v) for v in values]
    fast = [fast_key(k.obj if isinstance(k, filtering.BsonComparable) else k) for k in keys]
    if all(f is not None for f in fast):
        order = sorted(range(len(values)), key=lambda i: fast[i], reverse=reverse)  # type: ignore[arg-type,return-value]  # all keys are tuples here
    else:
        wrapped = [
            k if isinstance(k, filtering.BsonComparable) else filtering.BsonComparable(k)
            for k in keys
        ]
        order = sorted(range(len(values)), key=lambda i: wrapped[i], reverse=reverse)
    return [values[i] for i in order]


def sort_docs(
    docs: list[dict[str, Any]], spec: list[tuple[str, int]] | None, strength: int | None
) -> list[dict[str, Any]]:
    """Sort as the server does: arrays by their smallest (largest, descending) element."""
    if not spec:
        return docs
    for key, direction in reversed(spec):
        if key == "$natural":
            if direction < 0:
                docs = docs[::-1]
            continue
        desc = direction < 0
        docs = bson_sorted(
            docs, lambda d, k=key, down=desc: _sort_value(d, k, down, strength), reverse=desc
        )
    return docs


def project(docs: Iterable[dict[str, Any]], projection: Any) -> list[dict[str, Any]]:
    """Apply a find projection (copies); None or empty returns the documents as they are."""
    if not projection:
        return list(docs)
    if not isinstance(projection, dict):
        raise CommandError(14, "projection must be an object")
    try:
        return [_PROJECTOR._copy_only_fields(d, dict(projection), dict) for d in docs]
    except ValueError as exc:
        raise CommandError(31254, f"Cannot do exclusion and inclusion together: {exc}") from exc
    except NotImplementedError as exc:
        raise unsupported(str(exc).split(".")[0]) from exc


async def find_docs(
    coll: Collection,
    query: dict[str, Any],
    *,
    sort: Any = None,
    skip: int = 0,
    limit: int = 0,
    collation: dict[str, Any] | None = None,
    let: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """What ``find`` selects, before projection: filter, sort, skip and limit."""
    strength = strength_of(collation)
    query = bind_filter(check_filter(query), let)
    order = sort_spec(sort)
    # without a sort the first matches are the answer: stop scanning once there are enough
    enough = skip + abs(limit) if limit and not order else 0
    docs = await scan(coll, query, strength, enough)
    docs = sort_docs(docs, order, strength)
    if skip:
        docs = docs[skip:]
    if limit:
        docs = docs[: abs(limit)]
    return docs


def distinct_values(docs: list[dict[str, Any]], key: str, strength: int | None) -> list[Any]:
    """Distinct values of ``key`` (array elements counted singly), in BSON order."""
    seen: dict[Any, Any] = {}
    for doc in docs:
        for v in path_values(doc, key):
            if v is MISSING or (isinstance(v, list) and not v):
                continue
            seen.setdefault(keyof(collate(v, strength)), v)
    return bson_sorted(list(seen.values()), lambda v: collate(v, strength))


def within_bounds(
    coll: Collection, docs: list[dict[str, Any]], hint: Any, low: Any, high: Any
) -> list[dict[str, Any]]:
    """``min`` (inclusive) and ``max`` (exclusive) bounds on the hinted index's keys."""
    if hint is None:
        raise CommandError(
            51173, "When using min()/max() a hint of which index to use must be provided"
        )
    if isinstance(hint, str):
        key = (
            [("_id", 1)]
            if hint == "_id_"
            else list(coll.indexes[hint].key)
            if hint in coll.indexes
            else None
        )
    else:
        key = list(dict(hint).items())
    if key is None:
        raise CommandError(2, "hint provided does not correspond to an existing index")
    fields = [f for f, _ in key]
    for bound in (low, high):
        if bound is not None and list(dict(bound)) != fields:
            raise CommandError(51174, "The index key pattern does not match the min/max bounds")

    def order(doc: dict[str, Any], bound: dict[str, Any]) -> int:
        for field, direction in key:
            mine = next(iter(path_values(doc, field)))
            a = filtering.BsonComparable(None if mine is MISSING else mine)
            b = filtering.BsonComparable(bound[field])
            sign = -1 if direction == -1 else 1
            if a < b:
                return -sign
            if b < a:
                return sign
        return 0

    return [
        d
        for d in docs
        if (low is None or order(d, low) >= 0) and (high is None or order(d, high) < 0)
    ]
