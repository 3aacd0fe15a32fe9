"""onPrimaryTransactionalWrite: retryable writes that lose their reply are applied once.

By default the fail point lets a retryable write's statement commit and then closes the
connection, so the driver retries a write the server already applied;
failBeforeCommitExceptionCode fails the statement before it commits instead.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import Int64
from pymongo import AsyncMongoClient, InsertOne, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, PyMongoError

from tests.conformance._util import Commands, app_client, fail_point

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


def on_write(mode: Any, **data: Any) -> Doc:
    """An onPrimaryTransactionalWrite configureFailPoint command."""
    return {"configureFailPoint": "onPrimaryTransactionalWrite", "mode": mode, "data": data}


@pytest.fixture
async def retrying(mongo_uri: str) -> AsyncIterator[tuple[AsyncMongoClient[Doc], Commands]]:
    """A client with retryable writes on (the default) and a command recorder."""
    async with app_client(mongo_uri, f"retry-{uuid.uuid4().hex[:8]}") as pair:
        yield pair


class TestCommittedThenClosed:
    """The write commits, the reply is lost, the retry answers from the server's record."""

    async def test_insert(self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db) -> None:
        """insert_one is sent twice and written once."""
        client, commands = retrying
        async with fail_point(client, on_write({"times": 1})):
            result = await client[db.name]["c"].insert_one({"_id": 1})
        assert result.inserted_id == 1
        assert commands.count("insert") == 2
        assert await db["c"].count_documents({}) == 1

    async def test_update(self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db) -> None:
        """A retried $inc increments once and reports one modified document."""
        client, commands = retrying
        await db["c"].insert_one({"_id": 1, "n": 0})
        async with fail_point(client, on_write({"times": 1})):
            result = await client[db.name]["c"].update_one({"_id": 1}, {"$inc": {"n": 1}})
        assert (result.matched_count, result.modified_count) == (1, 1)
        assert commands.count("update") == 2
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 1}

    async def test_upsert(self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db) -> None:
        """A retried upsert reports the upserted id and inserts one document."""
        client, _ = retrying
        async with fail_point(client, on_write({"times": 1})):
            result = await client[db.name]["c"].update_one(
                {"_id": "u"}, {"$set": {"x": 1}}, upsert=True
            )
        assert result.upserted_id == "u"
        assert await db["c"].count_documents({}) == 1

    async def test_delete(self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db) -> None:
        """A retried delete_one removes one of two matching documents, not both."""
        client, _ = retrying
        await db["c"].insert_many([{"_id": 1, "k": "a"}, {"_id": 2, "k": "a"}])
        async with fail_point(client, on_write({"times": 1})):
            result = await client[db.name]["c"].delete_one({"k": "a"})
        assert result.deleted_count == 1
        assert await db["c"].count_documents({}) == 1

    async def test_find_and_modify(
        self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db
    ) -> None:
        """A retried find_one_and_update applies once and returns the first attempt's document."""
        client, commands = retrying
        await db["c"].insert_one({"_id": 1, "n": 0})
        async with fail_point(client, on_write({"times": 1})):
            doc = await client[db.name]["c"].find_one_and_update(
                {"_id": 1}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
            )
        assert doc == {"_id": 1, "n": 1}
        assert commands.count("findAndModify") == 2
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 1}

    async def test_bulk_statements(
        self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db
    ) -> None:
        """A bulk update whose second statement loses its reply applies each statement once."""
        client, commands = retrying
        await db["c"].insert_many([{"_id": 1, "n": 0}, {"_id": 2, "n": 0}])
        ops = [UpdateOne({"_id": 1}, {"$inc": {"n": 1}}), UpdateOne({"_id": 2}, {"$inc": {"n": 1}})]
        async with fail_point(client, on_write({"skip": 1})):
            result = await client[db.name]["c"].bulk_write(ops)
        assert result.modified_count == 2
        assert commands.count("update") == 2
        assert await db["c"].find({}, sort=[("_id", 1)]).to_list() == [
            {"_id": 1, "n": 1},
            {"_id": 2, "n": 1},
        ]

    async def test_mixed_bulk(
        self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db
    ) -> None:
        """An insert then an update in one bulk, both cut off once, are each applied once."""
        client, _ = retrying
        await db["c"].insert_one({"_id": 1, "n": 0})
        ops = [InsertOne({"_id": 2}), UpdateOne({"_id": 1}, {"$inc": {"n": 1}})]
        async with fail_point(client, on_write({"times": 2})):
            result = await client[db.name]["c"].bulk_write(ops)
        assert (result.inserted_count, result.modified_count) == (1, 1)
        assert await db["c"].find({}, sort=[("_id", 1)]).to_list() == [
            {"_id": 1, "n": 1},
            {"_id": 2},
        ]


class TestFailBeforeCommit:
    """failBeforeCommitExceptionCode: the statement fails and nothing is written."""

    async def test_retry_commits(
        self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db
    ) -> None:
        """The first attempt is dropped uncommitted; the retry writes the document."""
        client, commands = retrying
        async with fail_point(client, on_write({"times": 1}, failBeforeCommitExceptionCode=1)):
            await client[db.name]["c"].insert_one({"_id": 1})
        assert commands.count("insert") == 2
        assert await db["c"].count_documents({}) == 1

    async def test_never_committed(
        self, retrying: tuple[AsyncMongoClient[Doc], Commands], db: Db
    ) -> None:
        """Failing both attempts leaves the collection untouched and raises."""
        client, _ = retrying
        await db["c"].insert_one({"_id": 1, "n": 0})
        async with fail_point(client, on_write({"times": 2}, failBeforeCommitExceptionCode=1)):
            with pytest.raises(PyMongoError):
                await client[db.name]["c"].update_one({"_id": 1}, {"$inc": {"n": 1}})
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 0}

    async def test_statement_error_without_close(
        self, client: AsyncMongoClient[Doc], db: Db
    ) -> None:
        """With closeConnection false the failing statement is a write error at its index."""
        await db["c"].insert_many([{"_id": 1, "n": 0}, {"_id": 2, "n": 0}])
        cmd = {
            "update": "c",
            "updates": [
                {"q": {"_id": 1}, "u": {"$inc": {"n": 1}}},
                {"q": {"_id": 2}, "u": {"$inc": {"n": 1}}},
            ],
            # above any number the pooled server session may already have used
            "txnNumber": Int64(1000),
        }
        spec = on_write({"skip": 1}, closeConnection=False, failBeforeCommitExceptionCode=1)
        async with client.start_session() as s, fail_point(client, spec):
            reply = await db.command(cmd, session=s)
        assert reply["nModified"] == 1
        assert [(e["index"], e["code"]) for e in reply["writeErrors"]] == [(1, 1)]
        assert await db["c"].find_one({"_id": 2}) == {"_id": 2, "n": 0}


class TestRawRetry:
    """The same lsid + txnNumber after a lost reply, sent by hand."""

    async def test_same_reply_after_close(self, mongo_uri: str, db: Db) -> None:
        """The retried command answers as the lost reply would have, and applies nothing."""
        await db["c"].insert_one({"_id": 1, "n": 0})
        cmd = {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 5}}}]}
        cmd["txnNumber"] = Int64(9)
        app = app_client(mongo_uri, "raw-retry", retryWrites=False)
        async with app as (client, _), client.start_session() as s:
            async with fail_point(client, on_write({"times": 1})):
                with pytest.raises(AutoReconnect):
                    await client[db.name].command(cmd, session=s)
            reply = await client[db.name].command(cmd, session=s)
        assert (reply["n"], reply["nModified"]) == (1, 1)
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 5}
