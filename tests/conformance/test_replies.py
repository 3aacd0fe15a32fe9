"""Replies that must match MongoDB 7.0 exactly: returned versions, batches, limits, errors."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import ReturnDocument, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure, WriteConcernError, WriteError

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


class TestFindAndModify:
    """findAndModify's returned document."""

    async def test_before_with_projection_is_the_old_version(self, db: Db) -> None:
        """returnDocument before + a projection gives the pre-update values."""
        await db["c"].insert_one({"_id": 1, "owner": "a", "epoch": 1, "pad": "x"})
        doc = await db["c"].find_one_and_update(
            {"_id": 1},
            {"$set": {"owner": "b"}, "$inc": {"epoch": 1}},
            projection={"owner": 1, "epoch": 1},
            return_document=ReturnDocument.BEFORE,
        )
        assert doc == {"_id": 1, "owner": "a", "epoch": 1}
        assert (await db["c"].find_one({"_id": 1}) or {})["owner"] == "b"

    async def test_after_with_projection(self, db: Db) -> None:
        """returnDocument after + a projection gives the new values, projected."""
        await db["c"].insert_one({"_id": 1, "owner": "a", "pad": "x"})
        doc = await db["c"].find_one_and_update(
            {"_id": 1},
            {"$set": {"owner": "b"}},
            projection={"pad": 0},
            return_document=ReturnDocument.AFTER,
        )
        assert doc == {"_id": 1, "owner": "b"}

    async def test_upsert_before_returns_none(self, db: Db) -> None:
        """An upsert that inserts returns null when asked for the document before."""
        doc = await db["c"].find_one_and_update({"_id": 7}, {"$set": {"a": 1}}, upsert=True)
        assert doc is None
        assert await db["c"].find_one({"_id": 7}) == {"_id": 7, "a": 1}

    async def test_sort_picks_the_target(self, db: Db) -> None:
        """The sort decides which matching document is modified."""
        await db["c"].insert_many([{"_id": 1, "p": 2}, {"_id": 2, "p": 9}, {"_id": 3, "p": 5}])
        doc = await db["c"].find_one_and_delete({}, sort=[("p", -1)])
        assert doc is not None and doc["_id"] == 2


class TestCollation:
    """Collation with locale and strength in comparisons and sorts."""

    async def test_find_strength_2_ignores_case(self, db: Db) -> None:
        """Strength 2 matches strings that differ only in case; strength 3 does not."""
        await db["c"].insert_many([{"_id": 1, "n": "Anna"}, {"_id": 2, "n": "anna"}])
        loose = (
            await db["c"].find({"n": "ANNA"}, collation={"locale": "en", "strength": 2}).to_list()
        )
        assert sorted(d["_id"] for d in loose) == [1, 2]
        strict = (
            await db["c"].find({"n": "anna"}, collation={"locale": "en", "strength": 3}).to_list()
        )
        assert [d["_id"] for d in strict] == [2]

    async def test_strength_1_ignores_accents(self, db: Db) -> None:
        """Strength 1 matches strings that differ only in accents."""
        await db["c"].insert_one({"_id": 1, "n": "café"})
        found = (
            await db["c"].find({"n": "CAFE"}, collation={"locale": "fr", "strength": 1}).to_list()
        )
        assert [d["_id"] for d in found] == [1]

    async def test_sort_is_case_insensitive_first(self, db: Db) -> None:
        """A collated sort puts 'b' between 'A' and 'C' (binary order would not)."""
        await db["c"].insert_many([{"_id": i, "n": n} for i, n in enumerate(["C", "b", "A"])])
        docs = await db["c"].find({}, sort=[("n", 1)], collation={"locale": "en"}).to_list()
        assert [d["n"] for d in docs] == ["A", "b", "C"]

    async def test_delete_and_find_and_modify_apply_it(self, db: Db) -> None:
        """delete and findAndModify match with the collation they are given."""
        await db["c"].insert_many([{"_id": 1, "n": "X"}, {"_id": 2, "n": "y"}])
        col = {"locale": "en", "strength": 2}
        assert (await db["c"].delete_one({"n": "x"}, collation=col)).deleted_count == 1
        doc = await db["c"].find_one_and_update({"n": "Y"}, {"$set": {"hit": 1}}, collation=col)
        assert doc is not None and doc["_id"] == 2


class TestHintAndDistinct:
    """hint is checked; distinct answers in order."""

    async def test_unknown_hint_refused(self, db: Db) -> None:
        """A hint that names no index is a query error (BadValue)."""
        await db["c"].insert_one({"_id": 1, "a": 1})
        with pytest.raises(OperationFailure) as caught:
            await db["c"].find({"a": 1}, hint="no_such_index").to_list()
        assert caught.value.code == 2
        await db["c"].create_index("a", name="a_1")
        assert len(await db["c"].find({"a": 1}, hint="a_1").to_list()) == 1

    async def test_distinct_sorted(self, db: Db) -> None:
        """distinct lists each value once, array elements singly, in ascending order."""
        await db["c"].insert_many([{"v": 3}, {"v": [1, 3]}, {"v": 2}, {"w": 0}])
        assert await db["c"].distinct("v") == [1, 2, 3]


