"""Fail points for tests: failCommand, failGetMoreAfterCursorCheckout, maxTimeAlwaysTimeOut."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    WriteConcernError,
)

from tests.conformance._util import (
    AWAIT_MS,
    app_client,
    changes,
    fail_command,
    fail_point,
    next_change,
    no_more_changes,
)

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
# Commands the test clients send with their reads and writes turned off for retries, so every
# injected failure reaches the test instead of being absorbed by the driver.
NO_RETRY: dict[str, Any] = {"retryReads": False, "retryWrites": False}


async def find_one(client: AsyncMongoClient[Doc], db: Db) -> Doc | None:
    return await client[db.name]["c"].find_one({})


class TestFailCommandModes:
    """failCommand modes: off, alwaysOn, {times}, {skip}."""

    async def test_always_on_until_off(self, mongo_uri: str, db: Db) -> None:
        """alwaysOn fails every matching command with the given code until turned off."""
        async with app_client(mongo_uri, "fp-always", **NO_RETRY) as (client, _):
            spec = fail_command("alwaysOn", failCommands=["find"], appName="fp-always", errorCode=2)
            async with fail_point(client, spec):
                for _ in range(3):
                    with pytest.raises(OperationFailure) as caught:
                        await find_one(client, db)
                    assert caught.value.code == 2
                    assert caught.value.details is not None
                    assert caught.value.details["codeName"] == "BadValue"
            assert await find_one(client, db) is None

    async def test_off(self, mongo_uri: str, db: Db) -> None:
        """mode off disables a fail point that was on."""
        async with app_client(mongo_uri, "fp-off", **NO_RETRY) as (client, _):
            spec = fail_command("alwaysOn", failCommands=["find"], appName="fp-off", errorCode=2)
            await client.admin.command(spec)
            reply = await client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
            assert reply["ok"] == 1.0
            assert await find_one(client, db) is None

    async def test_times(self, mongo_uri: str, db: Db) -> None:
        """{times: 2} fails the next two matching commands only."""
        async with app_client(mongo_uri, "fp-times", **NO_RETRY) as (client, _):
            spec = fail_command(
                {"times": 2}, failCommands=["find"], appName="fp-times", errorCode=2
            )
            async with fail_point(client, spec):
                outcomes = []
                for _ in range(4):
                    try:
                        await find_one(client, db)
                        outcomes.append("ok")
                    except OperationFailure as exc:
                        outcomes.append(str(exc.code))
            assert outcomes == ["2", "2", "ok", "ok"]

    async def test_skip(self, mongo_uri: str, db: Db) -> None:
        """{skip: 2} lets two matching commands through, then fails the rest."""
        async with app_client(mongo_uri, "fp-skip", **NO_RETRY) as (client, _):
            spec = fail_command({"skip": 2}, failCommands=["find"], appName="fp-skip", errorCode=2)
            async with fail_point(client, spec):
                outcomes = []
                for _ in range(4):
                    try:
                        await find_one(client, db)
                        outcomes.append("ok")
                    except OperationFailure as exc:
                        outcomes.append(str(exc.code))
            assert outcomes == ["ok", "ok", "2", "2"]

    async def test_only_listed_commands(self, mongo_uri: str, db: Db) -> None:
        """Commands not in failCommands pass through."""
        async with app_client(mongo_uri, "fp-list", **NO_RETRY) as (client, _):
            spec = fail_command("alwaysOn", failCommands=["insert"], appName="fp-list", errorCode=2)
            async with fail_point(client, spec):
                assert await find_one(client, db) is None
                with pytest.raises(OperationFailure):
                    await client[db.name]["c"].insert_one({})


class TestFailCommandData:
    """failCommand data: labels, closeConnection, blockConnection, writeConcernError, appName."""

    async def test_error_labels(self, mongo_uri: str, db: Db) -> None:
        """errorLabels are attached to the injected error."""
        async with app_client(mongo_uri, "fp-labels", **NO_RETRY) as (client, _):
            spec = fail_command(
                {"times": 1},
                failCommands=["insert"],
                appName="fp-labels",
                errorCode=112,
                errorLabels=["TransientTransactionError"],
            )
            async with fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await client[db.name]["c"].insert_one({"_id": 1})
        assert caught.value.code == 112
        assert caught.value.has_error_label("TransientTransactionError")
        assert await db["c"].count_documents({}) == 0

    async def test_close_connection(self, mongo_uri: str, db: Db) -> None:
        """closeConnection drops the connection without a reply; the next command works."""
        async with app_client(mongo_uri, "fp-close", **NO_RETRY) as (client, _):
            spec = fail_command(
                {"times": 1}, failCommands=["find"], appName="fp-close", closeConnection=True
            )
            async with fail_point(client, spec):
                with pytest.raises(AutoReconnect):
                    await find_one(client, db)
                assert await find_one(client, db) is None

    async def test_block_connection(self, mongo_uri: str, db: Db) -> None:
        """blockConnection delays the reply: beyond socketTimeoutMS the client gives up."""
        async with app_client(mongo_uri, "fp-block", socketTimeoutMS=100, **NO_RETRY) as (
            client,
            _,
        ):
            spec = fail_command(
                {"times": 1},
                failCommands=["find"],
                appName="fp-block",
                blockConnection=True,
                blockTimeMS=1000,
            )
            async with fail_point(client, spec):
                with pytest.raises(NetworkTimeout):
                    await find_one(client, db)

    async def test_block_then_answer(self, mongo_uri: str, db: Db) -> None:
        """A blocked command still answers correctly once the block ends."""
        await db["c"].insert_one({"_id": 1})
        async with app_client(mongo_uri, "fp-block2", **NO_RETRY) as (client, _):
            spec = fail_command(
                {"times": 1},
                failCommands=["find"],
                appName="fp-block2",
                blockConnection=True,
                blockTimeMS=150,
            )
            async with fail_point(client, spec):
                assert await find_one(client, db) == {"_id": 1}

    async def test_write_concern_error(self, mongo_uri: str, db: Db) -> None:
        """writeConcernError: the write is applied and the reply carries the error."""
        async with app_client(mongo_uri, "fp-wce", **NO_RETRY) as (client, _):
            spec = fail_command(
                {"times": 1},
                failCommands=["insert"],
                appName="fp-wce",
                writeConcernError={"code": 64, "errmsg": "waiting for replication timed out"},
            )
            async with fail_point(client, spec):
                with pytest.raises(WriteConcernError) as caught:
                    await client[db.name]["c"].insert_one({"_id": "applied"})
        assert caught.value.code == 64
        assert await db["c"].find_one() == {"_id": "applied"}

    async def test_app_name_filter(self, mongo_uri: str, db: Db) -> None:
        """With appName set, only clients of that name are failed."""
        async with (
            app_client(mongo_uri, "fp-target", **NO_RETRY) as (target, _),
            app_client(mongo_uri, "fp-bystander", **NO_RETRY) as (bystander, _),
        ):
            spec = fail_command("alwaysOn", failCommands=["find"], appName="fp-target", errorCode=2)
            async with fail_point(target, spec):
                assert await find_one(bystander, db) is None
                with pytest.raises(OperationFailure):
                    await find_one(target, db)


class TestFailGetMore:
    """failGetMoreAfterCursorCheckout."""

    async def test_plain_cursor(self, client: AsyncMongoClient[Doc], db: Db) -> None:
        """The next getMore fails with the configured errorCode."""
        await db["c"].insert_many([{"_id": i} for i in range(3)])
        first = await db.command({"find": "c", "batchSize": 1})
        spec = {
            "configureFailPoint": "failGetMoreAfterCursorCheckout",
            "mode": {"times": 1},
            "data": {"errorCode": 2},
        }
        async with fail_point(client, spec):
            with pytest.raises(OperationFailure) as caught:
                await db.command({"getMore": first["cursor"]["id"], "collection": "c"})
        assert caught.value.code == 2

    async def test_change_stream_resumes(self, client: AsyncMongoClient[Doc], db: Db) -> None:
        """A HostUnreachable (6) getMore error is resumable: the stream resumes, losing nothing."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_one({"_id": 1})
            assert (await next_change(stream))["documentKey"] == {"_id": 1}
            spec = {
                "configureFailPoint": "failGetMoreAfterCursorCheckout",
                "mode": {"times": 1},
                "data": {"errorCode": 6},
            }
            async with fail_point(client, spec):
                await db["c"].insert_one({"_id": 2})
                second = await next_change(stream)
            await db["c"].insert_one({"_id": 3})
            third = await next_change(stream)
        assert [second["documentKey"], third["documentKey"]] == [{"_id": 2}, {"_id": 3}]


