"""replSetStepDown on the one-member set: writes refused, re-election, streams resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, NotPrimaryError, OperationFailure

from tests.conformance._util import AWAIT_MS, next_change, no_more_changes

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
# The shortest step-down a one-member set honours; it is primary again soon after.
STEP_DOWN = {"replSetStepDown": 1, "secondaryCatchUpPeriodSecs": 0, "force": True}
ELECTION_TIMEOUT = 30.0


@pytest.fixture
async def direct(client: AsyncMongoClient[Doc]) -> AsyncIterator[AsyncMongoClient[Doc]]:
    """A client connected straight to the member, whatever its state; it never retries."""
    me = (await client.admin.command("hello"))["me"]
    host, port = me.rsplit(":", 1)
    c: AsyncMongoClient[Doc] = AsyncMongoClient(
        host,
        int(port),
        directConnection=True,
        retryWrites=False,
        retryReads=False,
        serverSelectionTimeoutMS=2000,
    )
    yield c
    # Leave the set writable for the next test whatever happened.
    await wait_for_primary(c)
    await c.close()


async def wait_for_primary(direct: AsyncMongoClient[Doc]) -> Doc:
    """Poll hello until the member is a writable primary again; return that hello."""
    deadline = asyncio.get_running_loop().time() + ELECTION_TIMEOUT
    while True:
        try:
            hello = await direct.admin.command("hello")
            if hello.get("isWritablePrimary"):
                return hello
        except (OperationFailure, AutoReconnect):  # the node is changing state
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the member did not become primary again")
        await asyncio.sleep(0.1)


async def step_down(direct: AsyncMongoClient[Doc]) -> None:
    """Force a one-second step-down."""
    reply = await direct.admin.command(STEP_DOWN)
    assert reply["ok"] == 1.0


class TestStepDown:
    """replSetStepDown."""

    async def test_unforced_step_down_refused(self, direct: AsyncMongoClient[Doc]) -> None:
        """Without force, a member with no electable secondary refuses: 262 ExceededTimeLimit."""
        with pytest.raises(OperationFailure) as caught:
            await direct.admin.command({"replSetStepDown": 1, "secondaryCatchUpPeriodSecs": 0})
        assert caught.value.code == 262
        assert (await direct.admin.command("hello"))["isWritablePrimary"] is True

    async def test_admin_only(self, direct: AsyncMongoClient[Doc], db: Db) -> None:
        """replSetStepDown outside the admin database fails with 13 Unauthorized."""
        with pytest.raises(OperationFailure) as caught:
            await direct[db.name].command(STEP_DOWN)
        assert caught.value.code == 13

    async def test_writes_refused_while_secondary(
        self, direct: AsyncMongoClient[Doc], db: Db
    ) -> None:
        """While stepped down, writes fail with 10107 NotWritablePrimary; afterwards they work."""
        await step_down(direct)
        hello = await direct.admin.command("hello")
        assert hello["isWritablePrimary"] is False
        assert hello["secondary"] is True
        with pytest.raises(NotPrimaryError) as caught:
            await direct[db.name]["c"].insert_one({"_id": "refused"})
        details = caught.value.details
        assert isinstance(details, dict)
        assert details["code"] == 10107
        assert details["codeName"] == "NotWritablePrimary"
        await wait_for_primary(direct)
        await direct[db.name]["c"].insert_one({"_id": "accepted"})
        assert [d async for d in db["c"].find()] == [{"_id": "accepted"}]

    async def test_election_id_increases(self, direct: AsyncMongoClient[Doc]) -> None:
        """A new election gives a greater electionId and a higher term."""
        before = await direct.admin.command("hello")
        term_before = (await direct.admin.command("replSetGetStatus"))["term"]
        await step_down(direct)
        after = await wait_for_primary(direct)
        term_after = (await direct.admin.command("replSetGetStatus"))["term"]
        assert isinstance(after["electionId"], ObjectId)
        assert after["electionId"] > before["electionId"]
        assert term_after > term_before

    async def test_change_stream_resumes(
        self, direct: AsyncMongoClient[Doc], client: AsyncMongoClient[Doc], db: Db
    ) -> None:
        """A change stream open across a step-down delivers every event once."""
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as stream:
            await db["c"].insert_one({"_id": 1})
            assert (await next_change(stream))["documentKey"] == {"_id": 1}
            await step_down(direct)
            await wait_for_primary(direct)
            await db["c"].insert_many([{"_id": 2}, {"_id": 3}])
            got = [(await next_change(stream))["documentKey"]["_id"] for _ in range(2)]
            await no_more_changes(stream, rounds=1)
        assert got == [2, 3]
