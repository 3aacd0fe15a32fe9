"""Error labels the server attaches by itself, and failCommand's errorLabels taken literally.

Commands go out through ``db.command`` with explicit session fields, so no driver retry or
driver-added label stands between the test and the server's reply. Injected retryable codes
are 262 (ExceededTimeLimit), which does not make the driver rediscover the topology.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from bson import Int64
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from tests.conformance._util import AWAIT_MS, app_client, fail_command, fail_point

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


def _app() -> str:
    return f"labels-{uuid.uuid4().hex[:8]}"


def _labels(exc: OperationFailure) -> list[str] | None:
    return (exc.details or {}).get("errorLabels")


async def _insert(db: Db, session: AsyncClientSession, **fields: Any) -> dict[str, Any]:
    cmd = {"insert": "c", "documents": [{"_id": uuid.uuid4().hex}], **fields}
    return await db.command(cmd, session=session)


def _txn(session: AsyncClientSession, number: int) -> dict[str, Any]:
    return {"lsid": session.session_id, "txnNumber": Int64(number), "autocommit": False}


class TestRetryableWriteLabel:
    """RetryableWriteError on retryable writes, and only there."""

    async def test_retryable_code_on_retryable_write(self, mongo_uri: str, db: Db) -> None:
        """ExceededTimeLimit (262) on a write with a txnNumber is labelled RetryableWriteError."""
        app = _app()
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command({"times": 1}, failCommands=["insert"], appName=app, errorCode=262)
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s, txnNumber=Int64(1000))
        assert caught.value.code == 262
        assert _labels(caught.value) == ["RetryableWriteError"]

    async def test_no_label_without_txn_number(self, mongo_uri: str, db: Db) -> None:
        """The same error on a write without a txnNumber carries no label."""
        app = _app()
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command({"times": 1}, failCommands=["insert"], appName=app, errorCode=262)
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s)
        assert _labels(caught.value) is None

    async def test_no_label_for_non_retryable_code(self, mongo_uri: str, db: Db) -> None:
        """A non-retryable code (BadValue) on a retryable write carries no label."""
        app = _app()
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command({"times": 1}, failCommands=["insert"], appName=app, errorCode=2)
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s, txnNumber=Int64(1000))
        assert _labels(caught.value) is None

    async def test_retryable_write_concern_error(self, mongo_uri: str, db: Db) -> None:
        """A retryable writeConcernError on a retryable write labels the (ok) reply."""
        app = _app()
        wce = {"code": 91, "errmsg": "Replication is being shut down"}
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command(
                {"times": 1}, failCommands=["insert"], appName=app, writeConcernError=wce
            )
            async with client.start_session() as s, fail_point(client, spec):
                reply = await _insert(client[db.name], s, txnNumber=Int64(1000))
        assert (reply["ok"], reply["n"], reply["writeConcernError"]["code"]) == (1.0, 1, 91)
        assert reply["errorLabels"] == ["RetryableWriteError"]

    async def test_non_retryable_write_concern_error(self, mongo_uri: str, db: Db) -> None:
        """A WriteConcernTimeout (64) writeConcernError gets no label."""
        app = _app()
        wce = {"code": 64, "errmsg": "waiting for replication timed out"}
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command(
                {"times": 1}, failCommands=["insert"], appName=app, writeConcernError=wce
            )
            async with client.start_session() as s, fail_point(client, spec):
                reply = await _insert(client[db.name], s, txnNumber=Int64(1000))
        assert reply["writeConcernError"]["code"] == 64
        assert "errorLabels" not in reply


class TestLiteralLabels:
    """failCommand's errorLabels replace the server's own labels."""

    async def test_empty_list_means_no_labels(self, mongo_uri: str, db: Db) -> None:
        """errorLabels: [] leaves a retryable error on a retryable write without any label."""
        app = _app()
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command(
                {"times": 1}, failCommands=["insert"], appName=app, errorCode=262, errorLabels=[]
            )
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s, txnNumber=Int64(1000))
        assert caught.value.details is not None
        assert "errorLabels" not in caught.value.details

    async def test_given_labels_only(self, mongo_uri: str, db: Db) -> None:
        """Given labels are returned exactly, without the server's RetryableWriteError."""
        app = _app()
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command(
                {"times": 1},
                failCommands=["insert"],
                appName=app,
                errorCode=262,
                errorLabels=["SomeLabel"],
            )
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s, txnNumber=Int64(1000))
        assert _labels(caught.value) == ["SomeLabel"]

    async def test_code_name(self, mongo_uri: str, db: Db) -> None:
        """An injected code answers with its codeName (24: LockTimeout)."""
        app = _app()
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command({"times": 1}, failCommands=["insert"], appName=app, errorCode=24)
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s)
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "LockTimeout"


