"""Change streams: scopes, resuming, full documents, pre-images, events, tokens and errors."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import pytest
from bson import Binary, Int64, Timestamp
from pymongo import MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from tests.conformance._util import AWAIT_MS, changes, next_change, no_more_changes

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
EVENT_KEYS = {"_id", "operationType", "clusterTime", "wallTime", "ns", "documentKey"}


def op_types(events: list[Doc]) -> list[str]:
    return [e["operationType"] for e in events]


class TestScopes:
    """Collection, database and cluster change streams."""

    async def test_collection(self, db: Db) -> None:
        """A collection stream sees that collection's writes only."""
        async with await db["a"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["b"].insert_one({"_id": "other"})
            await db["a"].insert_one({"_id": "mine"})
            event = await next_change(stream)
            assert event["documentKey"] == {"_id": "mine"}
            await no_more_changes(stream)

    async def test_database(self, db: Db) -> None:
        """A database stream sees every collection of that database, in order."""
        async with await db.watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["a"].insert_one({"_id": 1})
            await db["b"].insert_one({"_id": 2})
            events = await changes(stream, 2)
        assert [e["ns"] for e in events] == [
            {"db": db.name, "coll": "a"},
            {"db": db.name, "coll": "b"},
        ]

    async def test_cluster(self, make_db: Any) -> None:
        """A cluster stream sees writes to every database."""
        one, two = await make_db(), await make_db()
        async with await one.client.watch(
            [{"$match": {"ns.db": {"$in": [one.name, two.name]}}}], max_await_time_ms=AWAIT_MS
        ) as stream:
            await one["c"].insert_one({"_id": 1})
            await two["c"].insert_one({"_id": 2})
            events = await changes(stream, 2)
        assert [e["ns"]["db"] for e in events] == [one.name, two.name]

    async def test_cluster_stream_needs_admin(self, db: Db) -> None:
        """allChangesForCluster outside the admin database fails with 72 InvalidOptions."""
        with pytest.raises(OperationFailure) as caught:
            await db.command(
                {
                    "aggregate": 1,
                    "pipeline": [{"$changeStream": {"allChangesForCluster": True}}],
                    "cursor": {},
                }
            )
        assert caught.value.code == 72

    async def test_admin_database_stream_refused(self, db: Db) -> None:
        """A plain database stream on admin fails with 73 InvalidNamespace."""
        with pytest.raises(OperationFailure) as caught:
            await db.client.admin.watch()
        assert caught.value.code == 73


class TestEvents:
    """The shape of each kind of change event."""

    async def test_insert(self, db: Db) -> None:
        """insert: fullDocument, documentKey, ns, clusterTime and wallTime."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_one({"_id": 1, "x": "y"})
            event = await next_change(stream)
        assert set(event) == EVENT_KEYS | {"fullDocument"}
        assert event["operationType"] == "insert"
        assert event["fullDocument"] == {"_id": 1, "x": "y"}
        assert event["documentKey"] == {"_id": 1}
        assert event["ns"] == {"db": db.name, "coll": "c"}
        assert isinstance(event["clusterTime"], Timestamp)
        assert isinstance(event["wallTime"], datetime)

    async def test_update_description(self, db: Db) -> None:
        """update: updatedFields, removedFields and truncatedArrays; no fullDocument."""
        await db["c"].insert_one({"_id": 1, "a": 1, "b": 2, "arr": [1, 2, 3]})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"a": 5, "n.m": 1}, "$unset": {"b": ""}})
            await db["c"].update_one({"_id": 1}, {"$pop": {"arr": 1}})
            first, second = await changes(stream, 2)
        assert set(first) == EVENT_KEYS | {"updateDescription"}
        assert first["operationType"] == "update"
        assert first["documentKey"] == {"_id": 1}
        assert first["updateDescription"] == {
            "updatedFields": {"a": 5, "n": {"m": 1}},
            "removedFields": ["b"],
            "truncatedArrays": [],
        }
        assert second["updateDescription"] == {
            "updatedFields": {},
            "removedFields": [],
            "truncatedArrays": [{"field": "arr", "newSize": 2}],
        }

    async def test_replace(self, db: Db) -> None:
        """replace: the new document as fullDocument, no updateDescription."""
        await db["c"].insert_one({"_id": 1, "a": 1})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].replace_one({"_id": 1}, {"b": 2})
            event = await next_change(stream)
        assert set(event) == EVENT_KEYS | {"fullDocument"}
        assert event["operationType"] == "replace"
        assert event["fullDocument"] == {"_id": 1, "b": 2}

    async def test_delete(self, db: Db) -> None:
        """delete: documentKey only."""
        await db["c"].insert_one({"_id": 1, "a": 1})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].delete_one({"_id": 1})
            event = await next_change(stream)
        assert set(event) == EVENT_KEYS
        assert event["operationType"] == "delete"
        assert event["documentKey"] == {"_id": 1}

    async def test_drop_then_invalidate(self, db: Db) -> None:
        """Dropping the watched collection gives drop, then invalidate, then the cursor closes."""
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].drop()
            drop, invalidate = await changes(stream, 2)
            assert drop["operationType"] == "drop"
            assert drop["ns"] == {"db": db.name, "coll": "c"}
            assert invalidate["operationType"] == "invalidate"
            assert set(invalidate) == {"_id", "operationType", "clusterTime", "wallTime"}
            assert stream.alive is False

    async def test_rename_then_invalidate(self, db: Db) -> None:
        """Renaming the watched collection gives rename (with `to`), then invalidate."""
        await db["old"].insert_one({"_id": 1})
        async with await db["old"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["old"].rename("new")
            rename, invalidate = await changes(stream, 2)
            assert rename["operationType"] == "rename"
            assert rename["ns"] == {"db": db.name, "coll": "old"}
            assert rename["to"] == {"db": db.name, "coll": "new"}
            assert invalidate["operationType"] == "invalidate"
            assert stream.alive is False

    async def test_drop_database(self, make_db: Any) -> None:
        """Dropping a watched database gives drop per collection, dropDatabase, invalidate."""
        db = await make_db()
        await db["a"].insert_one({})
        await db["b"].insert_one({})
        async with await db.watch(max_await_time_ms=AWAIT_MS) as stream:
            await db.client.drop_database(db.name)
            events = await changes(stream, 4)
            assert sorted(e["ns"]["coll"] for e in events[:2]) == ["a", "b"]
            assert op_types(events) == ["drop", "drop", "dropDatabase", "invalidate"]
            assert events[2]["ns"] == {"db": db.name}
            assert stream.alive is False

    async def test_database_stream_survives_collection_drop(self, db: Db) -> None:
        """A database stream reports a collection's drop without invalidating."""
        await db["a"].insert_one({})
        async with await db.watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["a"].drop()
            await db["b"].insert_one({"_id": 1})
            events = await changes(stream, 2)
            assert op_types(events) == ["drop", "insert"]
            assert stream.alive is True


class TestTokens:
    """Resume tokens and the post-batch resume token."""

    async def test_token_shape_and_order(self, db: Db) -> None:
        """Each event's _id is {_data: hex string}; successive tokens sort strictly upwards."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_many([{"_id": i} for i in range(5)])
            await db["c"].update_one({"_id": 0}, {"$set": {"x": 1}})
            events = await changes(stream, 6)
        tokens = [e["_id"] for e in events]
        for token in tokens:
            assert list(token) == ["_data"]
            assert isinstance(token["_data"], str)
            int(token["_data"], 16)
        data = [t["_data"] for t in tokens]
        assert data == sorted(data)
        assert len(set(data)) == 6

    async def test_resume_token_follows_events(self, db: Db) -> None:
        """Mid-batch, the stream's resume token is the last returned event's _id."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_many([{"_id": 1}, {"_id": 2}])
            event = await next_change(stream)
            assert stream.resume_token == event["_id"]
            last = await next_change(stream)
            assert stream.resume_token is not None
            assert stream.resume_token["_data"] >= last["_id"]["_data"]

    async def test_post_batch_token_advances_when_idle(self, db: Db) -> None:
        """Empty batches still move the resume token forward as other writes happen."""
        async with await db["watched"].watch(max_await_time_ms=AWAIT_MS) as stream:
            assert await stream.try_next() is None
            before = stream.resume_token
            assert before is not None
            await db["elsewhere"].insert_many([{"i": i} for i in range(3)])
            after: Any = before
            for _ in range(20):
                assert await stream.try_next() is None
                after = stream.resume_token
                if after != before:
                    break
            assert after is not None
            assert after["_data"] > before["_data"]

    async def test_post_batch_token_on_open(self, db: Db) -> None:
        """The aggregate reply's cursor carries a postBatchResumeToken."""
        reply = await db.command(
            {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}}
        )
        cursor = reply["cursor"]
        assert cursor["firstBatch"] == []
        assert list(cursor["postBatchResumeToken"]) == ["_data"]
        await db.command({"killCursors": "c", "cursors": [cursor["id"]]})


