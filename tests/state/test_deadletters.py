"""Dead-letter store, replay, and the MongoDB checkpoint store's fencing, on the test bed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from changestream_worker.errors import PermanentError, SkipEvent
from changestream_worker.events import ChangeEvent
from changestream_worker.handler import Handler, HandlerContext, HandlerOptions
from changestream_worker.state import deadletters
from changestream_worker.state.checkpoints import Checkpoint, MongoCheckpointStore
from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.stream.replay import Resolved, replay
from changestream_worker.testing.factories import cluster_time_of, make_event, token_of

StateDb = AsyncDatabase[dict[str, Any]]


@pytest.fixture
async def state_db(mongo_uri: str) -> AsyncIterator[StateDb]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    name = f"state_{uuid.uuid4().hex[:8]}"
    yield client[name]
    await client.drop_database(name)
    await client.close()


class Retry:
    """A fast retry policy for replays."""

    attempts = 2
    initial_delay = 0.001
    max_delay = 0.002


class Outcome(Handler):
    """Succeeds, skips or fails every event, as told."""

    def __init__(self, mode: str) -> None:
        super().__init__(HandlerOptions())
        self.mode = mode
        self.seen: list[ChangeEvent] = []

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        self.seen.append(event)
        if self.mode == "fail":
            raise PermanentError("still broken")
        if self.mode == "skip":
            raise SkipEvent("gone")


def resolver(handlers: dict[str, Handler]) -> Any:
    none = cast(Any, None)

    async def resolve(watcher: str, handler: str) -> Resolved | None:
        h = handlers.get(handler)
        if h is None:
            return None
        ctx = HandlerContext(
            client=none,
            database=none,
            state_database=none,
            log=none,
            watcher=watcher,
            handler=handler,
        )
        return h, ctx, Retry()

    return resolve


async def park(
    store: DeadLetterStore, watcher: str, handler: str, seq: int, error: BaseException | None = None
) -> Any:
    now = datetime.now(UTC)
    event = make_event("update", key=seq, doc={"_id": seq, "a": {"b": seq}}, seq=seq)
    return await store.add(watcher, handler, event, error or ValueError(f"bad {seq}"), 3, now, now)


class TestDeadLetterStore:
    async def test_event_is_stored_exactly_with_its_failure(self, state_db: StateDb) -> None:
        """The change document comes back unchanged, with error, attempts and times."""
        store = DeadLetterStore(state_db)
        raw = dict(make_event("update", key=5, seq=12).raw)
        raw["updateDescription"] = {"updatedFields": {"a.b": 1, "$weird": 2}, "removedFields": []}
        first = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        oid = await store.add(
            "w", "h", ChangeEvent(raw), TimeoutError("slow relay"), 5, first, first
        )
        letter = await store.get(oid)
        assert letter is not None
        assert dict(letter.event.raw) == raw and letter.event.token == token_of(12)
        assert letter.error_type == "TimeoutError" and letter.error_message == "slow relay"
        assert letter.attempts == 5 and letter.first_failure == first
        assert letter.operation == "update" and letter.document_key == {"_id": 5}
        assert letter.event_id == token_of(12)["_data"]
        stored = await state_db.dead_letters.find_one({"_id": oid})
        assert stored is not None and stored["watcher"] == "w" and stored["handler"] == "h"

    async def test_list_count_purge_by_watcher(self, state_db: StateDb) -> None:
        """Listing is oldest first; counting and purging can be limited to one watcher."""
        store = DeadLetterStore(state_db)
        for seq in range(3):
            await park(store, "a", "h", seq)
        await park(store, "b", "h", 9)
        assert [dl.event.document_id for dl in await store.list("a")] == [0, 1, 2]
        assert await store.count() == 4 and await store.count("b") == 1
        assert await store.counts() == {"a": 3, "b": 1}
        assert await store.purge("a") == 3
        assert await store.count() == 1

    async def test_take_and_delete_remove_once(self, state_db: StateDb) -> None:
        """``take`` returns and removes a letter; a second removal finds nothing."""
        store = DeadLetterStore(state_db)
        oid = await park(store, "a", "h", 1)
        taken = await store.take(str(oid))
        assert taken is not None and taken.id == oid
        assert await store.take(oid) is None and not await store.delete(oid)

    def test_oversized_event_is_stored_without_its_documents(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An event too large to park whole keeps everything but the full documents."""
        monkeypatch.setattr(deadletters, "MAX_EVENT_BYTES", 200)
        event = make_event(key=1, doc={"_id": 1, "blob": "x" * 500}, seq=1)
        data, truncated = deadletters._encode_event(event)
        assert truncated and b"blob" not in data and b"documentKey" in data