class TestTransactionLabels:
    """TransientTransactionError inside transactions; RetryableWriteError on commit."""

    async def test_no_such_transaction_is_transient(self, mongo_uri: str, db: Db) -> None:
        """NoSuchTransaction (251) on a statement of a transaction is transient."""
        app = _app()
        await db.create_collection("c")
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command({"times": 1}, failCommands=["insert"], appName=app, errorCode=251)
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s, startTransaction=True, **_txn(s, 1))
        assert _labels(caught.value) == ["TransientTransactionError"]

    async def test_retryable_code_in_transaction_is_transient(self, mongo_uri: str, db: Db) -> None:
        """A retryable code on a transaction's statement is transient, not RetryableWriteError."""
        app = _app()
        await db.create_collection("c")
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command({"times": 1}, failCommands=["insert"], appName=app, errorCode=262)
            async with client.start_session() as s, fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await _insert(client[db.name], s, startTransaction=True, **_txn(s, 1))
        assert _labels(caught.value) == ["TransientTransactionError"]

    async def test_commit_retryable_code(self, mongo_uri: str, db: Db) -> None:
        """ExceededTimeLimit on commitTransaction is labelled RetryableWriteError."""
        failed = await _failed_commit(mongo_uri, db, error_code=262)
        assert _labels(failed) == ["RetryableWriteError"]

    async def test_commit_lock_timeout_is_transient(self, mongo_uri: str, db: Db) -> None:
        """LockTimeout (24) on commitTransaction is transient: the whole transaction may rerun."""
        failed = await _failed_commit(mongo_uri, db, error_code=24)
        assert _labels(failed) == ["TransientTransactionError"]

    async def test_commit_write_concern_error(self, mongo_uri: str, db: Db) -> None:
        """A retryable writeConcernError on commitTransaction labels it RetryableWriteError."""
        app = _app()
        await db.create_collection("c")
        wce = {"code": 91, "errmsg": "Replication is being shut down"}
        async with app_client(mongo_uri, app) as (client, _):
            spec = fail_command(
                {"times": 1}, failCommands=["commitTransaction"], appName=app, writeConcernError=wce
            )
            async with client.start_session() as s:
                await _insert(client[db.name], s, startTransaction=True, **_txn(s, 1))
                async with fail_point(client, spec):
                    reply = await client.admin.command(
                        {"commitTransaction": 1, **_txn(s, 1)}, session=s
                    )
        assert reply["errorLabels"] == ["RetryableWriteError"]
        assert await db["c"].count_documents({}) == 1


class TestChangeStreamLabels:
    """ResumableChangeStreamError belongs to change-stream cursors only."""

    async def test_change_stream_get_more(self, mongo_uri: str, db: Db) -> None:
        """HostUnreachable (6) on a change stream's getMore is ResumableChangeStreamError."""
        app = _app()
        await db.create_collection("c")
        async with app_client(mongo_uri, app) as (client, _):
            cdb = client[db.name]
            opened = await cdb.command(
                {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}}
            )
            spec = fail_command({"times": 1}, failCommands=["getMore"], appName=app, errorCode=6)
            async with fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await cdb.command(
                        {
                            "getMore": opened["cursor"]["id"],
                            "collection": "c",
                            "maxTimeMS": AWAIT_MS,
                        }
                    )
        assert _labels(caught.value) == ["ResumableChangeStreamError"]

    async def test_plain_cursor_get_more(self, mongo_uri: str, db: Db) -> None:
        """The same error on a find cursor's getMore carries no label."""
        app = _app()
        await db["c"].insert_many([{"_id": i} for i in range(3)])
        async with app_client(mongo_uri, app) as (client, _):
            cdb = client[db.name]
            opened = await cdb.command({"find": "c", "batchSize": 1})
            spec = fail_command({"times": 1}, failCommands=["getMore"], appName=app, errorCode=6)
            async with fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await cdb.command({"getMore": opened["cursor"]["id"], "collection": "c"})
        assert caught.value.code == 6
        assert _labels(caught.value) is None

    async def test_history_lost_is_non_resumable(self, mongo_uri: str, db: Db) -> None:
        """ChangeStreamHistoryLost (286) is labelled NonResumableChangeStreamError."""
        app = _app()
        await db.create_collection("c")
        async with app_client(mongo_uri, app) as (client, _):
            cdb = client[db.name]
            opened = await cdb.command(
                {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}}
            )
            spec = fail_command({"times": 1}, failCommands=["getMore"], appName=app, errorCode=286)
            async with fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await cdb.command(
                        {
                            "getMore": opened["cursor"]["id"],
                            "collection": "c",
                            "maxTimeMS": AWAIT_MS,
                        }
                    )
        assert _labels(caught.value) == ["NonResumableChangeStreamError"]


async def _failed_commit(mongo_uri: str, db: Db, error_code: int) -> OperationFailure:
    """The error of a commitTransaction that a fail point fails once with ``error_code``."""
    app = _app()
    await db.create_collection("c")
    async with app_client(mongo_uri, app) as (client, _):
        spec = fail_command(
            {"times": 1}, failCommands=["commitTransaction"], appName=app, errorCode=error_code
        )
        async with client.start_session() as s:
            await _insert(client[db.name], s, startTransaction=True, **_txn(s, 1))
            async with fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await client.admin.command({"commitTransaction": 1, **_txn(s, 1)}, session=s)
    return caught.value
