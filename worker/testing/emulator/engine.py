"""The emulator's document storage: collections keyed by ``_id`` with maintained indexes.

Documents are never changed in place once stored (a write stores a new dict), so readers may
hold on to them; matching uses mongomock's filter semantics, lookups by ``_id`` or by an
index's full key use hash maps instead of a scan.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import bson
from mongomock import filtering

from changestream_worker.testing.emulator.keys import Index, equalities, key_value, keyof


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
        # insertion order, for tailable cursors: a number per stored document
        self.seq = 0
        self.seq_of: dict[Hashable, int] = {}
        # capped collections: (max bytes, max documents or None) and the bytes held
        self.capped: tuple[int, int | None] | None = None
        self.capped_bytes = 0
        self.sizes: dict[Hashable, int] = {}
        # validator, validationLevel, validationAction
        self.validator: tuple[dict[str, Any], str, str] | None = None

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
        self.seq += 1
        self.seq_of[k] = self.seq
        if self.capped is not None:
            self._cap(k, doc)

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
        self.seq_of.pop(k, None)
        self.capped_bytes -= self.sizes.pop(k, 0)
        return True

    def _cap(self, k: Hashable, doc: dict[str, Any]) -> None:
        """Keep a capped collection within its size and count: the oldest documents go."""
        assert self.capped is not None
        size = len(bson.encode(doc))
        self.sizes[k] = size
        self.capped_bytes += size
        limit_bytes, limit_docs = self.capped
        while len(self.docs) > 1 and (
            self.capped_bytes > limit_bytes or (limit_docs and len(self.docs) > limit_docs)
        ):
            self.remove(next(iter(self.docs.values())))

    def after(self, seq: int) -> list[dict[str, Any]]:
        """Documents inserted after insertion number ``seq``, oldest first."""
        return [d for k, d in self.docs.items() if self.seq_of.get(k, 0) > seq]

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
                    raise DuplicateKey(name, dict(key), key_value(idx, doc))
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
                    raise DuplicateKey(idx.name, dict(idx.key), key_value(idx, doc))

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
