"""Sessions: retryable writes, transactions, snapshot isolation, conflicts, with_transaction."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Int64
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern

from tests.conformance._util import app_client, fail_command, fail_point

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


class TestRetryableWrites:
    """A write retried with the same lsid and txnNumber is applied once."""

    async def test_same_txn_number_applied_once(self, db: Db) -> None:
        """Sending one $inc twice with the same txnNumber increments once, replying alike."""
        await db["c"].insert_one({"_id": 1, "n": 0})
        cmd = {
            "update": "c",
            "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}],
            "txnNumber": Int64(7),
        }
        async with db.client.start_session() as session:
            first = await db.command(cmd, session=session)
            second = await db.command(cmd, session=session)
            assert (first["n"], first["nModified"]) == (1, 1)
            assert (second["n"], second["nModified"]) == (1, 1)
            assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 1}
            await db.command({**cmd, "txnNumber": Int64(8)}, session=session)
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 2}

    async def test_retried_insert_not_duplicated(self, db: Db) -> None:
        """A retried insert with the same txnNumber succeeds without a duplicate key error."""
        cmd = {"insert": "c", "documents": [{"_id": "once"}], "txnNumber": Int64(1)}
        async with db.client.start_session() as session:
            assert (await db.command(cmd, session=session))["n"] == 1
            assert (await db.command(cmd, session=session))["n"] == 1
        assert await db["c"].count_documents({}) == 1

    async def test_older_txn_number_refused(self, db: Db) -> None:
        """A txnNumber below the session's newest fails with 225 TransactionTooOld."""
        async with db.client.start_session() as session:
            await db.command(
                {"insert": "c", "documents": [{"_id": 1}], "txnNumber": Int64(5)}, session=session
            )
            with pytest.raises(OperationFailure) as caught:
                await db.command(
                    {"insert": "c", "documents": [{"_id": 2}], "txnNumber": Int64(4)},
                    session=session,
                )
        assert caught.value.code == 225
        assert await db["c"].count_documents({}) == 1

    async def test_driver_retries_after_write_concern_error(self, mongo_uri: str, db: Db) -> None:
        """A write answered with a retryable writeConcernError is retried and applied once."""
        await db["c"].insert_one({"_id": 1, "n": 0})
        async with app_client(mongo_uri, "retry-wce") as (client, commands):
            spec = fail_command(
                {"times": 1},
                failCommands=["update"],
                appName="retry-wce",
                # 64 rather than a state-change code such as 91, which would make the driver
                # wait for a fresh topology check before retrying
                writeConcernError={
                    "code": 64,
                    "errmsg": "waiting for replication timed out",
                    "errorLabels": ["RetryableWriteError"],
                },
            )
            async with fail_point(client, spec):
                await client[db.name]["c"].update_one({"_id": 1}, {"$inc": {"n": 1}})
            assert commands.count("update") == 2
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 1}

    async def test_driver_retries_after_closed_connection(self, mongo_uri: str, db: Db) -> None:
        """An insert whose connection is closed is retried on a new one and written once."""
        async with app_client(mongo_uri, "retry-close") as (client, commands):
            spec = fail_command(
                {"times": 1}, failCommands=["insert"], appName="retry-close", closeConnection=True
            )
            async with fail_point(client, spec):
                await client[db.name]["c"].insert_one({"_id": "x"})
            assert commands.count("insert") == 2
        assert await db["c"].count_documents({}) == 1


