"""Index keys under MongoDB's equality: hashable value forms, path fan-out, equality pins."""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from bson import Binary, Decimal128, ObjectId, Regex
from bson.int64 import Int64
from mongomock import filtering

MISSING: Any = object()
# mongomock's marker for "no such field", which its filter helpers return
NOTHING: Any = vars(filtering)["NOTHING"]


def keyof(value: Any) -> Hashable:
    """A hashable form of a BSON value under MongoDB equality (1 == 1.0 == Int64(1))."""
    if type(value) is ObjectId or type(value) is str:
        return (type(value).__name__, value)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float | Int64):
        return ("n", int(value)) if value == int(value) else ("n", float(value))
    if isinstance(value, Decimal128):
        dec = value.to_decimal()
        return ("n", int(dec)) if dec == int(dec) else ("n", float(dec))
    if isinstance(value, str):
        return ("str", value)
    if value is None:
        return ("z",)
    if isinstance(value, dict):
        return ("o", tuple((k, keyof(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return ("a", tuple(keyof(v) for v in value))
    if isinstance(value, Binary):
        return ("B", value.subtype, bytes(value))
    if isinstance(value, bytes):
        return ("B", 0, value)
    if isinstance(value, datetime.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return ("d", aware.timestamp())
    if isinstance(value, ObjectId | Hashable):
        return (type(value).__name__, value)
    return (type(value).__name__, repr(value))


def path_values(doc: Any, path: str) -> list[Any]:
    """The values an index on ``path`` sees in ``doc``: arrays fan out, missing is MISSING."""
    out: list[Any] = []
    _walk(doc, path.split("."), out)
    return out or [MISSING]


def _walk(value: Any, parts: list[str], out: list[Any]) -> None:
    if not parts:
        if isinstance(value, list):
            out.extend(value if value else [[]])  # an empty array has a key of its own
        else:
            out.append(value)
        return
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        if head in value:
            _walk(value[head], rest, out)
    elif isinstance(value, list):
        if head.isdigit() and int(head) < len(value):
            _walk(value[int(head)], rest, out)
        for item in value:
            if isinstance(item, dict):
                _walk(item, parts, out)


@dataclass(slots=True)
class Index:
    """A secondary index: its spec and, per index key, the ``_id`` keys of its documents."""

    name: str
    key: list[tuple[str, Any]]
    unique: bool = False
    sparse: bool = False
    partial: dict[str, Any] | None = None
    entries: dict[Hashable, dict[Hashable, None]] = field(default_factory=dict)

    @property
    def fields(self) -> list[str]:
        return [k for k, _ in self.key]

    def keys_of(self, doc: dict[str, Any]) -> list[Hashable]:
        """Index keys of ``doc`` (none when a sparse or partial index leaves it out)."""
        per_field = [path_values(doc, f) for f in self.fields]
        if self.sparse and all(v == [MISSING] for v in per_field):
            return []
        if self.partial is not None and not filtering.filter_applies(self.partial, doc):
            return []
        combos = itertools.product(*per_field)
        return list(
            dict.fromkeys(tuple(keyof(None if v is MISSING else v) for v in c) for c in combos)
        )

    def usable_for_equality(self) -> bool:
        return self.partial is None


def key_value(idx: Index, doc: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for f in idx.fields:
        vals = path_values(doc, f)
        out[f] = None if vals[0] is MISSING else vals[0]
    return out


def _plain_value(v: Any) -> bool:
    """True for a value whose equality match implies the index holds that very value."""
    if isinstance(v, dict):
        return not any(str(k).startswith("$") for k in v)
    return not isinstance(v, list | Regex) and not hasattr(v, "pattern")


def equalities(query: dict[str, Any]) -> dict[str, list[Any]]:
    """Fields the query pins to one of a few values (equality, ``$eq``, ``$in``, in ``$and``)."""
    out: dict[str, list[Any]] = {}
    for key, cond in query.items():
        if key == "$and" and isinstance(cond, list):
            for sub in cond:
                if isinstance(sub, dict):
                    for k, v in equalities(sub).items():
                        out.setdefault(k, v)
            continue
        if key.startswith("$"):
            continue
        if isinstance(cond, dict) and cond and all(str(k).startswith("$") for k in cond):
            if "$eq" in cond and _plain_value(cond["$eq"]):
                out[key] = [cond["$eq"]]
            elif (
                "$in" in cond
                and isinstance(cond["$in"], list)
                and all(_plain_value(v) for v in cond["$in"])
            ):
                out[key] = list(cond["$in"])
        elif _plain_value(cond):
            out[key] = [cond]
    return out