class TestChangeStreamResume:
    """PyMongo's change-stream resume, driven through real sockets."""

    async def test_resume_after_connection_closed(self, mongo_uri: str, db: Db) -> None:
        """A getMore whose connection is closed makes PyMongo resume; no event is lost."""
        async with app_client(mongo_uri, "cs-close") as (client, commands):
            coll = client[db.name]["c"]
            async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
                await coll.insert_one({"_id": 1})
                assert (await next_change(stream))["documentKey"] == {"_id": 1}
                spec = fail_command(
                    {"times": 1}, failCommands=["getMore"], appName="cs-close", closeConnection=True
                )
                async with fail_point(client, spec):
                    await db["c"].insert_many([{"_id": 2}, {"_id": 3}])
                    events = await changes(stream, 2)
                await no_more_changes(stream, rounds=1)
            assert commands.count("aggregate") == 2
        assert [e["documentKey"]["_id"] for e in events] == [2, 3]

    async def test_resume_on_labelled_error(self, mongo_uri: str, db: Db) -> None:
        """A getMore error labelled ResumableChangeStreamError makes PyMongo resume."""
        async with app_client(mongo_uri, "cs-label") as (client, commands):
            coll = client[db.name]["c"]
            async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
                spec = fail_command(
                    {"times": 1},
                    failCommands=["getMore"],
                    appName="cs-label",
                    errorCode=280,
                    errorLabels=["ResumableChangeStreamError"],
                )
                async with fail_point(client, spec):
                    await db["c"].insert_one({"_id": 1})
                    event = await next_change(stream)
            assert commands.count("aggregate") == 2
        assert event["documentKey"] == {"_id": 1}

    async def test_unlabelled_error_not_resumed(self, mongo_uri: str, db: Db) -> None:
        """A getMore error without the resumable label reaches the application."""
        async with app_client(mongo_uri, "cs-fatal") as (client, commands):
            coll = client[db.name]["c"]
            async with await coll.watch(max_await_time_ms=AWAIT_MS) as stream:
                spec = fail_command(
                    {"times": 1}, failCommands=["getMore"], appName="cs-fatal", errorCode=280
                )
                async with fail_point(client, spec):
                    await db["c"].insert_one({"_id": 1})
                    with pytest.raises(OperationFailure) as caught:
                        await next_change(stream)
            assert commands.count("aggregate") == 1
        assert caught.value.code == 280


