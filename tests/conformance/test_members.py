"""An emulator with a secondary: reads that allow one go there, writes and plain reads do not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, ReadPreference
from pymongo.errors import InvalidOperation, NotPrimaryError

from changestream_worker.testing.emulator import ReplicaSetEmulator

Doc = dict[str, Any]
pytestmark = pytest.mark.emulator_only


@pytest.fixture
async def two_members() -> AsyncIterator[ReplicaSetEmulator]:
    """A replica set of a primary and one secondary, on free ports."""
    async with ReplicaSetEmulator(port=0, secondaries=1) as rs:
        yield rs


@pytest.fixture
async def rs_client(two_members: ReplicaSetEmulator) -> AsyncIterator[AsyncMongoClient[Doc]]:
    """A client of the two-member set."""
    client: AsyncMongoClient[Doc] = AsyncMongoClient(two_members.uri)
    yield client
    await client.close()


class TestSecondaryMember:
    """What a member that is a secondary by configuration answers."""

    async def test_discovered(
        self, two_members: ReplicaSetEmulator, rs_client: AsyncMongoClient[Doc]
    ) -> None:
        """The client finds both members: the primary and the secondary."""
        await rs_client.admin.command("ping")
        secondary = two_members.addresses[1]
        host, port = secondary.rsplit(":", 1)
        for _ in range(50):
            if (host, int(port)) in await rs_client.secondaries:
                break
            await rs_client.admin.command("ping")
        assert await rs_client.primary == (two_members.host, two_members.port)
        assert (host, int(port)) in await rs_client.secondaries

    async def test_secondary_read_sees_writes(
        self, two_members: ReplicaSetEmulator, rs_client: AsyncMongoClient[Doc]
    ) -> None:
        """A read with a secondary read preference is served by the secondary, up to date."""
        await rs_client.t.c.insert_one({"_id": 1})
        coll = rs_client.t.get_collection("c", read_preference=ReadPreference.SECONDARY)
        cursor = coll.find({})
        docs = await cursor.to_list()
        assert docs == [{"_id": 1}]
        assert cursor.address is not None
        assert f"{cursor.address[0]}:{cursor.address[1]}" == two_members.addresses[1]

    async def test_write_refused(self, two_members: ReplicaSetEmulator) -> None:
        """A write sent straight to the secondary fails with NotWritablePrimary (10107)."""
        direct: AsyncMongoClient[Doc] = AsyncMongoClient(
            two_members.addresses[1], directConnection=True, retryWrites=False
        )
        try:
            with pytest.raises(NotPrimaryError) as caught:
                await direct.t.c.insert_one({"_id": 1})
        finally:
            await direct.close()
        assert caught.value.details is not None
        assert caught.value.details["code"] == 10107

    async def test_direct_read_allowed(
        self, two_members: ReplicaSetEmulator, rs_client: AsyncMongoClient[Doc]
    ) -> None:
        """A direct connection's read (sent as primaryPreferred) is answered by the secondary."""
        await rs_client.t.c.insert_one({"_id": 1})
        direct: AsyncMongoClient[Doc] = AsyncMongoClient(
            two_members.addresses[1], directConnection=True, retryReads=False
        )
        try:
            assert await direct.t.c.find_one({}) == {"_id": 1}
        finally:
            await direct.close()

    async def test_transaction_secondary_read_refused(
        self, rs_client: AsyncMongoClient[Doc]
    ) -> None:
        """Reading from a secondary inside a transaction is refused before anything is sent."""
        await rs_client.t.c.insert_one({"_id": 1})
        async with rs_client.start_session() as s:
            await s.start_transaction(read_preference=ReadPreference.SECONDARY)
            with pytest.raises(InvalidOperation, match="must be primary"):
                await rs_client.t.c.find_one({}, session=s)
            await s.abort_transaction()