class TestResume:
    """resumeAfter, startAfter and startAtOperationTime."""

    async def test_resume_after(self, db: Db) -> None:
        """resumeAfter an event's token delivers exactly the events after it."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_many([{"_id": i} for i in range(3)])
            first = await next_change(stream)
        async with await db["c"].watch(
            resume_after=first["_id"], max_await_time_ms=AWAIT_MS
        ) as resumed:
            events = await changes(resumed, 2)
            await no_more_changes(resumed, rounds=1)
        assert [e["documentKey"]["_id"] for e in events] == [1, 2]

    async def test_start_at_operation_time(self, db: Db) -> None:
        """startAtOperationTime includes the write made at that time."""
        client = db.client
        await db["c"].insert_one({"_id": "before"})
        async with client.start_session() as session:
            await db["c"].insert_one({"_id": "at"}, session=session)
            at = session.operation_time
        await db["c"].insert_one({"_id": "after"})
        assert at is not None
        async with await db["c"].watch(
            start_at_operation_time=at, max_await_time_ms=AWAIT_MS
        ) as stream:
            events = await changes(stream, 2)
        assert [e["documentKey"]["_id"] for e in events] == ["at", "after"]
        assert events[0]["clusterTime"] == at

    async def test_start_after_invalidate(self, db: Db) -> None:
        """startAfter an invalidate token opens a stream on the re-created collection."""
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].drop()
            _, invalidate = await changes(stream, 2)
        await db["c"].insert_one({"_id": "again"})
        async with await db["c"].watch(
            start_after=invalidate["_id"], max_await_time_ms=AWAIT_MS
        ) as restarted:
            event = await next_change(restarted)
        assert event["operationType"] == "insert"
        assert event["documentKey"] == {"_id": "again"}

    async def test_resume_after_invalidate_refused(self, db: Db) -> None:
        """resumeAfter an invalidate token fails with 260 InvalidResumeToken."""
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].drop()
            _, invalidate = await changes(stream, 2)
        with pytest.raises(OperationFailure) as caught:
            async with await db["c"].watch(resume_after=invalidate["_id"]) as again:
                await again.try_next()
        assert caught.value.code == 260
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "InvalidResumeToken"


class TestFullDocument:
    """fullDocument: default, updateLookup, whenAvailable and required."""

    async def test_update_lookup_reads_current(self, db: Db) -> None:
        """updateLookup gives the document as it is when the event is read."""
        await db["c"].insert_one({"_id": 1, "n": 0})
        async with await db["c"].watch(
            full_document="updateLookup", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"n": 1}})
            await db["c"].update_one({"_id": 1}, {"$set": {"n": 2}})
            first = await next_change(stream)
        assert first["updateDescription"]["updatedFields"] == {"n": 1}
        assert first["fullDocument"] == {"_id": 1, "n": 2}

    async def test_update_lookup_of_deleted_is_null(self, db: Db) -> None:
        """updateLookup of a document deleted since gives fullDocument null."""
        await db["c"].insert_one({"_id": 1, "n": 0})
        async with await db["c"].watch(
            full_document="updateLookup", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"n": 1}})
            await db["c"].delete_one({"_id": 1})
            update = await next_change(stream)
        assert update["operationType"] == "update"
        assert update["fullDocument"] is None

    async def test_when_available_uses_post_image(self, db: Db) -> None:
        """whenAvailable with post-images recorded gives the document right after the change."""
        await db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
        await db["c"].insert_one({"_id": 1, "n": 0})
        async with await db["c"].watch(
            full_document="whenAvailable", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"n": 1}})
            await db["c"].update_one({"_id": 1}, {"$set": {"n": 2}})
            first, second = await changes(stream, 2)
        assert first["fullDocument"] == {"_id": 1, "n": 1}
        assert second["fullDocument"] == {"_id": 1, "n": 2}

    async def test_when_available_without_images_is_null(self, db: Db) -> None:
        """whenAvailable without post-images gives fullDocument null on updates."""
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(
            full_document="whenAvailable", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"x": 1}})
            event = await next_change(stream)
        assert event["fullDocument"] is None

    async def test_required_with_images(self, db: Db) -> None:
        """required with post-images recorded gives the post-image."""
        await db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(
            full_document="required", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"x": 1}})
            event = await next_change(stream)
        assert event["fullDocument"] == {"_id": 1, "x": 1}

    async def test_required_without_images_fails(self, db: Db) -> None:
        """required without post-images fails with 47 NoMatchingDocument on the update."""
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(
            full_document="required", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"x": 1}})
            with pytest.raises(OperationFailure) as caught:
                await next_change(stream)
        assert caught.value.code == 47
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "NoMatchingDocument"


class TestPreImages:
    """fullDocumentBeforeChange with changeStreamPreAndPostImages."""

    async def test_when_available_with_images(self, db: Db) -> None:
        """whenAvailable gives the document before updates, replaces and deletes."""
        await db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
        await db["c"].insert_one({"_id": 1, "v": 0})
        async with await db["c"].watch(
            full_document_before_change="whenAvailable", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"v": 1}})
            await db["c"].replace_one({"_id": 1}, {"v": 2})
            await db["c"].delete_one({"_id": 1})
            events = await changes(stream, 3)
        assert op_types(events) == ["update", "replace", "delete"]
        assert [e["fullDocumentBeforeChange"] for e in events] == [
            {"_id": 1, "v": 0},
            {"_id": 1, "v": 1},
            {"_id": 1, "v": 2},
        ]

    async def test_enabled_by_coll_mod(self, db: Db) -> None:
        """collMod turns pre-image recording on for an existing collection."""
        await db["c"].insert_one({"_id": 1, "v": 0})
        await db.command({"collMod": "c", "changeStreamPreAndPostImages": {"enabled": True}})
        async with await db["c"].watch(
            full_document_before_change="required", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].update_one({"_id": 1}, {"$set": {"v": 1}})
            event = await next_change(stream)
        assert event["fullDocumentBeforeChange"] == {"_id": 1, "v": 0}

    async def test_when_available_without_images_is_null(self, db: Db) -> None:
        """whenAvailable without pre-images gives fullDocumentBeforeChange null."""
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(
            full_document_before_change="whenAvailable", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].delete_one({"_id": 1})
            event = await next_change(stream)
        assert event["fullDocumentBeforeChange"] is None

    async def test_off_has_no_field(self, db: Db) -> None:
        """off leaves fullDocumentBeforeChange out even when pre-images are recorded."""
        await db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(
            full_document_before_change="off", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].delete_one({"_id": 1})
            event = await next_change(stream)
        assert "fullDocumentBeforeChange" not in event

    async def test_required_without_images_fails(self, db: Db) -> None:
        """required without pre-images fails with 47 NoMatchingDocument."""
        await db["c"].insert_one({"_id": 1})
        async with await db["c"].watch(
            full_document_before_change="required", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].delete_one({"_id": 1})
            with pytest.raises(OperationFailure) as caught:
                await next_change(stream)
        assert caught.value.code == 47

    async def test_insert_has_null_pre_image(self, db: Db) -> None:
        """An insert has no before-image: fullDocumentBeforeChange is absent or null."""
        await db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
        async with await db["c"].watch(
            full_document_before_change="whenAvailable", max_await_time_ms=AWAIT_MS
        ) as stream:
            await db["c"].insert_one({"_id": 1})
            event = await next_change(stream)
        assert event.get("fullDocumentBeforeChange") is None


class TestExpandedEvents:
    """showExpandedEvents."""

    async def test_ddl_events_shown(self, db: Db) -> None:
        """showExpandedEvents adds create/createIndexes/dropIndexes and collectionUUID."""
        async with await db.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as stream:
            await db.create_collection("c")
            await db["c"].create_index("k")
            await db["c"].insert_one({"_id": 1, "k": 1})
            await db["c"].drop_index("k_1")
            events = await changes(stream, 4)
        assert op_types(events) == ["create", "createIndexes", "insert", "dropIndexes"]
        assert isinstance(events[2]["collectionUUID"], Binary)
        assert events[2]["collectionUUID"].subtype == 4
        assert events[1]["operationDescription"]["indexes"][0]["name"] == "k_1"

    async def test_ddl_events_hidden_by_default(self, db: Db) -> None:
        """Without showExpandedEvents, DDL other than drop/rename does not appear."""
        async with await db.watch(max_await_time_ms=AWAIT_MS) as stream:
            await db.create_collection("c")
            await db["c"].create_index("k")
            await db["c"].insert_one({"_id": 1})
            event = await next_change(stream)
            assert event["operationType"] == "insert"
            assert "collectionUUID" not in event
            await no_more_changes(stream, rounds=1)


class TestUserStages:
    """The user's own stages after $changeStream."""

    async def test_match(self, db: Db) -> None:
        """$match filters events on any field, including fullDocument."""
        pipeline = [{"$match": {"operationType": "insert", "fullDocument.k": 1}}]
        async with await db["c"].watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_many([{"_id": 1, "k": 0}, {"_id": 2, "k": 1}])
            await db["c"].update_one({"_id": 2}, {"$set": {"k": 1, "z": 1}})
            event = await next_change(stream)
            await no_more_changes(stream, rounds=1)
        assert event["documentKey"] == {"_id": 2}

    async def test_project(self, db: Db) -> None:
        """$project shapes the event; the _id (token) stays."""
        pipeline = [{"$project": {"operationType": 1, "documentKey": 1}}]
        async with await db["c"].watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_one({"_id": 1, "big": "x" * 100})
            event = await next_change(stream)
        assert set(event) == {"_id", "operationType", "documentKey"}

    async def test_projecting_out_id_is_fatal(self, db: Db) -> None:
        """Removing the token with $project fails with 280 ChangeStreamFatalError."""
        pipeline = [{"$project": {"_id": 0}}]
        async with await db["c"].watch(pipeline, max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_one({"_id": 1})
            with pytest.raises(OperationFailure) as caught:
                await next_change(stream)
        assert caught.value.code == 280
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "ChangeStreamFatalError"


class TestAwaitData:
    """awaitData getMores and maxTimeMS."""

    async def test_empty_wait_returns_nothing(self, db: Db) -> None:
        """A getMore with nothing to return answers an empty batch when maxTimeMS passes."""
        async with await db["c"].watch(max_await_time_ms=100) as stream:
            assert await stream.try_next() is None
            assert stream.alive is True

    async def test_write_wakes_waiting_get_more(self, db: Db) -> None:
        """A getMore waiting for up to 10 s returns as soon as a write lands."""
        async with await db["c"].watch(max_await_time_ms=10_000) as stream:
            waiting = asyncio.ensure_future(stream.try_next())
            await asyncio.sleep(0.2)  # let the getMore reach the server and start waiting
            await db["c"].insert_one({"_id": "wake"})
            # far below the 10 s wait: only a woken getMore finishes in time
            event = await asyncio.wait_for(waiting, timeout=5)
        assert event is not None
        assert event["documentKey"] == {"_id": "wake"}

    async def test_raw_get_more_reply(self, db: Db) -> None:
        """A change-stream getMore reply has nextBatch and a postBatchResumeToken."""
        opened = await db.command(
            {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}}
        )
        cursor_id = opened["cursor"]["id"]
        await db["c"].insert_one({"_id": 1})
        reply = await db.command({"getMore": cursor_id, "collection": "c", "maxTimeMS": 1000})
        batch = reply["cursor"]["nextBatch"]
        assert [e["documentKey"] for e in batch] == [{"_id": 1}]
        assert reply["cursor"]["postBatchResumeToken"]["_data"] >= batch[-1]["_id"]["_data"]
        await db.command({"killCursors": "c", "cursors": [cursor_id]})


