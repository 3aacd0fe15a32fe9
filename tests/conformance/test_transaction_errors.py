"""Transactions where things go wrong: aborting errors, refused commands, DDL, late commands."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Int64, Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
# txnNumbers above any the pooled server sessions of the shared client may have used
N = 5000


def _txn(session: AsyncClientSession, number: int = N) -> dict[str, Any]:
    return {"lsid": session.session_id, "txnNumber": Int64(number), "autocommit": False}


async def _start(db: Db, session: AsyncClientSession, doc: Doc, number: int = N) -> None:
    cmd = {"insert": "c", "documents": [doc], "startTransaction": True, **_txn(session, number)}
    await db.command(cmd, session=session)


async def _admin(client: AsyncMongoClient[Doc], name: str, session: AsyncClientSession) -> Doc:
    return await client.admin.command({name: 1, **_txn(session)}, session=session)


class TestErrorsAbort:
    """An error inside a transaction aborts it, as on a real server."""

    async def test_duplicate_key_aborts(self, db: Db) -> None:
        """After a duplicate key error the transaction is gone: NoSuchTransaction, transient."""
        await db["c"].insert_one({"_id": "taken"})
        async with db.client.start_session() as s:
            await s.start_transaction()
            await db["c"].insert_one({"_id": "new"}, session=s)
            with pytest.raises(DuplicateKeyError):
                await db["c"].insert_one({"_id": "taken"}, session=s)
            with pytest.raises(OperationFailure) as caught:
                await db["c"].insert_one({"_id": "later"}, session=s)
            await s.abort_transaction()
        assert caught.value.code == 251
        assert caught.value.has_error_label("TransientTransactionError")
        assert await db["c"].distinct("_id") == ["taken"]

    async def test_commit_after_write_error_fails(self, db: Db) -> None:
        """Committing a transaction a write error aborted fails and writes nothing."""
        await db["c"].insert_one({"_id": "taken"})
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": "new"})
            reply = await db.command(
                {"insert": "c", "documents": [{"_id": "taken"}], **_txn(s)}, session=s
            )
            assert reply["writeErrors"][0]["code"] == 11000
            with pytest.raises(OperationFailure) as caught:
                await _admin(db.client, "commitTransaction", s)
        assert caught.value.code == 251
        assert await db["c"].count_documents({}) == 1

    async def test_command_error_aborts(self, db: Db) -> None:
        """A failing read (unknown query operator) aborts the transaction too."""
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": 1})
            with pytest.raises(OperationFailure):
                await db.command({"find": "c", "filter": {"$nope": 1}, **_txn(s)}, session=s)
            with pytest.raises(OperationFailure) as caught:
                await _admin(db.client, "commitTransaction", s)
        assert caught.value.code == 251
        assert await db["c"].count_documents({}) == 0

    async def test_with_transaction_duplicate_path(self, db: Db) -> None:
        """with_transaction whose callback meets a duplicate key leaves nothing behind."""
        await db["inbox"].insert_one({"_id": "event-1"})

        async def callback(s: AsyncClientSession) -> None:
            await db["orders"].insert_one({"_id": "order"}, session=s)
            await db["inbox"].insert_one({"_id": "event-1"}, session=s)

        async with db.client.start_session() as s:
            with pytest.raises(DuplicateKeyError):
                await s.with_transaction(callback)
        assert await db["orders"].count_documents({}) == 0


class TestRefused:
    """Commands a transaction may not run answer 263 OperationNotSupportedInTransaction."""

    @pytest.mark.parametrize(
        "cmd",
        [{"drop": "c"}, {"count": "c"}, {"dropDatabase": 1}, {"listCollections": 1}],
        ids=["drop", "count", "dropDatabase", "listCollections"],
    )
    async def test_not_in_transaction(self, db: Db, cmd: Doc) -> None:
        """The command is refused with 263 and the transaction is aborted."""
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": 1})
            with pytest.raises(OperationFailure) as caught:
                await db.command({**cmd, **_txn(s)}, session=s)
            with pytest.raises(OperationFailure) as after:
                await _admin(db.client, "commitTransaction", s)
        assert caught.value.code == 263
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "OperationNotSupportedInTransaction"
        assert after.value.code == 251
        assert await db["c"].count_documents({}) == 0


class TestDdlAtCommit:
    """create and createIndexes inside a transaction take effect when it commits."""

    async def test_create_collection(self, db: Db) -> None:
        """A collection created in a transaction is invisible outside it until commit."""
        async with db.client.start_session() as s:
            await db.command({"create": "fresh", "startTransaction": True, **_txn(s)}, session=s)
            assert "fresh" not in await db.list_collection_names()
            await _admin(db.client, "commitTransaction", s)
        assert "fresh" in await db.list_collection_names()

    async def test_create_aborted(self, db: Db) -> None:
        """An aborted transaction's collection is never created."""
        async with db.client.start_session() as s:
            await db.command({"create": "gone", "startTransaction": True, **_txn(s)}, session=s)
            await _admin(db.client, "abortTransaction", s)
        assert "gone" not in await db.list_collection_names()

    async def test_index_on_collection_created_in_transaction(self, db: Db) -> None:
        """An index on a collection created in the same transaction appears at commit."""
        async with db.client.start_session() as s:
            await db.command({"create": "fresh", "startTransaction": True, **_txn(s)}, session=s)
            spec = {"key": {"x": 1}, "name": "x_1"}
            await db.command({"createIndexes": "fresh", "indexes": [spec], **_txn(s)}, session=s)
            await db.command(
                {"insert": "fresh", "documents": [{"_id": 1, "x": 1}], **_txn(s)}, session=s
            )
            assert "fresh" not in await db.list_collection_names()
            await _admin(db.client, "commitTransaction", s)
        names = [i["name"] async for i in await db["fresh"].list_indexes()]
        assert names == ["_id_", "x_1"]
        assert await db["fresh"].find_one() == {"_id": 1, "x": 1}

    async def test_create_existing_refused(self, db: Db) -> None:
        """Creating an existing collection in a transaction fails with NamespaceExists."""
        await db.create_collection("c")
        async with db.client.start_session() as s:
            with pytest.raises(OperationFailure) as caught:
                await db.command({"create": "c", "startTransaction": True, **_txn(s)}, session=s)
        assert caught.value.code == 48


