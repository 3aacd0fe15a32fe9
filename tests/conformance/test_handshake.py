"""Handshake and monitoring commands as a MongoDB 7.0 replica-set primary answers them."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Int64, ObjectId, Timestamp
from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

Doc = dict[str, Any]


class TestHello:
    """hello / isMaster."""

    async def test_primary_of_rs0(self, client: AsyncMongoClient[Doc]) -> None:
        """hello says: writable primary of set rs0, itself listed in hosts."""
        reply = await client.admin.command("hello")
        assert reply["ok"] == 1.0
        assert reply["isWritablePrimary"] is True
        assert reply["secondary"] is False
        assert reply["setName"] == "rs0"
        assert reply["primary"] == reply["me"]
        assert reply["me"] in reply["hosts"]
        assert isinstance(reply["setVersion"], int)
        assert isinstance(reply["electionId"], ObjectId)

    async def test_wire_versions_of_7_0(self, client: AsyncMongoClient[Doc]) -> None:
        """MongoDB 7.0 speaks wire versions 0..21."""
        reply = await client.admin.command("hello")
        assert reply["minWireVersion"] == 0
        assert reply["maxWireVersion"] == 21

    async def test_limits_and_sessions(self, client: AsyncMongoClient[Doc]) -> None:
        """Size limits and the session timeout have MongoDB's default values."""
        reply = await client.admin.command("hello")
        assert reply["maxBsonObjectSize"] == 16 * 1024 * 1024
        assert reply["maxMessageSizeBytes"] == 48_000_000
        assert reply["maxWriteBatchSize"] == 100_000
        assert reply["logicalSessionTimeoutMinutes"] == 30
        assert reply["readOnly"] is False

    async def test_topology_version(self, client: AsyncMongoClient[Doc]) -> None:
        """topologyVersion carries the process id and an Int64 counter."""
        reply = await client.admin.command("hello")
        assert isinstance(reply["topologyVersion"]["processId"], ObjectId)
        assert isinstance(reply["topologyVersion"]["counter"], Int64)

    async def test_cluster_time_and_operation_time(self, client: AsyncMongoClient[Doc]) -> None:
        """Replies carry $clusterTime and operationTime Timestamps."""
        reply = await client.admin.command("hello")
        assert isinstance(reply["$clusterTime"]["clusterTime"], Timestamp)
        assert isinstance(reply["operationTime"], Timestamp)
        assert reply["operationTime"] <= reply["$clusterTime"]["clusterTime"]

    async def test_last_write_optime(self, client: AsyncMongoClient[Doc]) -> None:
        """lastWrite.opTime moves to at least a write's operationTime."""
        coll = client.get_database("t_handshake")["writes"]
        async with client.start_session() as session:
            await coll.insert_one({"x": 1}, session=session)
            written = session.operation_time
        reply = await client.admin.command("hello")
        assert written is not None
        assert reply["lastWrite"]["opTime"]["ts"] >= written
        await client.drop_database("t_handshake")

    async def test_legacy_is_master(self, client: AsyncMongoClient[Doc]) -> None:
        """The legacy isMaster command answers with `ismaster: true`."""
        reply = await client.admin.command("isMaster")
        assert reply["ismaster"] is True
        assert reply["setName"] == "rs0"
        assert reply["maxWireVersion"] == 21

    def test_sync_client_sees_primary(self, sync_client: MongoClient[Doc]) -> None:
        """A synchronous MongoClient discovers the primary of rs0."""
        assert sync_client.admin.command("ping")["ok"] == 1.0
        assert sync_client.primary is not None
        assert sync_client.is_primary is True


