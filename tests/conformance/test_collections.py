"""Collection kinds and diagnostics: capped + tailable, validators, views, explain, validate."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pymongo import CursorType
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, WriteError

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


class TestCapped:
    """Capped collections and tailable cursors."""

    async def test_oldest_documents_go(self, db: Db) -> None:
        """A capped collection with max 3 keeps the three newest documents, oldest first."""
        coll = await db.create_collection("c", capped=True, size=4096, max=3)
        for i in range(5):
            await coll.insert_one({"_id": i})
        assert [d["_id"] async for d in coll.find()] == [2, 3, 4]

    async def test_tailable_cursor_sees_new_documents(self, db: Db) -> None:
        """A tailable awaitData cursor stays open and returns documents inserted later."""
        coll = await db.create_collection("c", capped=True, size=4096)
        await coll.insert_one({"_id": 1})
        cursor = coll.find({}, cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(200)
        assert (await cursor.next())["_id"] == 1
        await coll.insert_one({"_id": 2})
        assert (await asyncio.wait_for(cursor.next(), 10))["_id"] == 2
        assert cursor.alive
        await cursor.close()

    async def test_tailable_needs_capped(self, db: Db) -> None:
        """A tailable cursor on an ordinary collection is refused."""
        await db["c"].insert_one({"_id": 1})
        with pytest.raises(OperationFailure):
            await db["c"].find({}, cursor_type=CursorType.TAILABLE).to_list()


class TestValidators:
    """Collection validators."""

    async def test_query_validator(self, db: Db) -> None:
        """A document the validator rejects fails with 121; bypassDocumentValidation lets it in."""
        coll = await db.create_collection("c", validator={"qty": {"$gte": 0}})
        await coll.insert_one({"_id": 1, "qty": 3})
        with pytest.raises(WriteError) as caught:
            await coll.insert_one({"_id": 2, "qty": -1})
        assert caught.value.code == 121
        with pytest.raises(WriteError):
            await coll.update_one({"_id": 1}, {"$set": {"qty": -5}})
        await coll.insert_one({"_id": 3, "qty": -1}, bypass_document_validation=True)
        assert await coll.count_documents({}) == 2

    async def test_json_schema_required(self, db: Db) -> None:
        """A $jsonSchema with required fields and a bsonType refuses documents without them."""
        schema = {
            "bsonType": "object",
            "required": ["email"],
            "properties": {"email": {"bsonType": "string"}},
        }
        coll = await db.create_collection("c", validator={"$jsonSchema": schema})
        await coll.insert_one({"email": "a@example.com"})
        with pytest.raises(WriteError):
            await coll.insert_one({"name": "no email"})
        with pytest.raises(WriteError):
            await coll.insert_one({"email": 5})


class TestViews:
    """Read-only views."""

    async def test_view_reads_through_its_pipeline(self, db: Db) -> None:
        """find, count and aggregate on a view see the source through the view's pipeline."""
        await db["src"].insert_many([{"_id": i, "even": i % 2 == 0} for i in range(6)])
        await db.create_collection("evens", viewOn="src", pipeline=[{"$match": {"even": True}}])
        assert [d["_id"] async for d in db["evens"].find({}, sort=[("_id", -1)])] == [4, 2, 0]
        assert await db["evens"].count_documents({"_id": {"$gt": 0}}) == 2
        assert len(await (await db["evens"].aggregate([{"$limit": 2}])).to_list()) == 2

    async def test_view_refuses_writes(self, db: Db) -> None:
        """Writing to a view fails with CommandNotSupportedOnView (166)."""
        await db.create_collection("v", viewOn="src", pipeline=[])
        with pytest.raises(OperationFailure) as caught:
            await db["v"].insert_one({"_id": 1})
        assert caught.value.code == 166


class TestQueryForms:
    """$type null and min/max bounds."""

    async def test_type_null(self, db: Db) -> None:
        """$type 'null' matches explicit nulls, not missing fields."""
        await db["c"].insert_many([{"_id": None}, {"_id": 1, "a": None}, {"_id": 2}])
        assert [d["_id"] async for d in db["c"].find({"a": {"$type": "null"}})] == [1]
        assert await db["c"].count_documents({"_id": {"$type": "null"}}) == 1

    async def test_min_max_bounds(self, db: Db) -> None:
        """min is inclusive and max exclusive on the hinted index."""
        await db["c"].create_index("v", name="v_1")
        await db["c"].insert_many([{"_id": i, "v": i * 10} for i in range(6)])
        found = db["c"].find({}, hint="v_1", min={"v": 10}, max={"v": 40}, sort=[("v", 1)])
        assert [d["v"] async for d in found] == [10, 20, 30]


class TestDiagnostics:
    """explain, validate and profile."""

    async def test_explain_names_the_access_path(self, db: Db) -> None:
        """explain shows an index scan for an indexed equality and a collection scan otherwise."""
        await db["c"].create_index("email", name="email_1")
        await db["c"].insert_many([{"email": f"{i}@x", "n": i} for i in range(20)])
        indexed = await db.command({"explain": {"find": "c", "filter": {"email": "3@x"}}})
        assert "IXSCAN" in str(indexed["queryPlanner"]) and "email_1" in str(
            indexed["queryPlanner"]
        )
        scanned = await db.command({"explain": {"find": "c", "filter": {"n": 3}}})
        assert "COLLSCAN" in str(scanned["queryPlanner"])
        assert scanned["executionStats"]["nReturned"] == 1

    async def test_validate(self, db: Db) -> None:
        """validate reports a valid collection with its record and index key counts."""
        await db["c"].create_index("a", name="a_1")
        await db["c"].insert_many([{"a": i} for i in range(7)])
        reply = await db.command({"validate": "c"})
        assert reply["valid"] is True
        assert reply["nrecords"] == 7
        assert reply["keysPerIndex"]["a_1"] == 7

    async def test_profile_level(self, db: Db) -> None:
        """profile -1 reads the settings without changing them."""
        reply = await db.command({"profile": -1})
        assert reply["was"] == 0
        assert "slowms" in reply