class TestTransactions:
    """startTransaction, commit and abort."""

    async def test_commit(self, db: Db) -> None:
        """Committed writes become visible together."""
        async with db.client.start_session() as session:
            await session.start_transaction()
            await db["c"].insert_one({"_id": 1}, session=session)
            await db["c"].insert_one({"_id": 2}, session=session)
            assert await db["c"].count_documents({}) == 0
            await session.commit_transaction()
        assert await db["c"].count_documents({}) == 2

    async def test_abort(self, db: Db) -> None:
        """Aborted writes are discarded."""
        await db["c"].insert_one({"_id": 0, "v": 0})
        async with db.client.start_session() as session:
            await session.start_transaction()
            await db["c"].insert_one({"_id": 1}, session=session)
            await db["c"].update_one({"_id": 0}, {"$set": {"v": 1}}, session=session)
            await session.abort_transaction()
        assert [d async for d in db["c"].find()] == [{"_id": 0, "v": 0}]

    async def test_reads_own_writes(self, db: Db) -> None:
        """A transaction reads its own uncommitted writes."""
        async with db.client.start_session() as session:
            await session.start_transaction()
            await db["c"].insert_one({"_id": 1, "v": "mine"}, session=session)
            assert await db["c"].find_one({"_id": 1}, session=session) == {"_id": 1, "v": "mine"}
            await session.abort_transaction()

    async def test_commit_retried_is_idempotent(self, db: Db) -> None:
        """Committing an already committed transaction again succeeds and changes nothing."""
        async with db.client.start_session() as session:
            await session.start_transaction()
            await db["c"].update_one({"_id": 1}, {"$inc": {"n": 1}}, upsert=True, session=session)
            await session.commit_transaction()
            await session.commit_transaction()
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 1}

    async def test_raw_commit_twice(self, db: Db) -> None:
        """A raw commitTransaction sent twice for one txnNumber answers ok both times."""
        await db.create_collection("c")
        async with db.client.start_session() as session:
            txn = {"lsid": session.session_id, "txnNumber": Int64(3), "autocommit": False}
            await db.command(
                {"insert": "c", "documents": [{"_id": 1}], "startTransaction": True, **txn},
                session=session,
            )
            for _ in range(2):
                reply = await db.client.admin.command(
                    {"commitTransaction": 1, **txn}, session=session
                )
                assert reply["ok"] == 1.0
        assert await db["c"].count_documents({}) == 1

    async def test_commit_unknown_transaction(self, db: Db) -> None:
        """Committing a transaction never started fails with 251 NoSuchTransaction."""
        async with db.client.start_session() as session:
            with pytest.raises(OperationFailure) as caught:
                await db.client.admin.command(
                    {"commitTransaction": 1, "txnNumber": Int64(42), "autocommit": False},
                    session=session,
                )
        assert caught.value.code == 251
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "NoSuchTransaction"


class TestIsolation:
    """Snapshot isolation and write conflicts."""

    async def test_snapshot_does_not_see_later_writes(self, db: Db) -> None:
        """A transaction keeps reading its snapshot while an outside write commits."""
        await db["c"].insert_one({"_id": 1, "v": 0})
        async with db.client.start_session() as session:
            await session.start_transaction(read_concern=ReadConcern("snapshot"))
            assert await db["c"].find_one({"_id": 1}, session=session) == {"_id": 1, "v": 0}
            await db["c"].update_one({"_id": 1}, {"$set": {"v": 1}})
            await db["c"].insert_one({"_id": 2, "v": 2})
            assert await db["c"].find_one({"_id": 1}, session=session) == {"_id": 1, "v": 0}
            assert await db["c"].count_documents({}, session=session) == 1
            await session.commit_transaction()
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "v": 1}

    async def test_concurrent_transactions_conflict(self, db: Db) -> None:
        """A second transaction writing the same document fails with 112 WriteConflict."""
        await db["c"].insert_one({"_id": 1, "v": 0})
        client = db.client
        async with client.start_session() as one, client.start_session() as two:
            await one.start_transaction()
            await two.start_transaction()
            await db["c"].update_one({"_id": 1}, {"$set": {"v": "one"}}, session=one)
            with pytest.raises(OperationFailure) as caught:
                await db["c"].update_one({"_id": 1}, {"$set": {"v": "two"}}, session=two)
            await one.commit_transaction()
            if two.in_transaction:
                await two.abort_transaction()
        assert caught.value.code == 112
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "WriteConflict"
        assert caught.value.has_error_label("TransientTransactionError")
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "v": "one"}

    async def test_write_after_outside_change_conflicts(self, db: Db) -> None:
        """Writing a document changed outside since the snapshot fails with 112."""
        await db["c"].insert_one({"_id": 1, "v": 0})
        async with db.client.start_session() as session:
            await session.start_transaction()
            await db["c"].find_one({"_id": 1}, session=session)
            await db["c"].update_one({"_id": 1}, {"$set": {"v": "outside"}})
            with pytest.raises(OperationFailure) as caught:
                await db["c"].update_one({"_id": 1}, {"$set": {"v": "txn"}}, session=session)
            if session.in_transaction:
                await session.abort_transaction()
        assert caught.value.code == 112
        assert caught.value.has_error_label("TransientTransactionError")
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "v": "outside"}