class TestErrors:
    """Error details drivers and handlers read."""

    async def test_duplicate_key_names_pattern_and_value(self, db: Db) -> None:
        """A duplicate on a compound unique index carries keyPattern and keyValue."""
        await db["c"].create_index([("a", 1), ("b", 1)], unique=True)
        await db["c"].insert_one({"a": 1, "b": "x"})
        with pytest.raises(DuplicateKeyError) as caught:
            await db["c"].insert_one({"a": 1, "b": "x"})
        details = caught.value.details or {}
        assert details["keyPattern"] == {"a": 1, "b": 1}
        assert details["keyValue"] == {"a": 1, "b": "x"}

    async def test_duplicate_by_update(self, db: Db) -> None:
        """An update that collides on a unique index fails with 11000 and changes nothing."""
        await db["c"].create_index("e", unique=True)
        await db["c"].insert_many([{"_id": 1, "e": "a"}, {"_id": 2, "e": "b"}])
        with pytest.raises(DuplicateKeyError):
            await db["c"].update_one({"_id": 2}, {"$set": {"e": "a"}})
        assert (await db["c"].find_one({"_id": 2}) or {})["e"] == "b"

    async def test_unsatisfiable_write_concern(self, db: Db) -> None:
        """w: 50 on a small replica set applies the write and answers a writeConcernError."""
        coll = db.get_collection("c", write_concern=WriteConcern(w=50))
        with pytest.raises(WriteConcernError) as caught:
            await coll.insert_one({"_id": 1})
        assert caught.value.code == 100
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1}

    async def test_document_over_16_mib_refused(self, db: Db) -> None:
        """A document larger than 16 MiB is refused, by insert and by update."""
        with pytest.raises((WriteError, OperationFailure)):
            await db["c"].insert_one({"_id": 1, "blob": "x" * (16 * 1024 * 1024)})
        await db["c"].insert_one({"_id": 2, "blob": "x" * (9 * 1024 * 1024)})
        with pytest.raises(WriteError) as caught:
            await db["c"].update_one({"_id": 2}, {"$set": {"more": "y" * (9 * 1024 * 1024)}})
        assert caught.value.code == 17419


class TestBatches:
    """Cursor batch sizes."""

    async def test_find_first_batch_is_101(self, db: Db) -> None:
        """Without batchSize, find's first batch holds 101 documents and the cursor stays open."""
        await db["c"].insert_many([{"_id": i} for i in range(250)])
        reply = await db.command({"find": "c"})
        assert len(reply["cursor"]["firstBatch"]) == 101
        assert reply["cursor"]["id"] != 0
        assert len(await db["c"].find().to_list()) == 250

    async def test_aggregate_first_batch_is_101(self, db: Db) -> None:
        """The same default holds for aggregate's first batch."""
        await db["c"].insert_many([{"_id": i} for i in range(150)])
        reply = await db.command({"aggregate": "c", "pipeline": [], "cursor": {}})
        assert len(reply["cursor"]["firstBatch"]) == 101
        assert reply["cursor"]["id"] != 0
        await db.command({"killCursors": "c", "cursors": [reply["cursor"]["id"]]})


class TestAggregateForms:
    """Database-level aggregate, $out and $merge."""

    async def test_documents_stage(self, db: Db) -> None:
        """{aggregate: 1} with $documents runs the pipeline over literal documents."""
        docs = await db.aggregate([{"$documents": [{"x": 1}, {"x": 2}]}, {"$match": {"x": 2}}])
        assert [d async for d in docs] == [{"x": 2}]

    async def test_out_replaces_target(self, db: Db) -> None:
        """$out writes the results into the target collection, replacing what was there."""
        await db["src"].insert_many([{"_id": 1, "v": 1}, {"_id": 2, "v": 2}])
        await db["dst"].insert_one({"_id": 9})
        await (await db["src"].aggregate([{"$match": {"v": 2}}, {"$out": "dst"}])).to_list()
        assert await db["dst"].find().to_list() == [{"_id": 2, "v": 2}]

    async def test_merge_updates_and_inserts(self, db: Db) -> None:
        """$merge merges into matching documents and inserts the rest."""
        await db["src"].insert_many([{"_id": 1, "v": 10}, {"_id": 2, "v": 20}])
        await db["dst"].insert_one({"_id": 1, "keep": True})
        await (await db["src"].aggregate([{"$merge": {"into": "dst"}}])).to_list()
        assert await db["dst"].find().sort("_id").to_list() == [
            {"_id": 1, "keep": True, "v": 10},
            {"_id": 2, "v": 20},
        ]