class TestTransactions:
    """Writes made in a transaction."""

    async def test_events_at_commit(self, db: Db) -> None:
        """Transaction writes appear only at commit, sharing clusterTime, with lsid/txnNumber."""
        await db["c"].insert_one({"_id": 0})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            async with db.client.start_session() as session:
                await session.start_transaction()
                await db["c"].insert_one({"_id": 1}, session=session)
                await db["c"].update_one({"_id": 0}, {"$set": {"t": 1}}, session=session)
                assert await stream.try_next() is None
                await session.commit_transaction()
                lsid = session.session_id
            events = await changes(stream, 2)
        assert op_types(events) == ["insert", "update"]
        assert events[0]["clusterTime"] == events[1]["clusterTime"]
        for event in events:
            assert event["lsid"] == lsid
            assert isinstance(event["txnNumber"], Int64)
        assert events[0]["txnNumber"] == events[1]["txnNumber"]
        assert events[0]["_id"]["_data"] < events[1]["_id"]["_data"]

    async def test_aborted_writes_never_appear(self, db: Db) -> None:
        """An aborted transaction's writes produce no events."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            async with db.client.start_session() as session:
                await session.start_transaction()
                await db["c"].insert_one({"_id": "aborted"}, session=session)
                await session.abort_transaction()
            await db["c"].insert_one({"_id": "kept"})
            event = await next_change(stream)
        assert event["documentKey"] == {"_id": "kept"}


class TestSyncClient:
    """The synchronous MongoClient's change streams."""

    def test_watch_and_resume(self, sync_client: MongoClient[Doc]) -> None:
        """A sync stream reads events, and a second one resumes after the first event."""
        name = f"t_sync_{uuid.uuid4().hex[:8]}"
        coll = sync_client[name]["c"]
        try:
            with coll.watch(max_await_time_ms=AWAIT_MS) as stream:
                coll.insert_many([{"_id": 1}, {"_id": 2}])
                first = stream.next()
                assert first["documentKey"] == {"_id": 1}
            with coll.watch(resume_after=first["_id"], max_await_time_ms=AWAIT_MS) as resumed:
                assert resumed.next()["documentKey"] == {"_id": 2}
                assert resumed.try_next() is None
        finally:
            sync_client.drop_database(name)
