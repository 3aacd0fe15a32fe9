"""The wire protocol spoken by hand: legacy OP_QUERY handshake, OP_MSG sections and moreToCome."""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import AsyncIterator
from typing import Any

import bson
import pytest
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.uri_parser import parse_uri

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
MORE_TO_COME = 1 << 1
HEADER = struct.Struct("<iiii")
_ids = itertools.count(1000)


class Wire:
    """One raw connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, op_code: int, body: bytes) -> int:
        request_id = next(_ids)
        self.writer.write(HEADER.pack(HEADER.size + len(body), request_id, 0, op_code) + body)
        await self.writer.drain()
        return request_id

    async def receive(self) -> tuple[int, int, bytes]:
        """(responseTo, opCode, body) of the next message."""
        length, _, response_to, op_code = HEADER.unpack(
            await asyncio.wait_for(self.reader.readexactly(HEADER.size), timeout=10)
        )
        body = await asyncio.wait_for(self.reader.readexactly(length - HEADER.size), timeout=10)
        return response_to, op_code, body

    async def msg(
        self, doc: Doc, flags: int = 0, sequences: dict[str, list[Doc]] | None = None
    ) -> int:
        """Send an OP_MSG: `doc` as the kind-0 body, each sequence as a kind-1 section."""
        body = struct.pack("<I", flags) + b"\x00" + bson.encode(doc)
        for name, docs in (sequences or {}).items():
            payload = name.encode() + b"\x00" + b"".join(bson.encode(d) for d in docs)
            body += b"\x01" + struct.pack("<i", 4 + len(payload)) + payload
        return await self.send(OP_MSG, body)

    async def msg_reply(self) -> tuple[int, Doc]:
        """(responseTo, body document) of the next OP_MSG reply."""
        response_to, op_code, body = await self.receive()
        assert op_code == OP_MSG
        flags, kind = struct.unpack_from("<IB", body)
        assert kind == 0
        assert flags & MORE_TO_COME == 0
        return response_to, bson.decode(body[5:])


@pytest.fixture
async def wire(mongo_uri: str) -> AsyncIterator[Wire]:
    """A raw socket to the replica set's member."""
    host, port = parse_uri(mongo_uri)["nodelist"][0]
    reader, writer = await asyncio.open_connection(host, port)
    yield Wire(reader, writer)
    writer.close()
    await writer.wait_closed()


class TestLegacyHandshake:
    """OP_QUERY isMaster, as older drivers send first."""

    async def test_op_query_is_master(self, wire: Wire) -> None:
        """OP_QUERY isMaster on admin.$cmd is answered with one OP_REPLY document."""
        query = struct.pack("<i", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1)
        request_id = await wire.send(OP_QUERY, query + bson.encode({"isMaster": 1}))
        response_to, op_code, body = await wire.receive()
        assert op_code == OP_REPLY
        assert response_to == request_id
        _flags, cursor_id, starting_from, returned = struct.unpack_from("<iqii", body)
        assert (cursor_id, starting_from, returned) == (0, 0, 1)
        reply = bson.decode(body[20:])
        assert reply["ismaster"] is True
        assert reply["setName"] == "rs0"
        assert reply["maxWireVersion"] == 21


class TestOpMsg:
    """OP_MSG sections and flags."""

    async def test_hello(self, wire: Wire) -> None:
        """An OP_MSG hello gets an OP_MSG reply to that request id."""
        request_id = await wire.msg({"hello": 1, "$db": "admin"})
        response_to, reply = await wire.msg_reply()
        assert response_to == request_id
        assert reply["ok"] == 1.0
        assert reply["isWritablePrimary"] is True

    async def test_document_sequence(self, wire: Wire, db: Db) -> None:
        """A kind-1 `documents` sequence carries an insert's documents."""
        docs = [{"_id": 1}, {"_id": 2}, {"_id": 3}]
        await wire.msg({"insert": "c", "$db": db.name}, sequences={"documents": docs})
        _, reply = await wire.msg_reply()
        assert reply["n"] == 3
        assert [d async for d in db["c"].find().sort("_id", 1)] == docs

    async def test_more_to_come_gets_no_reply(self, wire: Wire, db: Db) -> None:
        """With moreToCome the server answers nothing; the next request's reply comes next."""
        await wire.msg(
            {"insert": "c", "$db": db.name, "writeConcern": {"w": 0}},
            flags=MORE_TO_COME,
            sequences={"documents": [{"_id": "fire-and-forget"}]},
        )
        ping = await wire.msg({"ping": 1, "$db": "admin"})
        response_to, reply = await wire.msg_reply()
        assert response_to == ping
        assert reply["ok"] == 1.0
        assert await db["c"].find_one() == {"_id": "fire-and-forget"}

    async def test_command_error_keeps_connection(self, wire: Wire) -> None:
        """A failing command is answered with ok 0 and the connection stays usable."""
        await wire.msg({"frobnicateWidgets": 1, "$db": "admin"})
        _, error = await wire.msg_reply()
        assert (error["ok"], error["code"], error["codeName"]) == (0.0, 59, "CommandNotFound")
        await wire.msg({"ping": 1, "$db": "admin"})
        _, reply = await wire.msg_reply()
        assert reply["ok"] == 1.0
