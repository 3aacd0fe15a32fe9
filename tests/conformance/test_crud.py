"""CRUD, cursors, aggregation and DDL commands with MongoDB 7.0's reply shapes and errors."""

from __future__ import annotations

from typing import Any

import pytest
from bson import Binary
from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


class TestInsert:
    """insert."""

    async def test_insert_reply(self, db: Db) -> None:
        """The raw insert reply counts the documents written."""
        reply = await db.command({"insert": "c", "documents": [{"_id": 1}, {"_id": 2}]})
        assert reply["n"] == 2
        assert reply["ok"] == 1.0
        assert "writeErrors" not in reply

    async def test_ordered_insert_stops_at_duplicate(self, db: Db) -> None:
        """An ordered insert reports 11000 at the duplicate's index and stops there."""
        await db["c"].insert_one({"_id": 1})
        with pytest.raises(BulkWriteError) as caught:
            await db["c"].insert_many([{"_id": 0}, {"_id": 1}, {"_id": 2}])
        details = caught.value.details
        assert details["nInserted"] == 1
        [error] = details["writeErrors"]
        assert error["index"] == 1
        assert error["code"] == 11000
        assert error["errmsg"].startswith(
            f"E11000 duplicate key error collection: {db.name}.c index: _id_ dup key"
        )
        assert sorted([d["_id"] async for d in db["c"].find()]) == [0, 1]

    async def test_unordered_insert_continues(self, db: Db) -> None:
        """An unordered insert writes every document it can and lists each failure."""
        await db["c"].insert_one({"_id": 1})
        reply = await db.command(
            {
                "insert": "c",
                "documents": [{"_id": 1}, {"_id": 2}, {"_id": 1}, {"_id": 3}],
                "ordered": False,
            }
        )
        assert reply["n"] == 2
        assert [(e["index"], e["code"]) for e in reply["writeErrors"]] == [(0, 11000), (2, 11000)]
        assert await db["c"].count_documents({}) == 3

    async def test_unique_index_duplicate(self, db: Db) -> None:
        """A unique secondary index refuses a duplicate with 11000, keyPattern and keyValue."""
        await db["users"].create_index("email", unique=True)
        await db["users"].insert_one({"email": "a@example.com"})
        with pytest.raises(DuplicateKeyError) as caught:
            await db["users"].insert_one({"email": "a@example.com"})
        assert caught.value.code == 11000
        details = caught.value.details
        assert details is not None
        assert details["keyPattern"] == {"email": 1}
        assert details["keyValue"] == {"email": "a@example.com"}
        assert "index: email_1 dup key" in details["errmsg"]

    async def test_generated_object_id(self, db: Db) -> None:
        """A document without _id is stored with the _id the driver generated."""
        result = await db["c"].insert_one({"x": 1})
        stored = await db["c"].find_one({"x": 1})
        assert stored == {"_id": result.inserted_id, "x": 1}


