"""Lanes: a key is held by one worker at a time, batches keep stream order, room is shared."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from changestream_worker.stream.lanes import Item, Lanes, lane_of
from changestream_worker.stream.position import Watermark
from changestream_worker.testing.factories import make_event
from tests.stream.test_dispatch import seq_of


def fill(lanes: Lanes, keys: list[int]) -> None:
    marks = Watermark()
    for seq, key in enumerate(keys):
        lanes.put(make_event(key=key, seq=seq), marks.add(None))


def seqs(items: list[Item]) -> list[int]:
    return [seq_of(item[1]) for item in items]


class TestLanes:
    def test_a_held_key_is_not_ready_until_released(self) -> None:
        """While one worker holds a document, its later events wait for the release."""
        lanes = Lanes(limit=10, batch=1)
        fill(lanes, [1, 1, 2])
        keys: list[Hashable] = []
        items: list[Item] = []
        lanes.take(keys, items)
        other_keys: list[Hashable] = []
        other: list[Item] = []
        lanes.take(other_keys, other)
        assert seqs(items) == [0] and seqs(other) == [2]  # key 1's second event waits
        lanes.release(keys, 1)
        again: list[Item] = []
        lanes.take([], again)
        assert seqs(again) == [1] and lanes.in_flight == 2

    def test_a_batch_across_documents_is_in_stream_order(self) -> None:
        """Events taken from several documents come back sorted by stream position."""
        lanes = Lanes(limit=10, batch=10)
        fill(lanes, [3, 1, 3, 2, 1])
        items: list[Item] = []
        lanes.take([], items)
        assert seqs(items) == [0, 1, 2, 3, 4]

    async def test_every_waiting_producer_gets_room(self) -> None:
        """Two producers waiting for room both proceed once events leave flight."""
        lanes = Lanes(limit=2, batch=1)
        fill(lanes, [1, 2])
        waiting = [asyncio.create_task(lanes.wait_room()) for _ in range(2)]
        await asyncio.sleep(0)
        assert not any(t.done() for t in waiting)
        lanes.finished(2)
        await asyncio.wait_for(asyncio.gather(*waiting), 1)

    def test_the_lane_of_a_usual_id_is_its_namespace_and_id(self) -> None:
        """Same document, same lane; another collection or id, another lane."""
        a, b = make_event(key=7, seq=1), make_event(key=7, seq=2)
        assert lane_of(a) == lane_of(b)
        assert lane_of(make_event(key=7, coll="other")) != lane_of(a)
        assert lane_of(make_event(key=8)) != lane_of(a)
        assert lane_of(make_event(key={"a": 1})) == make_event(key={"a": 1}).lane_key
