"""Idle checkpoints: once nothing is in flight the stored checkpoint reaches the last handled
event (or the post-batch token beyond it) within one interval; stale tokens never pull it back."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient

from changestream_worker.events import ChangeEvent
from changestream_worker.state.checkpoints import MemoryCheckpointStore
from changestream_worker.stream.checkpointer import Checkpointer
from changestream_worker.stream.position import Position, Watermark
from changestream_worker.testing.factories import make_event, token_of
from tests.stream.test_dispatch import Scripted, dispatcher, seq_of_token
from tests.support.harness import config_dict, eventually, running, settings_of, unique, watcher

INTERVAL = 0.2


async def within(check: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``check()`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise AssertionError(f"not within {seconds}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def stored_seq(store: MemoryCheckpointStore) -> int:
    doc = store.docs.get("w")
    return -1 if doc is None or not doc.get("token") else seq_of_token(doc["token"])


async def jitter(event: ChangeEvent, n: int) -> None:
    await asyncio.sleep(random.random() / 500)


class TestIdleCheckpoint:
    async def test_reaches_the_last_event_within_one_interval(self) -> None:
        """A burst completes out of order; with nothing in flight the store names the last
        event within one interval (two, for a loaded machine)."""
        d = dispatcher(Scripted(jitter), concurrency=8)
        store = MemoryCheckpointStore()
        cp = Checkpointer(store, "w", d, INTERVAL, 10_000)
        cp.start()
        for seq in range(1, 120):
            await d.submit(make_event(key=seq % 7, seq=seq))
        assert await d.drain(10)
        await within(lambda: stored_seq(store) == 119, 2 * INTERVAL)
        d.mark_idle(token_of(130))  # the post-batch token of an empty batch
        await within(lambda: stored_seq(store) == 130, 2 * INTERVAL)
        await cp.stop()
        await d.aclose()

    async def test_a_stale_post_batch_token_never_moves_it_back(self) -> None:
        """A post-batch token older than handled events is ignored: the checkpoint stays at
        the newest handled event instead of re-delivering the ones after the stale token."""
        d = dispatcher(Scripted(), concurrency=4)
        store = MemoryCheckpointStore()
        cp = Checkpointer(store, "w", d, INTERVAL, 10_000)
        for seq in range(1, 41):
            await d.submit(make_event(key=seq, seq=seq))
        assert await d.drain(5)
        d.mark_idle(token_of(23))  # 17 events before the end
        await cp.flush()
        assert stored_seq(store) == 40
        await d.aclose()


class TestIdleCheckpointAgainstTheStream:
    async def test_resuming_from_the_checkpoint_redelivers_nothing(self, mongo_uri: str) -> None:
        """After each of several bursts, once all is handled, a raw stream resumed from the
        stored checkpoint delivers no event (nothing would be handled twice on restart)."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
        db, state = unique("db"), unique("state")
        cfg = settings_of(
            config_dict(
                mongo_uri,
                db,
                state,
                [watcher()],
                checkpoint={"interval": "200ms", "max_events": 10_000},
            )
        )
        try:
            async with running(cfg):
                await eventually(
                    lambda: _exists(client[state].checkpoints.find_one({"_id": "items"})),
                    what="the starting point",
                )
                total = 0
                for burst in range(3):
                    await client[db].items.insert_many(
                        [{"burst": burst, "i": i} for i in range(150)]
                    )
                    total += 150

                    async def all_handled(n: int = total) -> bool:
                        return await client[state].handled.count_documents({}) >= n

                    await eventually(all_handled, what=f"{total} events handled")
                    await asyncio.sleep(3 * INTERVAL)  # one interval, and room for a busy host
                    cp = await client[state].checkpoints.find_one({"_id": "items"})
                    assert cp is not None and cp.get("token")
                    async with await client[db].items.watch(
                        resume_after=cp["token"], max_await_time_ms=200
                    ) as stream:
                        assert await stream.try_next() is None, f"burst {burst}: events after it"
        finally:
            await client.drop_database(db)
            await client.drop_database(state)
            await client.close()


async def _exists(found: Awaitable[Any]) -> bool:
    return await found is not None


class TestWatermarkStress:
    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(0, 99), min_size=1, max_size=200), st.integers(0, 2**16))
    def test_random_order_tokens_and_resumes(self, rolls: list[int], seed: int) -> None:
        """Random completions, post-batch tokens (some stale) and resumes from the
        watermark: it always equals the naive model, never goes back, and once nothing is
        unfinished it is the newest position seen."""
        rng = random.Random(seed)
        marks, resumed_at = Watermark(), -1
        entries: list[list[Any]] = []  # [seq, done, is_event] in stream order
        handles: dict[int, Any] = {}
        seq = 0
        for roll in rolls:
            if roll < 45:  # an event arrives
                seq += 1
                handles[len(entries)] = marks.add(Position(token_of(seq)))
                entries.append([seq, False, True])
            elif roll < 52:  # an empty batch: its post-batch token
                seq += 1
                assert marks.add_done(Position(token_of(seq)))
                entries.append([seq, True, False])
            elif roll < 55 and entries and entries[0][0] > 1:  # a stale post-batch token
                assert not marks.add_done(Position(token_of(rng.randrange(1, entries[0][0]))))
            elif roll < 60 and marks.position is not None:  # restart from the checkpoint
                resumed_at = seq_of_token(marks.position.token)
                # the new stream re-delivers the events after the checkpoint, done or not
                redo = [e[0] for e in entries if e[2] and e[0] > resumed_at]
                marks, handles, entries = Watermark(), {}, []
                for s in redo:
                    handles[len(entries)] = marks.add(Position(token_of(s)))
                    entries.append([s, False, True])
            elif handles:
                index = rng.choice(list(handles))
                marks.complete(handles.pop(index))
                entries[index][1] = True
            expected = None
            for s, done, _ in entries:
                if not done:
                    break
                expected = s
            got = marks.position
            assert (None if got is None else seq_of_token(got.token)) == expected
            assert expected is None or expected > resumed_at
        for index in list(handles):
            marks.complete(handles.pop(index))
        got = marks.position
        newest = entries[-1][0] if entries else None
        assert (None if got is None else seq_of_token(got.token)) == newest