class TestMonitoring:
    """ping, buildInfo, getParameter, serverStatus, sessions, replSetGetStatus."""

    async def test_ping(self, client: AsyncMongoClient[Doc]) -> None:
        """ping answers ok: 1."""
        reply = await client.admin.command("ping")
        assert reply["ok"] == 1.0

    async def test_build_info(self, client: AsyncMongoClient[Doc]) -> None:
        """buildInfo reports a 7.x version, consistently as a string and an array."""
        reply = await client.admin.command("buildInfo")
        assert reply["versionArray"][0] == 7
        assert reply["version"].startswith("7.")
        assert reply["version"].split(".")[:2] == [str(v) for v in reply["versionArray"][:2]]
        assert reply["maxBsonObjectSize"] == 16 * 1024 * 1024

    async def test_feature_compatibility_version(self, client: AsyncMongoClient[Doc]) -> None:
        """getParameter reports featureCompatibilityVersion 7.0."""
        reply = await client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
        assert reply["featureCompatibilityVersion"]["version"] == "7.0"

    async def test_server_status(self, client: AsyncMongoClient[Doc]) -> None:
        """serverStatus names the process, counts connections, shows the set."""
        reply = await client.admin.command("serverStatus")
        assert reply["ok"] == 1.0
        assert reply["process"] == "mongod"
        assert reply["version"].startswith("7.")
        assert reply["connections"]["current"] >= 1
        assert reply["repl"]["setName"] == "rs0"
        assert reply["repl"]["isWritablePrimary"] is True

    async def test_end_sessions(self, client: AsyncMongoClient[Doc]) -> None:
        """endSessions accepts a list of session ids."""
        async with client.start_session() as session:
            lsid = session.session_id
        reply = await client.admin.command({"endSessions": [lsid]})
        assert reply["ok"] == 1.0

    async def test_kill_all_sessions(self, mongo_uri: str) -> None:
        """killAllSessions with an empty pattern list succeeds."""
        own: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_uri)
        try:
            reply = await own.admin.command({"killAllSessions": []})
            assert reply["ok"] == 1.0
        finally:
            await own.close()


class TestReplSetGetStatus:
    """replSetGetStatus and the oplog's optimes."""

    async def test_one_primary_member(self, client: AsyncMongoClient[Doc]) -> None:
        """The set rs0 has one member, itself, in state PRIMARY."""
        reply = await client.admin.command("replSetGetStatus")
        assert reply["set"] == "rs0"
        assert reply["myState"] == 1
        members = reply["members"]
        assert len(members) == 1
        assert members[0]["stateStr"] == "PRIMARY"
        assert members[0]["state"] == 1
        assert members[0]["self"] is True
        assert members[0]["health"] == 1.0

    async def test_optimes_follow_writes(self, db: AsyncDatabase[Doc]) -> None:
        """appliedOpTime and lastCommittedOpTime reach a write's operationTime."""
        client = db.client
        async with client.start_session() as session:
            await db["c"].insert_one({"x": 1}, session=session)
            written = session.operation_time
        assert written is not None
        optimes = (await client.admin.command("replSetGetStatus"))["optimes"]
        assert optimes["appliedOpTime"]["ts"] >= written
        assert optimes["lastCommittedOpTime"]["ts"] >= written
        assert optimes["appliedOpTime"]["t"] >= 1

    async def test_oplog_first_and_last_entries(self, db: AsyncDatabase[Doc]) -> None:
        """local.oplog.rs holds the write, between its first and last entries."""
        client = db.client
        async with client.start_session() as session:
            await db["c"].insert_one({"_id": "oplog-probe"}, session=session)
            written = session.operation_time
        oplog = client.local["oplog.rs"]
        first = await oplog.find_one(sort=[("$natural", 1)])
        last = await oplog.find_one(sort=[("$natural", -1)])
        assert first is not None and last is not None
        assert first["ts"] <= written <= last["ts"]
        entry = await oplog.find_one({"ns": f"{db.name}.c", "op": "i"})
        assert entry is not None
        assert entry["o"] == {"_id": "oplog-probe"}
        assert entry["ts"] == written


class TestUnknownCommand:
    """Commands the server does not know."""

    async def test_command_not_found(self, client: AsyncMongoClient[Doc]) -> None:
        """An unknown command fails with 59 CommandNotFound naming it."""
        with pytest.raises(OperationFailure) as caught:
            await client.admin.command("frobnicateWidgets")
        assert caught.value.code == 59
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "CommandNotFound"
        assert caught.value.details["errmsg"] == "no such command: 'frobnicateWidgets'"
        assert caught.value.details["ok"] == 0.0
