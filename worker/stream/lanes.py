"""Keyed work for a fixed set of lane workers: per-document order by key → queue, events in
flight counted for backpressure, no task per event or per key."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Hashable
from operator import itemgetter
from typing import TYPE_CHECKING

from bson import ObjectId

if TYPE_CHECKING:
    from changestream_worker.events import ChangeEvent
    from changestream_worker.stream.position import Entry

#: one submitted event: (stream sequence number, event, its watermark entry)
Item = tuple[int, "ChangeEvent", "Entry"]
_seq_of = itemgetter(0)
_SIMPLE_IDS = (ObjectId, str, int)


def lane_of(event: ChangeEvent) -> Hashable:
    """The lane of an event: ``(coll, db, _id)`` for the usual ids, else ``lane_key``.

    A tuple costs a fraction of ``lane_key``'s text. Keys that Python deems equal (``1``
    and ``1.0``) share a lane: that only ever serialises more, never reorders.
    """
    raw = event.raw
    key = raw.get("documentKey")
    if type(key) is dict and len(key) == 1:
        value = key.get("_id")
        ns = raw.get("ns")
        if type(value) in _SIMPLE_IDS and type(ns) is dict:
            return (ns.get("coll"), ns.get("db"), value)
    return event.lane_key


class Lanes:
    """Queues events by document key for workers that take them in stream order.

    A key is in ``queues`` while it has queued events or a worker holds it (its queue is
    then possibly empty); it is in ``ready`` while it has queued events and no worker
    holds it. A worker that takes a key holds it until ``release``, so a document's events
    never run at the same time nor overtake each other.

    Args:
        limit: events in flight (queued or running) at most; ``put`` waits beyond it.
        batch: events a worker takes at once at most.
    """

    def __init__(self, limit: int, batch: int) -> None:
        self.limit, self.batch = max(1, limit), max(1, batch)
        self.queues: dict[Hashable, deque[Item]] = {}
        self.ready: deque[Hashable] = deque()
        self.in_flight = 0
        self.closed = False
        self._seq = 0
        self._sleepers: deque[asyncio.Future[None]] = deque()
        self._waking = 0  # sleepers woken that have not run yet
        self._room: list[asyncio.Future[None]] = []  # producers waiting for room
        self._idle: asyncio.Future[None] | None = None

    # ---- the producer ----------------------------------------------------------------
    async def wait_room(self) -> None:
        """Wait until fewer than ``limit`` events are in flight (or the lanes close)."""
        while self.in_flight >= self.limit and not self.closed:
            room = asyncio.get_running_loop().create_future()
            self._room.append(room)
            await room

    def put(self, event: ChangeEvent, entry: Entry) -> None:
        """Queue ``event`` behind the earlier events of its document."""
        self._seq += 1
        self.in_flight += 1
        key = lane_of(event)
        queue = self.queues.get(key)
        if queue is None:
            self.queues[key] = deque([(self._seq, event, entry)])
            self.ready.append(key)
            if self._sleepers and not self._waking:
                self._wake_one()
        else:  # queued or held: whoever holds the key picks it up in order
            queue.append((self._seq, event, entry))

    # ---- the workers -----------------------------------------------------------------
    async def wait_work(self) -> None:
        """Sleep until some key is ready or the lanes close."""
        while not self.ready and not self.closed:
            sleeper = asyncio.get_running_loop().create_future()
            self._sleepers.append(sleeper)
            try:
                await sleeper
            finally:
                if sleeper.done() and not sleeper.cancelled():
                    self._waking -= 1
                else:
                    with contextlib.suppress(ValueError):
                        self._sleepers.remove(sleeper)

    def take(self, keys: list[Hashable], items: list[Item]) -> None:
        """Take ready events into ``items`` (up to ``batch``), holding their keys in ``keys``;
        keys already held get their newly queued events first."""
        room = self.batch - len(items)
        queues = self.queues
        for key in keys:  # only while a batch waits for more (``max_wait``)
            queue = queues[key]
            while queue and room:
                items.append(queue.popleft())
                room -= 1
        ready = self.ready
        while ready and room:
            key = ready.popleft()
            keys.append(key)
            queue = queues[key]
            while queue and room:
                items.append(queue.popleft())
                room -= 1
        if len(keys) > 1:
            items.sort(key=_seq_of)  # a batch keeps stream order across its documents
        if ready and self._sleepers and not self._waking:
            self._wake_one()  # more work than this worker takes: hand it to another

    def release(self, keys: list[Hashable], finished: int) -> None:
        """A worker is done with ``keys``; ``finished`` events left flight."""
        queues, ready = self.queues, self.ready
        for key in keys:
            queue = queues.get(key)
            if queue:
                ready.append(key)
            elif queue is not None:
                del queues[key]
        if ready and self._sleepers and not self._waking:
            self._wake_one()
        self.finished(finished)

    def finished(self, count: int) -> None:
        """``count`` events left flight (completed or dropped)."""
        self.in_flight -= count
        if self._room and self.in_flight < self.limit:
            self._wake_producers()
        idle = self._idle
        if idle is not None and self.in_flight == 0:
            self._idle = None
            if not idle.done():
                idle.set_result(None)

    def drop_queued(self) -> list[Item]:
        """Remove every queued event (not the running ones) and return them."""
        dropped: list[Item] = []
        for queue in self.queues.values():
            dropped.extend(queue)
            queue.clear()
        for key in self.ready:  # not held by a worker: nobody will release these
            del self.queues[key]
        self.ready.clear()
        return dropped

    async def wait_idle(self) -> None:
        """Wait until nothing is in flight."""
        while self.in_flight:
            idle = self._idle
            if idle is None or idle.done():
                idle = self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(idle)

    def close(self) -> None:
        """Wake every sleeper and the producer; ``wait_work`` and ``wait_room`` return."""
        self.closed = True
        while self._sleepers:
            self._wake_one()
        self._wake_producers()

    def _wake_producers(self) -> None:
        waiting, self._room = self._room, []
        for room in waiting:
            if not room.done():
                room.set_result(None)

    def _wake_one(self) -> None:
        sleeper = self._sleepers.popleft()
        if not sleeper.done():
            self._waking += 1
            sleeper.set_result(None)