class TestWithTransaction:
    """ClientSession.with_transaction, its retry loop driven through fail points."""

    async def test_commits(self, db: Db) -> None:
        """with_transaction runs the callback, commits and returns its result."""

        async def work(session: AsyncClientSession) -> str:
            await db["c"].insert_one({"_id": 1}, session=session)
            await db["c"].insert_one({"_id": 2}, session=session)
            return "done"

        async with db.client.start_session() as session:
            assert await session.with_transaction(work) == "done"
        assert await db["c"].count_documents({}) == 2

    async def test_retries_transient_error_in_callback(self, mongo_uri: str, db: Db) -> None:
        """A TransientTransactionError inside the callback reruns the whole transaction."""
        await db.create_collection("c")
        calls: list[int] = []
        async with app_client(mongo_uri, "wt-insert") as (client, commands):
            coll = client[db.name]["c"]

            async def work(session: AsyncClientSession) -> None:
                calls.append(1)
                await coll.insert_one({"_id": "a"}, session=session)

            spec = fail_command(
                {"times": 1},
                failCommands=["insert"],
                appName="wt-insert",
                errorCode=112,
                errorLabels=["TransientTransactionError"],
            )
            async with fail_point(client, spec), client.start_session() as session:
                await session.with_transaction(work)
            assert commands.count("commitTransaction") == 1
        assert len(calls) == 2
        assert [d async for d in db["c"].find()] == [{"_id": "a"}]

    async def test_retries_transient_error_on_commit(self, mongo_uri: str, db: Db) -> None:
        """A TransientTransactionError from commitTransaction reruns the whole transaction."""
        await db.create_collection("c")
        calls: list[int] = []
        async with app_client(mongo_uri, "wt-commit") as (client, commands):
            coll = client[db.name]["c"]

            async def work(session: AsyncClientSession) -> None:
                calls.append(1)
                await coll.update_one({"_id": 1}, {"$inc": {"n": 1}}, upsert=True, session=session)

            spec = fail_command(
                {"times": 1},
                failCommands=["commitTransaction"],
                appName="wt-commit",
                errorCode=112,
                errorLabels=["TransientTransactionError"],
            )
            async with fail_point(client, spec), client.start_session() as session:
                await session.with_transaction(work)
            assert commands.count("commitTransaction") == 2
        assert len(calls) == 2
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 1}

    async def test_retries_unknown_commit_result(self, mongo_uri: str, db: Db) -> None:
        """An UnknownTransactionCommitResult makes with_transaction retry only the commit."""
        await db.create_collection("c")
        calls: list[int] = []
        async with app_client(mongo_uri, "wt-unknown") as (client, commands):
            coll = client[db.name]["c"]

            async def work(session: AsyncClientSession) -> None:
                calls.append(1)
                await coll.insert_one({"_id": "u"}, session=session)

            spec = fail_command(
                {"times": 1},
                failCommands=["commitTransaction"],
                appName="wt-unknown",
                errorCode=64,
                errorLabels=["UnknownTransactionCommitResult"],
            )
            async with fail_point(client, spec), client.start_session() as session:
                await session.with_transaction(work)
            assert commands.count("commitTransaction") == 2
        assert len(calls) == 1
        assert await db["c"].count_documents({}) == 1
