"""Bad input: unknown options and stages are refused by name; bad wire messages cost one socket."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure
from pymongo.uri_parser import parse_uri

from changestream_worker.testing.emulator import ReplicaSetEmulator, registry
from changestream_worker.testing.emulator.context import Ctx
from changestream_worker.testing.emulator.dispatch import MODULES, Dispatcher
from changestream_worker.testing.emulator.registry import command

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]
OP_MSG = 2013


async def refused(call: Awaitable[Any]) -> OperationFailure:
    """Await `call`, which must fail with a server error; return it."""
    with pytest.raises(OperationFailure) as caught:
        await call
    return caught.value


class TestUnknownOptions:
    """Unknown fields in commands are errors that name the field."""

    async def test_find_unknown_field(self, db: Db) -> None:
        """find with an unknown field fails with 40415 naming 'find.<field>'."""
        error = await refused(db.command({"find": "c", "frobnicate": True}))
        assert error.code == 40415
        assert "find.frobnicate" in str(error)

    async def test_insert_unknown_field(self, db: Db) -> None:
        """insert with an unknown field fails with 40415 naming it, writing nothing."""
        error = await refused(db.command({"insert": "c", "documents": [{}], "frobnicate": 1}))
        assert error.code == 40415
        assert "insert.frobnicate" in str(error)
        assert await db["c"].count_documents({}) == 0

    async def test_change_stream_unknown_option(self, db: Db) -> None:
        """$changeStream with an unknown option fails with 40415 naming it."""
        error = await refused(
            db.command(
                {"aggregate": "c", "pipeline": [{"$changeStream": {"frobnicate": 1}}], "cursor": {}}
            )
        )
        assert error.code == 40415
        assert "$changeStream.frobnicate" in str(error)

    async def test_unknown_query_operator(self, db: Db) -> None:
        """An unknown query operator fails with 2 BadValue naming it."""
        error = await refused(db["c"].find_one({"a": {"$frobnicate": 1}}))
        assert error.code == 2
        assert "$frobnicate" in str(error)

    async def test_unknown_expression(self, db: Db) -> None:
        """An unknown aggregation expression fails with 168 InvalidPipelineOperator naming it."""
        await db["c"].insert_one({"a": 1})
        error = await refused(db["c"].aggregate([{"$project": {"x": {"$frobnicate": "$a"}}}]))
        assert error.code == 168
        assert "$frobnicate" in str(error)


class TestUnknownStages:
    """Pipeline stages the server does not accept."""

    async def test_unknown_stage(self, db: Db) -> None:
        """An unknown stage fails with 40324 naming it."""
        error = await refused(db["c"].aggregate([{"$frobnicate": {}}]))
        assert error.code == 40324
        assert "$frobnicate" in str(error)

    async def test_unknown_stage_in_change_stream(self, db: Db) -> None:
        """An unknown stage after $changeStream fails with 40324 when the stream opens."""
        error = await refused(db["c"].watch([{"$frobnicate": {}}]))
        assert error.code == 40324
        assert "$frobnicate" in str(error)

    async def test_stage_not_allowed_in_change_stream(self, db: Db) -> None:
        """$group after $changeStream fails with 20 IllegalOperation naming $group."""
        error = await refused(db["c"].watch([{"$group": {"_id": None}}]))
        assert error.code == 20
        assert "$group is not permitted in a $changeStream pipeline" in str(error)

    async def test_change_stream_not_first(self, db: Db) -> None:
        """$changeStream anywhere but first fails with 40602."""
        error = await refused(
            db.command(
                {
                    "aggregate": "c",
                    "pipeline": [{"$match": {}}, {"$changeStream": {}}],
                    "cursor": {},
                }
            )
        )
        assert error.code == 40602
        assert "$changeStream" in str(error)


async def right_or_refused(
    backend: str, name: str, run: Callable[[], Awaitable[Any]], expected: Any
) -> None:
    """MongoDB answers `expected`; the emulator may instead refuse, naming `name` — never lie."""
    try:
        got = await run()
    except OperationFailure as exc:
        assert backend == "emulator", f"MongoDB refused {name}: {exc}"
        assert name in str(exc), f"the refusal does not name {name}: {exc}"
        return
    assert got == expected


class TestNeverSilentlyWrong:
    """Less common features: the right answer, or (emulator only) an error naming them."""

    async def test_facet(self, backend: str, db: Db) -> None:
        """$facet runs sub-pipelines side by side."""
        await db["c"].insert_many([{"v": i} for i in range(5)])

        async def run() -> Any:
            pipeline = [
                {"$facet": {"low": [{"$match": {"v": {"$lt": 2}}}, {"$count": "n"}]}},
            ]
            return await (await db["c"].aggregate(pipeline)).to_list()

        await right_or_refused(backend, "$facet", run, [{"low": [{"n": 2}]}])

    async def test_bucket(self, backend: str, db: Db) -> None:
        """$bucket groups by boundaries."""
        await db["c"].insert_many([{"v": i} for i in range(5)])

        async def run() -> Any:
            stage = {"$bucket": {"groupBy": "$v", "boundaries": [0, 2, 5]}}
            return await (await db["c"].aggregate([stage])).to_list()

        expected = [{"_id": 0, "count": 2}, {"_id": 2, "count": 3}]
        await right_or_refused(backend, "$bucket", run, expected)

    async def test_graph_lookup(self, backend: str, db: Db) -> None:
        """$graphLookup follows references recursively."""
        await db["n"].insert_many(
            [{"_id": "a", "next": "b"}, {"_id": "b", "next": "c"}, {"_id": "c"}]
        )

        async def run() -> Any:
            stage = {
                "$graphLookup": {
                    "from": "n",
                    "startWith": "$next",
                    "connectFromField": "next",
                    "connectToField": "_id",
                    "as": "chain",
                }
            }
            pipeline: list[Doc] = [
                {"$match": {"_id": "a"}},
                stage,
                {"$project": {"n": {"$size": "$chain"}}},
            ]
            return await (await db["n"].aggregate(pipeline)).to_list()

        await right_or_refused(backend, "$graphLookup", run, [{"_id": "a", "n": 2}])

    async def test_set_window_fields(self, backend: str, db: Db) -> None:
        """$setWindowFields computes running totals."""
        await db["c"].insert_many([{"_id": i, "v": i} for i in range(1, 4)])

        async def run() -> Any:
            stage = {
                "$setWindowFields": {
                    "sortBy": {"_id": 1},
                    "output": {
                        "run": {"$sum": "$v", "window": {"documents": ["unbounded", "current"]}}
                    },
                }
            }
            pipeline: list[Doc] = [stage, {"$project": {"run": 1}}]
            return await (await db["c"].aggregate(pipeline)).to_list()

        expected = [{"_id": 1, "run": 1}, {"_id": 2, "run": 3}, {"_id": 3, "run": 6}]
        await right_or_refused(backend, "$setWindowFields", run, expected)

    async def test_collation(self, backend: str, db: Db) -> None:
        """A case-insensitive collation matches regardless of case."""
        await db["c"].insert_many([{"_id": 1, "s": "abc"}, {"_id": 2, "s": "ABC"}])

        async def run() -> Any:
            reply = await db.command(
                {
                    "find": "c",
                    "filter": {"s": "abc"},
                    "sort": {"_id": 1},
                    "collation": {"locale": "en", "strength": 2},
                }
            )
            return [d["_id"] for d in reply["cursor"]["firstBatch"]]

        await right_or_refused(backend, "collation", run, [1, 2])


def member_address(uri: str) -> tuple[str, int]:
    host, port = parse_uri(uri)["nodelist"][0]
    return host, port


async def closed_after(uri: str, payload: bytes) -> bool:
    """Send raw bytes on a fresh socket; True when the server then closes it."""
    host, port = member_address(uri)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        await writer.drain()
        try:
            data = await asyncio.wait_for(reader.read(1), timeout=5)
        except (ConnectionResetError, BrokenPipeError):
            return True
        return data == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await writer.wait_closed()


def header(length: int, op_code: int = OP_MSG) -> bytes:
    """A 16-byte message header claiming `length` bytes."""
    return struct.pack("<iiii", length, 1, 0, op_code)


class TestMalformedMessages:
    """Malformed wire messages close only their own connection."""

    async def test_oversized_message(self, mongo_uri: str, client: AsyncMongoClient[Doc]) -> None:
        """A header claiming more than 48,000,000 bytes closes that connection; others work."""
        await client.admin.command("ping")
        assert await closed_after(mongo_uri, header(64 * 1024 * 1024) + b"\x00" * 64)
        assert (await client.admin.command("ping"))["ok"] == 1.0

    async def test_undersized_message(self, mongo_uri: str, client: AsyncMongoClient[Doc]) -> None:
        """A header claiming fewer bytes than a header closes that connection; others work."""
        await client.admin.command("ping")
        assert await closed_after(mongo_uri, header(8) + b"\x00" * 16)
        assert (await client.admin.command("ping"))["ok"] == 1.0

    async def test_negative_length(self, mongo_uri: str, client: AsyncMongoClient[Doc]) -> None:
        """A negative message length closes that connection; others work."""
        assert await closed_after(mongo_uri, header(-1) + b"\x00" * 16)
        assert (await client.admin.command("ping"))["ok"] == 1.0


@command("emulatorBroken")
async def _broken(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    """A command whose implementation has a gap, as any emulator command might."""
    return {"value": cmd["missing"], "ok": 1.0}


class TestEmulatorGaps:
    """A gap in the emulator answers CommandNotSupported (115), never an internal error."""

    @pytest.mark.emulator_only
    async def test_gap_is_command_not_supported(self) -> None:
        """A command that trips over its own gap answers 115 naming it; the socket stays open."""
        async with ReplicaSetEmulator(port=0) as rs:
            rs.dispatcher = Dispatcher(rs, registry.table(*MODULES, extra=[_broken]))
            client: AsyncMongoClient[Doc] = AsyncMongoClient(rs.uri)
            try:
                error = await refused(client.admin.command({"emulatorBroken": 1}))
                assert (await client.admin.command("ping"))["ok"] == 1.0
            finally:
                await client.close()
        assert error.code == 115
        assert error.details is not None
        assert error.details["codeName"] == "CommandNotSupported"
        assert "'emulatorBroken'" in str(error)
