"""The emulator's document storage: collections keyed by ``_id`` with maintained indexes.

Documents are never changed in place once stored (a write stores a new dict), so readers may
hold on to them; matching uses mongomock's filter semantics, lookups by ``_id`` or by an
index's full key use hash maps instead of a scan.
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Hashable, Iterable, Iterator
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
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int | float | Int64):
        return ("n", int(value)) if value == int(value) else ("n", float(value))
    if isinstance(value, Decimal128):
        dec = value.to_decimal()
        return ("n", int(dec)) if dec == int(dec) else ("n", float(dec))
    if isinstance(value, str):
        return ("s", value)
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


class WriteFailure(Exception):
    """One statement of a write command failed: becomes an entry of ``writeErrors``."""

    def __init__(self, code: int, errmsg: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(errmsg)
        self.code = code
        self.errmsg = errmsg
        self.extra = extra or {}


class DuplicateKey(Exception):
    """A write would give two documents the same key in a unique index (or ``_id``)."""

    def __init__(self, index: str, pattern: dict[str, Any], value: dict[str, Any]) -> None:
        super().__init__(index)
        self.index, self.pattern, self.value = index, pattern, value


class Collection:
    """One collection's documents in natural (insertion) order and its secondary indexes."""

    def __init__(self, db: str, name: str) -> None:
        self.db, self.name = db, name
        self.docs: dict[Hashable, dict[str, Any]] = {}
        self.indexes: dict[str, Index] = {}

    @property
    def full_name(self) -> str:
        return f"{self.db}.{self.name}"

    def __len__(self) -> int:
        return len(self.docs)

    # ---- reads ------------------------------------------------------------------
    def get(self, _id: Any) -> dict[str, Any] | None:
        return self.docs.get(keyof(_id))

    def all(self) -> list[dict[str, Any]]:
        return list(self.docs.values())

    def candidates(self, query: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Documents that may match ``query``, from an index; None when a scan is needed."""
        eq = equalities(query)
        if not eq:
            return None
        if "_id" in eq:
            found = [d for v in eq["_id"] if (d := self.docs.get(keyof(v))) is not None]
            return list({id(d): d for d in found}.values())
        for idx in self.indexes.values():
            if not idx.usable_for_equality() or not all(f in eq for f in idx.fields):
                continue
            if idx.sparse and any(v is None for f in idx.fields for v in eq[f]):
                continue
            keys = itertools.product(*(eq[f] for f in idx.fields))
            ids: dict[Hashable, None] = {}
            for combo in keys:
                ids.update(idx.entries.get(tuple(keyof(v) for v in combo), {}))
            return [self.docs[i] for i in ids if i in self.docs]
        return None

    def find(self, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Matching documents in natural order (no copies: never mutate them)."""
        query = query or {}
        pool = self.candidates(query)
        if pool is None:
            pool = self.all()
            if not pool:
                filtering.filter_applies(query, {})  # a bad filter fails even on nothing
        return (d for d in pool if filtering.filter_applies(query, d))

    def find_one(self, query: dict[str, Any] | None = None) -> dict[str, Any] | None:
        return next(self.find(query or {}), None)

    # ---- writes -----------------------------------------------------------------
    def insert(self, doc: dict[str, Any]) -> None:
        """Store a new document; raises DuplicateKey and leaves nothing changed."""
        k = keyof(doc["_id"])
        if k in self.docs:
            raise DuplicateKey("_id_", {"_id": 1}, {"_id": doc["_id"]})
        self._check_unique(doc, None)
        self.docs[k] = doc
        self._index(doc, k)

    def replace(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Swap a stored document for its new version (same ``_id``), keeping its place."""
        k = keyof(old["_id"])
        self._check_unique(new, k)
        self._unindex(old, k)
        self.docs[k] = new
        self._index(new, k)

    def remove(self, doc: dict[str, Any]) -> bool:
        k = keyof(doc["_id"])
        if self.docs.get(k) is not doc:
            return False
        del self.docs[k]
        self._unindex(doc, k)
        return True

    def clear(self) -> None:
        self.docs.clear()
        for idx in self.indexes.values():
            idx.entries.clear()

    # ---- indexes ----------------------------------------------------------------
    def create_index(
        self,
        key: list[tuple[str, Any]],
        name: str,
        unique: bool = False,
        sparse: bool = False,
        partial: dict[str, Any] | None = None,
    ) -> None:
        """Build an index over the existing documents; raises DuplicateKey for a unique one."""
        idx = Index(name, list(key), unique, sparse, partial)
        for k, doc in self.docs.items():
            for ik in idx.keys_of(doc):
                bucket = idx.entries.setdefault(ik, {})
                if unique and bucket:
                    raise DuplicateKey(name, dict(key), _key_value(idx, doc))
                bucket[k] = None
        self.indexes[name] = idx

    def drop_index(self, name: str) -> None:
        self.indexes.pop(name, None)

    def _check_unique(self, doc: dict[str, Any], own: Hashable | None) -> None:
        for idx in self.indexes.values():
            if not idx.unique:
                continue
            for ik in idx.keys_of(doc):
                if any(other != own for other in idx.entries.get(ik, ())):
                    raise DuplicateKey(idx.name, dict(idx.key), _key_value(idx, doc))

    def _index(self, doc: dict[str, Any], k: Hashable) -> None:
        for idx in self.indexes.values():
            for ik in idx.keys_of(doc):
                idx.entries.setdefault(ik, {})[k] = None

    def _unindex(self, doc: dict[str, Any], k: Hashable) -> None:
        for idx in self.indexes.values():
            for ik in idx.keys_of(doc):
                bucket = idx.entries.get(ik)
                if bucket is not None:
                    bucket.pop(k, None)
                    if not bucket:
                        del idx.entries[ik]

    # ---- the few mongomock-style calls a transaction's snapshot makes -------------
    def index_information(self) -> dict[str, dict[str, Any]]:
        info: dict[str, dict[str, Any]] = {"_id_": {"key": [("_id", 1)]}}
        for name, idx in self.indexes.items():
            info[name] = {"key": list(idx.key), "unique": idx.unique, "sparse": idx.sparse}
        return info

    def insert_many(self, docs: Iterable[dict[str, Any]]) -> None:
        for doc in docs:
            self.insert(doc)

    def delete_one(self, query: dict[str, Any]) -> None:
        doc = self.find_one(query)
        if doc is not None:
            self.remove(doc)

    def replace_one(self, query: dict[str, Any], doc: dict[str, Any], upsert: bool = False) -> None:
        old = self.find_one(query)
        if old is not None:
            self.replace(old, doc)
        elif upsert:
            self.insert(doc)

    def copy(self) -> Collection:
        """A snapshot sharing the (immutable) documents: for transactions."""
        twin = Collection(self.db, self.name)
        twin.docs = dict(self.docs)
        for name, idx in self.indexes.items():
            twin.indexes[name] = Index(
                name,
                idx.key,
                idx.unique,
                idx.sparse,
                idx.partial,
                {ik: dict(b) for ik, b in idx.entries.items()},
            )
        return twin


def _key_value(idx: Index, doc: dict[str, Any]) -> dict[str, Any]:
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


class Database(dict[str, Collection]):
    """Collections of one database by name, created on first use."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __missing__(self, name: str) -> Collection:
        coll = self[name] = Collection(self.name, name)
        return coll


class Engine(dict[str, Database]):
    """Every database's collections: ``engine[db][coll]``."""

    def __missing__(self, name: str) -> Database:
        db = self[name] = Database(name)
        return db

    def drop(self, db: str, coll: str) -> None:
        if db in self:
            self[db].pop(coll, None)

    def names(self) -> Iterable[tuple[str, str]]:
        for db, colls in self.items():
            for name in colls:
                yield db, name