class TestReplay:
    async def test_success_removes_failure_keeps_and_records(self, state_db: StateDb) -> None:
        """A handler that now works clears its letters; one that still fails keeps them,
        with the new error and more attempts; an unknown handler's letters stay."""
        store = DeadLetterStore(state_db)
        ok_id = await park(store, "w", "fixed", 1)
        bad_id = await park(store, "w", "broken", 2)
        gone_id = await park(store, "w", "removed", 3)
        fixed, broken = Outcome("ok"), Outcome("fail")
        report = await replay(store, resolver({"fixed": fixed, "broken": broken}), "w")
        assert report.replayed == [ok_id]
        assert [oid for oid, _ in report.failed] == [bad_id]
        assert [oid for oid, _ in report.unresolved] == [gone_id]
        assert await store.get(ok_id) is None and len(fixed.seen) == 1
        still = await store.get(bad_id)
        assert still is not None and still.attempts == 3 + 1
        assert still.error_type == "PermanentError" and still.error_message == "still broken"

    async def test_replay_one_by_id_and_skip_counts_as_done(self, state_db: StateDb) -> None:
        """``id`` limits the replay to one letter; ``SkipEvent`` removes it too."""
        store = DeadLetterStore(state_db)
        one = await park(store, "w", "h", 1)
        other = await park(store, "w", "h", 2)
        report = await replay(store, resolver({"h": Outcome("skip")}), id=str(one))
        assert report.replayed == [one] and await store.get(other) is not None
        report = await replay(store, resolver({"h": Outcome("ok")}), watcher="x", id=other)
        assert report.replayed == [] and await store.get(other) is not None


class TestMongoCheckpointStore:
    async def test_round_trip_with_majority_write_concern(self, state_db: StateDb) -> None:
        """A saved checkpoint loads back; the collection writes with w: majority."""
        store = MongoCheckpointStore(state_db)
        assert store.collection.write_concern.document == {"w": "majority"}
        wall = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
        cp = Checkpoint(
            token=token_of(4), cluster_time=cluster_time_of(4), wall_time=wall, events_handled=10
        )
        assert await store.save("w", cp)
        loaded = await store.load("w")
        assert loaded is not None and loaded.token == token_of(4)
        assert loaded.cluster_time == cluster_time_of(4) and loaded.wall_time == wall
        assert loaded.events_handled == 10 and loaded.updated is not None

    async def test_deposed_owner_cannot_move_the_checkpoint(self, state_db: StateDb) -> None:
        """Epoch fencing: once epoch 2 claimed or wrote, epoch 1's writes match nothing."""
        store = MongoCheckpointStore(state_db)
        assert await store.save("w", Checkpoint(token_of(1)), epoch=1)
        assert await store.claim("w", 2)
        assert not await store.save("w", Checkpoint(token_of(2)), epoch=1)
        assert not await store.save_snapshot_progress("w", {"done": True}, epoch=1)
        assert await store.save("w", Checkpoint(token_of(3)), epoch=2)
        loaded = await store.load("w")
        assert loaded is not None and loaded.token == token_of(3) and loaded.epoch == 2

    async def test_fenced_upsert_on_a_fresh_claim(self, state_db: StateDb) -> None:
        """A claim on a missing checkpoint creates it; an older epoch then cannot write."""
        store = MongoCheckpointStore(state_db)
        assert await store.claim("fresh", 4)
        assert not await store.save("fresh", Checkpoint(token_of(1)), epoch=3)
        assert await store.load("fresh") == Checkpoint(token=None, epoch=4)

    async def test_snapshot_progress_and_reset(self, state_db: StateDb) -> None:
        """Snapshot progress sits beside the position; a reset forgets it, keeps the epoch."""
        store = MongoCheckpointStore(state_db)
        at = Timestamp(1_700_000_000, 3)
        await store.save_snapshot_progress(
            "w", {"done": False, "last_id": 41, "start_at_operation_time": at}, epoch=2
        )
        await store.save("w", Checkpoint(token_of(1)), epoch=2)
        loaded = await store.load("w")
        assert loaded is not None and loaded.snapshot is not None
        assert loaded.snapshot["last_id"] == 41 and loaded.snapshot["start_at_operation_time"] == at
        await store.reset("w", Checkpoint(token=None, cluster_time=at))
        loaded = await store.load("w")
        assert loaded is not None and loaded.snapshot is None and loaded.token is None
        assert loaded.cluster_time == at and loaded.epoch == 2
        await store.reset("w")
        loaded = await store.load("w")
        assert loaded is not None and loaded.token is None and loaded.cluster_time is None
        await store.reset("nobody")
        assert await store.load("nobody") is None
