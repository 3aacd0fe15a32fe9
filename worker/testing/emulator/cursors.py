"""Server-side cursors: plain result lists and change streams, with getMore batching."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import bson

from changestream_worker.testing.emulator.changestream import ChangeStream
from changestream_worker.testing.emulator.errors import CommandError

DEFAULT_FIRST_BATCH = 101
MAX_BATCH_BYTES = 16 * 1024 * 1024


@dataclass
class Cursor:
    """A cursor over a materialised result, or over a change stream."""

    id: int
    ns: str
    docs: list[dict[str, Any]] = field(default_factory=list)
    pos: int = 0
    stream: ChangeStream | None = None
    lsid: Any = None
    tail: Tail | None = None


@dataclass
class Tail:
    """What a tailable cursor over a capped collection follows."""

    coll: Any
    query: dict[str, Any]
    seq: int
    await_data: bool


class Cursors:
    """Open cursors by id."""

    def __init__(self) -> None:
        self.open: dict[int, Cursor] = {}
        self._ids = itertools.count(1_000_001)

    def add(
        self,
        ns: str,
        docs: list[dict[str, Any]] | None = None,
        stream: ChangeStream | None = None,
        lsid: Any = None,
    ) -> Cursor:
        cur = Cursor(next(self._ids), ns, docs or [], stream=stream, lsid=lsid)
        self.open[cur.id] = cur
        return cur

    def get(self, cursor_id: int, ns: str) -> Cursor:
        cur = self.open.get(cursor_id)
        if cur is None:
            raise CommandError(43, f"cursor id {cursor_id} not found")
        if cur.ns != ns and not (cur.stream is not None and ns.endswith(".$cmd.aggregate")):
            raise CommandError(
                13,
                f"Requested getMore on namespace '{ns}', but cursor belongs to "
                f"a different namespace {cur.ns}",
            )
        return cur

    def kill(self, ids: list[int]) -> tuple[list[int], list[int]]:
        killed: list[int] = []
        missing: list[int] = []
        for cid in ids:
            (killed if self.open.pop(cid, None) is not None else missing).append(cid)
        return killed, missing


def _fit(docs: list[dict[str, Any]], start: int, count: int) -> int:
    """How many documents from ``start`` (at most ``count``, at least one) fit in a reply."""
    end = min(len(docs), start + count)
    total = 0
    for i in range(start, end):
        total += len(bson.encode(docs[i]))
        if total > MAX_BATCH_BYTES and i > start:
            return i - start
    return end - start


def first_batch(
    cursors: Cursors,
    ns: str,
    docs: list[dict[str, Any]],
    batch_size: int | None,
    single: bool = False,
    lsid: Any = None,
) -> dict[str, Any]:
    """Reply with the first batch (101 documents unless asked otherwise, as the server's
    default); keep a cursor open only when more remain."""
    n = DEFAULT_FIRST_BATCH if batch_size is None else batch_size
    if single and batch_size is None:
        n = len(docs)
    n = _fit(docs, 0, n)
    batch = docs[:n]
    cid = 0
    if len(docs) > n and not single:
        cur = cursors.add(ns, docs, lsid=lsid)
        cur.pos = n
        cid = cur.id
    return {"cursor": {"firstBatch": batch, "id": cid, "ns": ns}, "ok": 1.0}


def next_batch(cursors: Cursors, cur: Cursor, size: int | None) -> dict[str, Any]:
    """A getMore over a materialised result: the next ``size`` documents (or up to 16 MiB)."""
    n = _fit(cur.docs, cur.pos, len(cur.docs) if size is None else size)
    batch = cur.docs[cur.pos : cur.pos + n]
    cur.pos += n
    cid = cur.id if cur.pos < len(cur.docs) else 0
    if not cid:
        cursors.kill([cur.id])
    return {"cursor": {"nextBatch": batch, "id": cid, "ns": cur.ns}, "ok": 1.0}