class TestUpdate:
    """update, including upsert, multi and the update operators."""

    async def test_update_one_counts(self, db: Db) -> None:
        """update reports n (matched) and nModified; a no-op set is matched, not modified."""
        await db["c"].insert_many([{"_id": 1, "x": 1}, {"_id": 2, "x": 1}])
        reply = await db.command(
            {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"x": 1}}}]}
        )
        assert (reply["n"], reply["nModified"]) == (1, 0)
        reply = await db.command(
            {"update": "c", "updates": [{"q": {"x": 1}, "u": {"$set": {"x": 2}}}]}
        )
        assert (reply["n"], reply["nModified"]) == (1, 1)

    async def test_multi(self, db: Db) -> None:
        """update_many changes every matching document."""
        await db["c"].insert_many([{"_id": i, "k": i % 2} for i in range(6)])
        result = await db["c"].update_many({"k": 0}, {"$set": {"hit": True}})
        assert (result.matched_count, result.modified_count) == (3, 3)
        assert sorted([d["_id"] async for d in db["c"].find({"hit": True})]) == [0, 2, 4]

    async def test_upsert_reply(self, db: Db) -> None:
        """An upsert that inserts reports upserted [{index, _id}] with the query's equality."""
        reply = await db.command(
            {
                "update": "c",
                "updates": [{"q": {"_id": "u1", "a": 1}, "u": {"$set": {"b": 2}}, "upsert": True}],
            }
        )
        assert reply["n"] == 1
        assert reply["nModified"] == 0
        assert reply["upserted"] == [{"index": 0, "_id": "u1"}]
        assert await db["c"].find_one({"_id": "u1"}) == {"_id": "u1", "a": 1, "b": 2}

    async def test_upsert_matching_updates(self, db: Db) -> None:
        """An upsert that matches updates in place and upserts nothing."""
        await db["c"].insert_one({"_id": 1, "n": 1})
        result = await db["c"].update_one({"_id": 1}, {"$inc": {"n": 1}}, upsert=True)
        assert result.upserted_id is None
        assert result.matched_count == 1
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "n": 2}

    async def test_operators(self, db: Db) -> None:
        """$set, $unset, $inc, $mul, $min, $max, $push, $addToSet, $pull and $rename."""
        await db["c"].insert_one(
            {"_id": 1, "a": 1, "b": 2, "n": 5, "m": 3, "lo": 5, "hi": 5, "tags": ["x"], "old": 1}
        )
        await db["c"].update_one(
            {"_id": 1},
            {
                "$set": {"a": 10, "sub.deep": True},
                "$unset": {"b": ""},
                "$inc": {"n": 2},
                "$mul": {"m": 4},
                "$min": {"lo": 1},
                "$max": {"hi": 9},
                "$push": {"tags": "y"},
                "$rename": {"old": "new"},
            },
        )
        await db["c"].update_one({"_id": 1}, {"$addToSet": {"tags": {"$each": ["x", "z"]}}})
        await db["c"].update_one({"_id": 1}, {"$pull": {"tags": "y"}})
        assert await db["c"].find_one({"_id": 1}) == {
            "_id": 1,
            "a": 10,
            "n": 7,
            "m": 12,
            "lo": 1,
            "hi": 9,
            "tags": ["x", "z"],
            "new": 1,
            "sub": {"deep": True},
        }

    async def test_replacement(self, db: Db) -> None:
        """A replacement document replaces everything but _id."""
        await db["c"].insert_one({"_id": 1, "a": 1, "b": 2})
        await db["c"].replace_one({"_id": 1}, {"c": 3})
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "c": 3}

    async def test_immutable_id(self, db: Db) -> None:
        """Changing _id through an update fails with 66 ImmutableField as a write error."""
        await db["c"].insert_one({"_id": 1})
        reply = await db.command(
            {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"_id": 2}}}]}
        )
        [error] = reply["writeErrors"]
        assert error["code"] == 66
        assert error["index"] == 0
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1}

    async def test_unknown_update_operator(self, db: Db) -> None:
        """An unknown update operator is a write error naming it (9 FailedToParse)."""
        await db["c"].insert_one({"_id": 1})
        reply = await db.command(
            {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$frob": {"a": 1}}}]}
        )
        [error] = reply["writeErrors"]
        assert error["code"] == 9
        assert "$frob" in error["errmsg"]


class TestDelete:
    """delete."""

    async def test_delete_one_and_many(self, db: Db) -> None:
        """limit 1 deletes one matching document, limit 0 all of them."""
        await db["c"].insert_many([{"_id": i, "k": i % 2} for i in range(6)])
        reply = await db.command({"delete": "c", "deletes": [{"q": {"k": 1}, "limit": 1}]})
        assert reply["n"] == 1
        result = await db["c"].delete_many({"k": 1})
        assert result.deleted_count == 2
        assert await db["c"].count_documents({}) == 3

    def test_sync_delete(self, sync_client: MongoClient[Doc]) -> None:
        """The synchronous client's delete_one removes the document."""
        coll = sync_client["t_sync_crud"]["c"]
        try:
            coll.insert_many([{"_id": 1}, {"_id": 2}])
            assert coll.delete_one({"_id": 1}).deleted_count == 1
            assert [d["_id"] for d in coll.find()] == [2]
        finally:
            sync_client.drop_database("t_sync_crud")


class TestFind:
    """find, getMore and killCursors."""

    async def test_filter_sort_projection_skip_limit(self, db: Db) -> None:
        """find applies filter, sort, projection, skip and limit together."""
        await db["c"].insert_many([{"_id": i, "v": i * 10, "odd": i % 2 == 1} for i in range(10)])
        docs = [
            d
            async for d in db["c"]
            .find({"odd": True}, {"v": 1, "_id": 0})
            .sort("v", DESCENDING)
            .skip(1)
            .limit(3)
        ]
        assert docs == [{"v": 70}, {"v": 50}, {"v": 30}]

    async def test_query_operators(self, db: Db) -> None:
        """$gt/$lte, $in, $or, $exists, $regex and dotted paths select the right documents."""
        await db["c"].insert_many(
            [
                {"_id": 1, "n": 1, "s": "apple", "sub": {"k": "a"}},
                {"_id": 2, "n": 5, "s": "banana"},
                {"_id": 3, "n": 9, "s": "cherry", "sub": {"k": "b"}},
            ]
        )

        async def ids(query: Doc) -> list[int]:
            return [d["_id"] async for d in db["c"].find(query).sort("_id", ASCENDING)]

        assert await ids({"n": {"$gt": 1, "$lte": 9}}) == [2, 3]
        assert await ids({"s": {"$in": ["apple", "cherry"]}}) == [1, 3]
        assert await ids({"$or": [{"n": 5}, {"sub.k": "b"}]}) == [2, 3]
        assert await ids({"sub": {"$exists": False}}) == [2]
        assert await ids({"s": {"$regex": "^b"}}) == [2]

    async def test_batches_and_get_more(self, db: Db) -> None:
        """batchSize splits results: firstBatch, then getMore nextBatch, then cursor id 0."""
        await db["c"].insert_many([{"_id": i} for i in range(5)])
        first = await db.command({"find": "c", "sort": {"_id": 1}, "batchSize": 2})
        cursor = first["cursor"]
        assert cursor["ns"] == f"{db.name}.c"
        assert [d["_id"] for d in cursor["firstBatch"]] == [0, 1]
        assert cursor["id"] != 0
        more = await db.command({"getMore": cursor["id"], "collection": "c", "batchSize": 2})
        assert [d["_id"] for d in more["cursor"]["nextBatch"]] == [2, 3]
        assert more["cursor"]["id"] == cursor["id"]
        last = await db.command({"getMore": cursor["id"], "collection": "c", "batchSize": 2})
        assert [d["_id"] for d in last["cursor"]["nextBatch"]] == [4]
        assert last["cursor"]["id"] == 0

    async def test_driver_cursor_uses_get_more(self, db: Db) -> None:
        """A driver cursor with a small batch size still returns every document in order."""
        await db["c"].insert_many([{"_id": i} for i in range(25)])
        got = [d["_id"] async for d in db["c"].find().sort("_id", ASCENDING).batch_size(4)]
        assert got == list(range(25))

    async def test_kill_cursors(self, db: Db) -> None:
        """killCursors reports the cursor killed; a later getMore fails with 43 CursorNotFound."""
        await db["c"].insert_many([{"_id": i} for i in range(5)])
        first = await db.command({"find": "c", "batchSize": 1})
        cursor_id = first["cursor"]["id"]
        reply = await db.command({"killCursors": "c", "cursors": [cursor_id]})
        assert reply["cursorsKilled"] == [cursor_id]
        assert reply["cursorsNotFound"] == []
        with pytest.raises(OperationFailure) as caught:
            await db.command({"getMore": cursor_id, "collection": "c"})
        assert caught.value.code == 43
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "CursorNotFound"


class TestFindAndModify:
    """findAndModify."""

    async def test_update_returns_before_or_after(self, db: Db) -> None:
        """findAndModify returns the document before the change, or after it when asked."""
        await db["c"].insert_one({"_id": 1, "n": 1})
        before = await db["c"].find_one_and_update({"_id": 1}, {"$inc": {"n": 1}})
        after = await db["c"].find_one_and_update(
            {"_id": 1}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER
        )
        assert before == {"_id": 1, "n": 1}
        assert after == {"_id": 1, "n": 3}

    async def test_raw_reply_with_upsert(self, db: Db) -> None:
        """The raw reply has lastErrorObject {n, updatedExisting, upserted} and value."""
        reply = await db.command(
            {
                "findAndModify": "c",
                "query": {"_id": "new"},
                "update": {"$set": {"x": 1}},
                "upsert": True,
                "new": True,
            }
        )
        assert reply["lastErrorObject"] == {"n": 1, "updatedExisting": False, "upserted": "new"}
        assert reply["value"] == {"_id": "new", "x": 1}

    async def test_remove_and_no_match(self, db: Db) -> None:
        """remove returns the deleted document; no match returns value null."""
        await db["c"].insert_many([{"_id": 1, "p": 2}, {"_id": 2, "p": 1}])
        removed = await db["c"].find_one_and_delete({}, sort=[("p", ASCENDING)])
        assert removed == {"_id": 2, "p": 1}
        reply = await db.command({"findAndModify": "c", "query": {"_id": 99}, "remove": True})
        assert reply["value"] is None
        assert reply["lastErrorObject"]["n"] == 0

    async def test_replace(self, db: Db) -> None:
        """find_one_and_replace swaps the document body."""
        await db["c"].insert_one({"_id": 1, "a": 1})
        after = await db["c"].find_one_and_replace(
            {"_id": 1}, {"b": 2}, return_document=ReturnDocument.AFTER
        )
        assert after == {"_id": 1, "b": 2}


class TestAggregate:
    """aggregate."""

    async def test_pipeline(self, db: Db) -> None:
        """$match, $unwind, $group, $sort, $project, $skip and $limit compose."""
        await db["orders"].insert_many(
            [
                {"_id": 1, "cust": "a", "items": [{"sku": "x", "q": 2}, {"sku": "y", "q": 1}]},
                {"_id": 2, "cust": "b", "items": [{"sku": "x", "q": 5}]},
                {"_id": 3, "cust": "a", "items": [{"sku": "z", "q": 4}], "void": True},
            ]
        )
        pipeline: list[Doc] = [
            {"$match": {"void": {"$ne": True}}},
            {"$unwind": "$items"},
            {"$group": {"_id": "$items.sku", "total": {"$sum": "$items.q"}, "n": {"$sum": 1}}},
            {"$sort": {"total": -1}},
            {"$project": {"_id": 0, "sku": "$_id", "total": 1, "n": 1}},
            {"$skip": 0},
            {"$limit": 2},
        ]
        got = await (await db["orders"].aggregate(pipeline)).to_list()
        assert got == [{"total": 7, "n": 2, "sku": "x"}, {"total": 1, "n": 1, "sku": "y"}]

    async def test_count_stage(self, db: Db) -> None:
        """$count names the output field."""
        await db["c"].insert_many([{"v": i} for i in range(7)])
        got = await (
            await db["c"].aggregate([{"$match": {"v": {"$gte": 3}}}, {"$count": "k"}])
        ).to_list()
        assert got == [{"k": 4}]

    async def test_cursor_batches(self, db: Db) -> None:
        """aggregate with cursor.batchSize returns a getMore-able cursor."""
        await db["c"].insert_many([{"_id": i} for i in range(5)])
        reply = await db.command(
            {"aggregate": "c", "pipeline": [{"$sort": {"_id": 1}}], "cursor": {"batchSize": 2}}
        )
        assert [d["_id"] for d in reply["cursor"]["firstBatch"]] == [0, 1]
        assert reply["cursor"]["id"] != 0
        rest = await db.command({"getMore": reply["cursor"]["id"], "collection": "c"})
        assert [d["_id"] for d in rest["cursor"]["nextBatch"]] == [2, 3, 4]
        assert rest["cursor"]["id"] == 0


class TestCountDistinct:
    """count and distinct."""

    async def test_count(self, db: Db) -> None:
        """count with a query answers n; estimated_document_count counts everything."""
        await db["c"].insert_many([{"k": i % 3} for i in range(9)])
        reply = await db.command({"count": "c", "query": {"k": 1}})
        assert reply["n"] == 3
        assert await db["c"].estimated_document_count() == 9
        assert await db["c"].count_documents({"k": {"$ne": 1}}) == 6

    async def test_distinct(self, db: Db) -> None:
        """distinct returns each value once, honouring the query; arrays are unwound."""
        await db["c"].insert_many(
            [{"k": "a", "t": ["x", "y"]}, {"k": "b", "t": ["y"]}, {"k": "a", "t": ["z"]}]
        )
        assert sorted(await db["c"].distinct("k")) == ["a", "b"]
        assert sorted(await db["c"].distinct("t", {"k": "a"})) == ["x", "y", "z"]


class TestCollections:
    """create, drop, dropDatabase, listCollections, listDatabases and renameCollection."""

    async def test_create_and_list(self, db: Db) -> None:
        """create makes an empty collection listed with type, options, uuid and idIndex."""
        await db.command({"create": "made"})
        [info] = await (await db.list_collections(filter={"name": "made"})).to_list()
        assert info["name"] == "made"
        assert info["type"] == "collection"
        assert info["options"] == {}
        assert info["info"]["readOnly"] is False
        assert isinstance(info["info"]["uuid"], Binary)
        assert info["info"]["uuid"].subtype == 4
        assert info["idIndex"]["key"] == {"_id": 1}
        assert info["idIndex"]["name"] == "_id_"

    async def test_create_with_pre_and_post_images(self, db: Db) -> None:
        """create keeps changeStreamPreAndPostImages in the collection's options."""
        await db.create_collection("imaged", changeStreamPreAndPostImages={"enabled": True})
        [info] = await (await db.list_collections(filter={"name": "imaged"})).to_list()
        assert info["options"] == {"changeStreamPreAndPostImages": {"enabled": True}}

    async def test_create_existing_with_other_options(self, db: Db) -> None:
        """Creating an existing collection with different options fails with 48 NamespaceExists."""
        await db.command({"create": "c"})
        with pytest.raises(OperationFailure) as caught:
            await db.command({"create": "c", "changeStreamPreAndPostImages": {"enabled": True}})
        assert caught.value.code == 48
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "NamespaceExists"

    async def test_list_collection_names_only(self, db: Db) -> None:
        """nameOnly listCollections returns the names of the database's collections."""
        for name in ("b", "a", "c"):
            await db[name].insert_one({})
        assert sorted(await db.list_collection_names()) == ["a", "b", "c"]

    async def test_drop(self, db: Db) -> None:
        """drop removes the collection and its documents."""
        await db["gone"].insert_one({"x": 1})
        reply = await db.command({"drop": "gone"})
        assert reply["ok"] == 1.0
        assert reply["ns"] == f"{db.name}.gone"
        assert "gone" not in await db.list_collection_names()
        assert await db["gone"].find_one() is None

    async def test_drop_database(self, db: Db) -> None:
        """dropDatabase removes the database from listDatabases."""
        client = db.client
        await db["c"].insert_one({"x": 1})
        assert db.name in await client.list_database_names()
        reply = await db.command("dropDatabase")
        assert reply["ok"] == 1.0
        assert db.name not in await client.list_database_names()

    async def test_list_databases(self, db: Db) -> None:
        """listDatabases lists each database with name, sizeOnDisk and empty, plus totalSize."""
        await db["c"].insert_one({"x": 1})
        reply = await db.client.admin.command("listDatabases")
        entry = next(d for d in reply["databases"] if d["name"] == db.name)
        assert entry["empty"] is False
        assert isinstance(entry["sizeOnDisk"], int)
        assert isinstance(reply["totalSize"], int)
        assert {"admin", "local"} <= {d["name"] for d in reply["databases"]}

    async def test_rename(self, db: Db) -> None:
        """renameCollection moves the documents; an existing target needs dropTarget."""
        await db["src"].insert_one({"_id": 1})
        await db["dst"].insert_one({"_id": 2})
        admin = db.client.admin
        with pytest.raises(OperationFailure) as caught:
            await admin.command({"renameCollection": f"{db.name}.src", "to": f"{db.name}.dst"})
        assert caught.value.code == 48
        await admin.command(
            {"renameCollection": f"{db.name}.src", "to": f"{db.name}.dst", "dropTarget": True}
        )
        assert await db["dst"].find_one() == {"_id": 1}
        assert "src" not in await db.list_collection_names()

    async def test_rename_missing_source(self, db: Db) -> None:
        """Renaming a collection that does not exist fails with 26 NamespaceNotFound."""
        with pytest.raises(OperationFailure) as caught:
            await db.client.admin.command(
                {"renameCollection": f"{db.name}.nope", "to": f"{db.name}.other"}
            )
        assert caught.value.code == 26
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "NamespaceNotFound"


class TestIndexes:
    """createIndexes, listIndexes and dropIndexes."""

    async def test_create_reply(self, db: Db) -> None:
        """createIndexes reports the index counts and whether it created the collection."""
        reply = await db.command(
            {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]}
        )
        assert reply["createdCollectionAutomatically"] is True
        assert reply["numIndexesBefore"] == 1
        assert reply["numIndexesAfter"] == 2
        assert reply["ok"] == 1.0

    async def test_list_shows_unique_and_ttl(self, db: Db) -> None:
        """listIndexes shows _id_, a unique index and a TTL index's expireAfterSeconds."""
        await db["c"].create_index("email", unique=True)
        await db["c"].create_index([("at", ASCENDING)], expireAfterSeconds=3600)
        await db["c"].create_index([("a", ASCENDING), ("b", DESCENDING)], name="ab")
        indexes = await (await db["c"].list_indexes()).to_list()
        assert [(i["name"], dict(i["key"])) for i in indexes] == [
            ("_id_", {"_id": 1}),
            ("email_1", {"email": 1}),
            ("at_1", {"at": 1}),
            ("ab", {"a": 1, "b": -1}),
        ]
        assert all(i["v"] == 2 for i in indexes)
        by_name = {i["name"]: i for i in indexes}
        assert by_name["email_1"]["unique"] is True
        assert by_name["at_1"]["expireAfterSeconds"] == 3600
        assert "unique" not in by_name["ab"]

    async def test_drop_index(self, db: Db) -> None:
        """dropIndexes removes one index and reports nIndexesWas."""
        await db["c"].create_index("a")
        reply = await db.command({"dropIndexes": "c", "index": "a_1"})
        assert reply["nIndexesWas"] == 2
        names = [i["name"] async for i in await db["c"].list_indexes()]
        assert names == ["_id_"]

    async def test_drop_missing_index(self, db: Db) -> None:
        """Dropping an index that does not exist fails with 27 IndexNotFound."""
        await db["c"].insert_one({})
        with pytest.raises(OperationFailure) as caught:
            await db.command({"dropIndexes": "c", "index": "nope_1"})
        assert caught.value.code == 27
        assert caught.value.details is not None
        assert caught.value.details["codeName"] == "IndexNotFound"

    async def test_drop_all_keeps_id(self, db: Db) -> None:
        """dropIndexes '*' drops every index but _id_."""
        await db["c"].create_index("a")
        await db["c"].create_index("b", unique=True)
        await db["c"].drop_indexes()
        assert [i["name"] async for i in await db["c"].list_indexes()] == ["_id_"]
