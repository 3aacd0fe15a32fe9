"""Server-side cursors: plain result lists and change streams, with getMore batching."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from changestream_worker.testing.emulator.changestream import ChangeStream
from changestream_worker.testing.emulator.errors import CommandError


@dataclass
class Cursor:
    """A cursor over a materialised result, or over a change stream."""

    id: int
    ns: str
    docs: list[dict[str, Any]] = field(default_factory=list)
    pos: int = 0
    stream: ChangeStream | None = None
    lsid: Any = None


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


def first_batch(
    cursors: Cursors,
    ns: str,
    docs: list[dict[str, Any]],
    batch_size: int | None,
    single: bool = False,
) -> dict[str, Any]:
    """Reply with the first batch; keep a cursor open only when more remain."""
    n = len(docs) if batch_size is None else batch_size
    batch = docs[:n]
    cid = 0
    if len(docs) > n and not single:
        cur = cursors.add(ns, docs)
        cur.pos = n
        cid = cur.id
    return {"cursor": {"firstBatch": batch, "id": cid, "ns": ns}, "ok": 1.0}
