"""Update forms handlers send: arrayFilters, positional paths, pipelines, let, $-prefixed fields."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure, WriteError

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


class TestArrayFilters:
    """``$[identifier]`` with arrayFilters, ``$[]`` and the positional ``$``."""

    async def test_filtered_elements_only(self, db: Db) -> None:
        """Only the array elements the filter selects are changed."""
        await db["c"].insert_one({"_id": 1, "lines": [{"sku": "a", "q": 1}, {"sku": "b", "q": 5}]})
        await db["c"].update_one(
            {"_id": 1}, {"$inc": {"lines.$[l].q": 10}}, array_filters=[{"l.q": {"$gt": 2}}]
        )
        doc = await db["c"].find_one({"_id": 1})
        assert doc is not None
        assert [line["q"] for line in doc["lines"]] == [1, 15]

    async def test_all_elements(self, db: Db) -> None:
        """``$[]`` changes every element."""
        await db["c"].insert_one({"_id": 1, "v": [1, 2, 3]})
        await db["c"].update_one({"_id": 1}, {"$mul": {"v.$[]": 2}})
        assert (await db["c"].find_one({"_id": 1}) or {})["v"] == [2, 4, 6]

    async def test_positional_follows_the_query(self, db: Db) -> None:
        """``$`` is the first element the query matched."""
        await db["c"].insert_one({"_id": 1, "v": [4, 7, 9]})
        await db["c"].update_one({"_id": 1, "v": {"$gt": 5}}, {"$set": {"v.$": 0}})
        assert (await db["c"].find_one({"_id": 1}) or {})["v"] == [4, 0, 9]

    async def test_unused_filter_refused(self, db: Db) -> None:
        """An array filter no path uses is an error (FailedToParse)."""
        await db["c"].insert_one({"_id": 1, "v": [1]})
        with pytest.raises(WriteError) as caught:
            await db["c"].update_one({"_id": 1}, {"$set": {"w": 1}}, array_filters=[{"x": 1}])
        assert caught.value.code == 9


class TestPipelineUpdates:
    """Updates given as an aggregation pipeline."""

    async def test_set_from_other_fields(self, db: Db) -> None:
        """A $set stage computes a field from the document's own fields."""
        await db["c"].insert_one({"_id": 1, "a": 2, "b": 3})
        await db["c"].update_one({"_id": 1}, [{"$set": {"sum": {"$add": ["$a", "$b"]}}}])
        assert (await db["c"].find_one({"_id": 1}) or {})["sum"] == 5

    async def test_unset_and_replace_with(self, db: Db) -> None:
        """$unset removes fields and $replaceWith swaps the document, keeping its _id."""
        await db["c"].insert_one({"_id": 1, "a": 1, "inner": {"x": 9}})
        await db["c"].update_one({"_id": 1}, [{"$unset": "a"}])
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "inner": {"x": 9}}
        await db["c"].update_one({"_id": 1}, [{"$replaceWith": {"$mergeObjects": ["$inner"]}}])
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "x": 9}

    async def test_stage_not_allowed(self, db: Db) -> None:
        """A stage outside the update subset is refused."""
        await db["c"].insert_one({"_id": 1})
        with pytest.raises(WriteError):
            await db["c"].update_one({"_id": 1}, [{"$group": {"_id": None}}])


class TestLet:
    """``let`` variables in find, update, delete, findAndModify and aggregate."""

    async def test_find_with_let(self, db: Db) -> None:
        """``$$name`` in a find's $expr is the let value."""
        await db["c"].insert_many([{"_id": 1, "a": 1}, {"_id": 2, "a": 2}])
        found = await db["c"].find({"$expr": {"$eq": ["$a", "$$want"]}}, let={"want": 2}).to_list()
        assert [d["_id"] for d in found] == [2]

    async def test_update_and_delete_with_let(self, db: Db) -> None:
        """update and delete bind let variables in their filters and pipelines."""
        await db["c"].insert_many([{"_id": 1, "a": 1}, {"_id": 2, "a": 2}])
        await db["c"].update_one(
            {"$expr": {"$eq": ["$_id", "$$id"]}},
            [{"$set": {"b": "$$val"}}],
            let={"id": 1, "val": "x"},
        )
        assert (await db["c"].find_one({"_id": 1}) or {})["b"] == "x"
        result = await db["c"].delete_many({"$expr": {"$gt": ["$a", "$$min"]}}, let={"min": 1})
        assert result.deleted_count == 1

    async def test_find_one_and_update_with_let(self, db: Db) -> None:
        """findAndModify binds let variables."""
        await db["c"].insert_one({"_id": 1, "a": 5})
        doc = await db["c"].find_one_and_update(
            {"$expr": {"$eq": ["$a", "$$a"]}},
            {"$set": {"hit": True}},
            let={"a": 5},
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None and doc["hit"] is True

    async def test_undefined_variable(self, db: Db) -> None:
        """An undefined variable is a command error, not an internal one."""
        await db["c"].insert_one({"_id": 1})
        with pytest.raises(OperationFailure) as caught:
            await db["c"].find({"$expr": {"$eq": ["$_id", "$$nope"]}}).to_list()
        assert caught.value.code == 17276


class TestFieldNames:
    """Dotted and $-prefixed field names by the 5.0+ rules, and _id: null."""

    async def test_insert_allows_dollar_fields(self, db: Db) -> None:
        """An insert keeps top-level and nested $-prefixed field names."""
        await db["c"].insert_one({"_id": 1, "$price": 5, "nested": {"$db": "x"}})
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "$price": 5, "nested": {"$db": "x"}}

    async def test_dollar_inside_id_refused(self, db: Db) -> None:
        """An _id sub-document may not hold $-prefixed fields."""
        with pytest.raises(WriteError):
            await db["c"].insert_one({"_id": {"$a": 1}})

    async def test_set_of_dollar_field_on_existing_refused(self, db: Db) -> None:
        """$set of a $-prefixed field fails on an existing document but not on an upsert."""
        await db["c"].insert_one({"_id": 1})
        with pytest.raises(WriteError):
            await db["c"].update_one({"_id": 1}, {"$set": {"$hotel": 1}})
        await db["c"].update_one({"_id": 2}, {"$set": {"$hotel": 1}}, upsert=True)
        assert await db["c"].find_one({"_id": 2}) == {"_id": 2, "$hotel": 1}

    async def test_null_id_upsert(self, db: Db) -> None:
        """A document may have _id null; an upsert on it finds it afterwards."""
        await db["c"].update_one({"_id": None}, {"$set": {"n": 1}}, upsert=True)
        await db["c"].update_one({"_id": None}, {"$inc": {"n": 1}}, upsert=True)
        assert await db["c"].find({}).to_list() == [{"_id": None, "n": 2}]

    async def test_dotted_name_in_replacement(self, db: Db) -> None:
        """A replacement document may hold a field name with a dot."""
        await db["c"].insert_one({"_id": 1})
        await db["c"].replace_one({"_id": 1}, {"a.b": 1})
        assert await db["c"].find_one({"_id": 1}) == {"_id": 1, "a.b": 1}
