"""Oplog history loss, which only the emulator can cause on demand (`emulatorTruncateOplog`)."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Timestamp
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from tests.conformance._util import AWAIT_MS, changes, next_change

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]

pytestmark = pytest.mark.emulator_only


async def write_at(db: Db, doc: Doc) -> Timestamp:
    """Insert `doc` into db.c and return the write's cluster time."""
    async with db.client.start_session() as session:
        await db["c"].insert_one(doc, session=session)
        ts = session.operation_time
    assert ts is not None
    return ts


async def truncate_before(db: Db, ts: Timestamp) -> None:
    await db.client.admin.command({"emulatorTruncateOplog": 1, "before": ts})


class TestHistoryLost:
    """Resuming from before the oldest oplog entry."""

    async def test_resume_token_before_cut(self, db: Db) -> None:
        """resumeAfter a token whose event was discarded fails with 286 ChangeStreamHistoryLost."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await write_at(db, {"_id": "old"})
            old = await next_change(stream)
        cut = await write_at(db, {"_id": "new"})
        await truncate_before(db, cut)
        with pytest.raises(OperationFailure) as caught:
            async with await db["c"].watch(resume_after=old["_id"]) as resumed:
                await resumed.try_next()
        assert caught.value.code == 286
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "ChangeStreamHistoryLost"

    async def test_start_time_before_cut(self, db: Db) -> None:
        """startAtOperationTime before the oldest entry fails with 286."""
        old = await write_at(db, {"_id": "old"})
        cut = await write_at(db, {"_id": "new"})
        await truncate_before(db, cut)
        with pytest.raises(OperationFailure) as caught:
            async with await db["c"].watch(start_at_operation_time=old) as resumed:
                await resumed.try_next()
        assert caught.value.code == 286

    async def test_resume_at_cut_still_works(self, db: Db) -> None:
        """Resuming from the oldest kept entry still delivers it and what follows."""
        await write_at(db, {"_id": "old"})
        cut = await write_at(db, {"_id": "kept"})
        await write_at(db, {"_id": "later"})
        await truncate_before(db, cut)
        async with await db["c"].watch(
            start_at_operation_time=cut, max_await_time_ms=AWAIT_MS
        ) as stream:
            events = await changes(stream, 2)
        assert [e["documentKey"]["_id"] for e in events] == ["kept", "later"]

    async def test_first_oplog_entry_moves(self, db: Db) -> None:
        """After truncation, local.oplog.rs starts at the cut."""
        oplog = db.client.local["oplog.rs"]
        await write_at(db, {"_id": "old"})
        cut = await write_at(db, {"_id": "new"})
        await truncate_before(db, cut)
        first = await oplog.find_one(sort=[("$natural", 1)])
        assert first is not None
        assert first["ts"] >= cut
        assert await oplog.find_one({"ns": f"{db.name}.c", "o._id": "old"}) is None

    async def test_replica_set_status_after_cut(self, db: Db) -> None:
        """replSetGetStatus still reports optimes at or after the cut."""
        cut = await write_at(db, {"_id": "x"})
        await truncate_before(db, cut)
        optimes = (await db.client.admin.command("replSetGetStatus"))["optimes"]
        assert optimes["appliedOpTime"]["ts"] >= cut

    async def test_open_stream_unaffected_when_ahead(self, db: Db) -> None:
        """A stream positioned after the cut keeps delivering events."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            cut = await write_at(db, {"_id": 1})
            assert (await next_change(stream))["documentKey"] == {"_id": 1}
            await truncate_before(db, cut)
            await write_at(db, {"_id": 2})
            assert (await next_change(stream))["documentKey"] == {"_id": 2}
