"""Fail points on the commands around the data: getMore, commit, abort; maxTimeAlwaysTimeOut."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ExecutionTimeout, OperationFailure

from tests.conformance._util import app_client, fail_command, fail_point

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
NO_RETRY: dict[str, Any] = {"retryReads": False, "retryWrites": False}


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
