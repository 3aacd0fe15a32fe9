"""Low-watermark tracking: the newest stream position whose predecessors have all completed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Timestamp

from changestream_worker.events import ChangeEvent


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


Mark = Position | ChangeEvent  # an event stands for its position until someone reads it


def position_of(mark: Mark) -> Position:
    """The position a mark stands for (an event's token and times, read on demand)."""
    if isinstance(mark, Position):
        return mark
    return Position(mark.token, mark.cluster_time, mark.wall_time)


def _data(mark: Mark | None) -> str | None:
    token = mark.token if mark is not None else None
    data = token.get("_data") if token else None
    return data if isinstance(data, str) else None


class Entry:
    """One unfinished entry; ``after`` is the newest finished mark between it and the next."""

    __slots__ = ("after", "next", "own", "prev")

    def __init__(self, own: Mark | None, prev: Entry | None) -> None:
        self.own = own
        self.after: Mark | None = None
        self.prev = prev
        self.next: Entry | None = None


class Watermark:
    """Tracks submitted entries in stream order and the low watermark over their completion.

    Only unfinished entries are kept (a doubly linked list), so memory is bounded by the
    number in flight, however long one slow entry holds the watermark back. Entries
    without a position (snapshot events have no resume token) complete without moving it.
    An entry's mark may be the event itself: its ``Position`` is built only when read.
    """

    def __init__(self) -> None:
        self._head: Entry | None = None
        self._tail: Entry | None = None
        self._pending = 0
        self._mark: Mark | None = None
        self._read: Position | None = None
        self._read_of: Mark | None = None

    def __len__(self) -> int:
        return self._pending

    @property
    def position(self) -> Position | None:
        """The newest position whose predecessors have all completed."""
        mark = self._mark
        if mark is None or isinstance(mark, Position):
            return mark
        if self._read_of is not mark:
            self._read, self._read_of = position_of(mark), mark
        return self._read

    def add(self, mark: Mark | None) -> Entry:
        """Append an unfinished entry at the end of the stream; returns its handle."""
        tail = self._tail
        entry = Entry(mark, tail)
        if tail is None:
            self._head = entry
        else:
            tail.next = entry
        self._tail = entry
        self._pending += 1
        return entry

    def add_done(self, position: Position) -> bool:
        """Append an already finished entry (a post-batch resume token, say).

        A token that sorts before the newest one added is ignored (``False``): a stale
        post-batch token must never move the watermark back over handled events. An equal
        one changes nothing (``True``).
        """
        tail = self._tail
        newest = self._mark if tail is None else (tail.after or tail.own)
        new, old = _data(position), _data(newest)
        if new is not None and old is not None and new <= old:
            return new == old
        if tail is None:
            self._mark = position
        else:
            tail.after = position
        return True

    def complete(self, entry: Entry) -> None:
        """Mark an entry finished; the watermark moves if it was the oldest unfinished one."""
        best = entry.after or entry.own
        prev, nxt = entry.prev, entry.next
        if prev is None:
            self._head = nxt
            if best is not None:
                self._mark = best
        else:
            prev.next = nxt
            if best is not None:
                prev.after = best
        if nxt is None:
            self._tail = prev
        else:
            nxt.prev = prev
        entry.prev = entry.next = None
        self._pending -= 1