class TestFailCommandTargets:
    """failCommand on getMore, commitTransaction and abortTransaction."""

    async def test_get_more(self, mongo_uri: str, db: Db) -> None:
        """A find cursor's getMore fails with the injected code."""
        await db["c"].insert_many([{"_id": i} for i in range(3)])
        async with app_client(mongo_uri, "fp-getmore", **NO_RETRY) as (client, _):
            opened = await client[db.name].command({"find": "c", "batchSize": 1})
            spec = fail_command(
                {"times": 1}, failCommands=["getMore"], appName="fp-getmore", errorCode=2
            )
            async with fail_point(client, spec):
                with pytest.raises(OperationFailure) as caught:
                    await client[db.name].command(
                        {"getMore": opened["cursor"]["id"], "collection": "c"}
                    )
        assert caught.value.code == 2

    async def test_commit(self, mongo_uri: str, db: Db) -> None:
        """commitTransaction fails with the injected code and the writes stay invisible."""
        await db.create_collection("c")
        async with app_client(mongo_uri, "fp-commit", **NO_RETRY) as (client, _):
            spec = fail_command(
                {"times": 1}, failCommands=["commitTransaction"], appName="fp-commit", errorCode=2
            )
            async with client.start_session() as s:
                await s.start_transaction()
                await client[db.name]["c"].insert_one({"_id": 1}, session=s)
                async with fail_point(client, spec):
                    with pytest.raises(OperationFailure) as caught:
                        await s.commit_transaction()
        assert caught.value.code == 2
        assert await db["c"].count_documents({}) == 0

    async def test_abort(self, mongo_uri: str, db: Db) -> None:
        """A failed abortTransaction still leaves the transaction's writes unapplied."""
        await db.create_collection("c")
        async with app_client(mongo_uri, "fp-abort", **NO_RETRY) as (client, commands):
            spec = fail_command(
                {"times": 1}, failCommands=["abortTransaction"], appName="fp-abort", errorCode=2
            )
            async with client.start_session() as s:
                await s.start_transaction()
                await client[db.name]["c"].insert_one({"_id": 1}, session=s)
                async with fail_point(client, spec):
                    await s.abort_transaction()  # the driver swallows abort errors
            assert "abortTransaction" in commands.failures
        assert await db["c"].count_documents({}) == 0


class TestMaxTimeAlwaysTimeOut:
    """maxTimeAlwaysTimeOut: every command with a maxTimeMS runs out of time."""

    async def test_times_out_with_max_time(self, client: AsyncMongoClient[Doc], db: Db) -> None:
        """A find with maxTimeMS fails with MaxTimeMSExpired (50)."""
        spec = {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "alwaysOn"}
        async with fail_point(client, spec):
            with pytest.raises(ExecutionTimeout) as caught:
                await db["c"].find_one({}, max_time_ms=5000)
        assert caught.value.code == 50

    async def test_untouched_without_max_time(self, client: AsyncMongoClient[Doc], db: Db) -> None:
        """Commands without maxTimeMS are not affected."""
        await db["c"].insert_one({"_id": 1})
        spec = {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "alwaysOn"}
        async with fail_point(client, spec):
            assert await db["c"].find_one({}) == {"_id": 1}