class TestAfterTheEnd:
    """Commit and abort of transactions that have already ended."""

    async def test_abort_of_aborted(self, db: Db) -> None:
        """Aborting an aborted transaction answers NoSuchTransaction."""
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": 1})
            await _admin(db.client, "abortTransaction", s)
            with pytest.raises(OperationFailure) as caught:
                await _admin(db.client, "abortTransaction", s)
        assert caught.value.code == 251

    async def test_commit_after_abort(self, db: Db) -> None:
        """Committing an aborted transaction answers NoSuchTransaction and writes nothing."""
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": 1})
            await _admin(db.client, "abortTransaction", s)
            with pytest.raises(OperationFailure) as caught:
                await _admin(db.client, "commitTransaction", s)
        assert caught.value.code == 251
        assert await db["c"].count_documents({}) == 0

    async def test_abort_after_commit(self, db: Db) -> None:
        """Aborting a committed transaction answers TransactionCommitted (256)."""
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": 1})
            await _admin(db.client, "commitTransaction", s)
            with pytest.raises(OperationFailure) as caught:
                await _admin(db.client, "abortTransaction", s)
        assert caught.value.code == 256
        assert await db["c"].count_documents({}) == 1

    async def test_statement_after_abort(self, db: Db) -> None:
        """A statement of an aborted transaction answers NoSuchTransaction."""
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": 1})
            await _admin(db.client, "abortTransaction", s)
            with pytest.raises(OperationFailure) as caught:
                await db.command({"find": "c", **_txn(s)}, session=s)
        assert caught.value.code == 251

    async def test_older_transaction_number(self, db: Db) -> None:
        """Starting a transaction below the session's newest number is TransactionTooOld."""
        async with db.client.start_session() as s:
            await _start(db, s, {"_id": 1}, number=N + 1)
            with pytest.raises(OperationFailure) as caught:
                await _start(db, s, {"_id": 2}, number=N)
        assert caught.value.code == 225


class TestSnapshotReads:
    """Snapshot reads outside transactions say which cluster time they read at."""

    async def test_find_reports_time(self, db: Db) -> None:
        """find with readConcern snapshot answers cursor.atClusterTime."""
        await db["c"].insert_one({"_id": 1})
        reply = await db.command({"find": "c", "readConcern": {"level": "snapshot"}})
        assert isinstance(reply["cursor"]["atClusterTime"], Timestamp)
        assert reply["cursor"]["firstBatch"] == [{"_id": 1}]

    async def test_given_time_echoed(self, db: Db) -> None:
        """With atClusterTime given, the reply reports that time."""
        reply = await db.command({"insert": "c", "documents": [{"_id": 1}]})
        at = reply["operationTime"]
        read = await db.command(
            {
                "aggregate": "c",
                "pipeline": [],
                "cursor": {},
                "readConcern": {"level": "snapshot", "atClusterTime": at},
            }
        )
        assert read["cursor"]["atClusterTime"] == at
