"""Low-watermark tracking: the newest stream position whose predecessors have all completed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Timestamp


@dataclass(frozen=True, slots=True)
class Position:
    """A point in a change stream a watcher may resume from.

    Args:
        token: the resume token (``None`` for a position known only by its cluster time).
        cluster_time: the operation's cluster time, when known.
        wall_time: the server's wall-clock time of the operation, when known.
    """

    token: Mapping[str, Any] | None
    cluster_time: Timestamp | None = None
    wall_time: datetime | None = None


def token_cluster_time(token: Mapping[str, Any] | None) -> Timestamp | None:
    """Best-effort cluster time of a resume token, read from its ``_data`` key string.

    A token's hex ``_data`` starts with the KeyString type byte of a Timestamp (``82``),
    then 4 bytes of seconds and 4 of increment. Anything else yields ``None``.
    """
    data = token.get("_data") if token else None
    if not isinstance(data, str) or len(data) < 18 or data[:2] != "82":
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


class _Slot:
    """One unfinished entry; ``after`` is the newest finished position between it and the next."""

    __slots__ = ("after", "next", "own", "prev")

    def __init__(self, own: Position | None, prev: _Slot | None) -> None:
        self.own = own
        self.after: Position | None = None
        self.prev = prev
        self.next: _Slot | None = None


class Watermark:
    """Tracks submitted entries in stream order and the low watermark over their completion.

    Only unfinished entries are kept (a doubly linked list), so memory is bounded by the
    number in flight, however long one slow entry holds the watermark back. Entries
    without a position (snapshot events have no resume token) complete without moving it.
    """

    def __init__(self) -> None:
        self._head: _Slot | None = None
        self._tail: _Slot | None = None
        self._pending = 0
        self.position: Position | None = None

    def __len__(self) -> int:
        return self._pending

    def add(self, position: Position | None) -> _Slot:
        """Append an unfinished entry at the end of the stream; returns its handle."""
        slot = _Slot(position, self._tail)
        if self._tail is None:
            self._head = slot
        else:
            self._tail.next = slot
        self._tail = slot
        self._pending += 1
        return slot

    def add_done(self, position: Position) -> None:
        """Append an already finished entry (a post-batch resume token, say)."""
        if self._tail is None:
            self.position = position
        else:
            self._tail.after = position

    def complete(self, slot: _Slot) -> None:
        """Mark an entry finished; the watermark moves if it was the oldest unfinished one."""
        best = slot.after or slot.own
        prev, nxt = slot.prev, slot.next
        if prev is None:
            self._head = nxt
            if best is not None:
                self.position = best
        else:
            prev.next = nxt
            if best is not None:
                prev.after = best
        if nxt is None:
            self._tail = prev
        else:
            nxt.prev = prev
        slot.prev = slot.next = None
        self._pending -= 1
