"""Newer change-stream forms: expanded events, disambiguated paths, split events, stage rules."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern

from tests.conformance._util import AWAIT_MS, next_change

Doc = dict[str, Any]
Db = AsyncDatabase[Doc]


class TestDisambiguatedPaths:
    """updateDescription.disambiguatedPaths (shown with showExpandedEvents)."""

    async def test_numeric_field_name(self, db: Db) -> None:
        """A field named like an index is spelled out, array indexes as integers."""
        await db["c"].insert_one({"_id": 1, "a": [{"1": 1}], "m": {"2": 0}})
        async with await db["c"].watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as s:
            await db["c"].update_one({"_id": 1}, {"$set": {"a.0.1": 5, "m.2": 1}})
            desc = (await next_change(s))["updateDescription"]
        assert desc["updatedFields"] == {"a.0.1": 5, "m.2": 1}
        assert desc["disambiguatedPaths"] == {"a.0.1": ["a", 0, "1"], "m.2": ["m", "2"]}

    async def test_absent_without_ambiguity_or_expansion(self, db: Db) -> None:
        """Plain paths, or a stream without showExpandedEvents, carry no disambiguatedPaths."""
        await db["c"].insert_one({"_id": 1, "a": {"1": 1}, "b": 0})
        async with await db["c"].watch(max_await_time_ms=AWAIT_MS) as plain:
            async with await db["c"].watch(
                show_expanded_events=True, max_await_time_ms=AWAIT_MS
            ) as expanded:
                await db["c"].update_one({"_id": 1}, {"$set": {"b": 1}})
                await db["c"].update_one({"_id": 1}, {"$set": {"a.1": 2}})
                assert (
                    "disambiguatedPaths" not in (await next_change(expanded))["updateDescription"]
                )
                assert "disambiguatedPaths" in (await next_change(expanded))["updateDescription"]
            await next_change(plain)
            assert "disambiguatedPaths" not in (await next_change(plain))["updateDescription"]


class TestExpandedEvents:
    """showExpandedEvents: DDL events with operationDescription."""

    async def test_rename_describes_target(self, db: Db) -> None:
        """A rename over an existing target names it and the dropped target's UUID."""
        await db["c"].insert_one({"_id": 1})
        await db["target"].insert_one({"_id": 2})
        async with await db["c"].watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as s:
            await db["c"].rename("target", dropTarget=True)
            event = await next_change(s)
        assert event["operationType"] == "rename"
        assert event["operationDescription"]["to"] == {"db": db.name, "coll": "target"}
        assert "dropTarget" in event["operationDescription"]

    async def test_view_creation_is_reported(self, db: Db) -> None:
        """Creating a view is a create event with its definition."""
        await db["src"].insert_one({"_id": 1})
        async with await db.watch(show_expanded_events=True, max_await_time_ms=AWAIT_MS) as s:
            await db.create_collection("v", viewOn="src", pipeline=[{"$match": {"_id": 1}}])
            event = await next_change(s)
        assert event["operationType"] == "create"
        assert event["ns"] == {"db": db.name, "coll": "v"}
        assert event["operationDescription"]["viewOn"] == "src"


class TestSplitLargeEvent:
    """$changeStreamSplitLargeEvent."""

    async def test_event_over_16_mib_comes_in_fragments(self, db: Db) -> None:
        """An update event with ~20 MiB of pre- and post-image arrives in two fragments."""
        coll = await db.create_collection("c", changeStreamPreAndPostImages={"enabled": True})
        await coll.insert_one({"_id": 1, "v": "a" * (10 * 1024 * 1024)})
        async with await coll.watch(
            [{"$changeStreamSplitLargeEvent": {}}],
            full_document_before_change="required",
            max_await_time_ms=AWAIT_MS,
        ) as s:
            await coll.update_one({"_id": 1}, {"$set": {"v": "b" * (10 * 1024 * 1024)}})
            first = await next_change(s)
            second = await next_change(s)
        assert first["splitEvent"] == {"fragment": 1, "of": 2}
        assert second["splitEvent"] == {"fragment": 2, "of": 2}
        assert first["_id"] != second["_id"]
        merged = {**first, **second}
        assert merged["fullDocumentBeforeChange"]["v"][0] == "a"
        assert merged["updateDescription"]["updatedFields"]["v"][0] == "b"

    async def test_must_be_last(self, db: Db) -> None:
        """The split stage anywhere but last is refused."""
        with pytest.raises(OperationFailure):
            await db["c"].watch([{"$changeStreamSplitLargeEvent": {}}, {"$match": {}}])


class TestStageRules:
    """What a change-stream pipeline may do."""

    async def test_projecting_out_id_is_fatal(self, db: Db) -> None:
        """Removing _id fails the stream with 280 and NonResumableChangeStreamError."""
        async with await db["c"].watch([{"$project": {"_id": 0}}], max_await_time_ms=AWAIT_MS) as s:
            await db["c"].insert_one({"_id": 1})
            with pytest.raises(OperationFailure) as caught:
                await next_change(s)
        assert caught.value.code == 280
        assert caught.value.has_error_label("NonResumableChangeStreamError")

    async def test_dotted_project_path_nests(self, db: Db) -> None:
        """A dotted computed $project path sets a sub-field, not a key with a dot."""
        pipeline = [{"$project": {"operationType": 1, "ns.viewOn": "db.coll"}}]
        async with await db["c"].watch(pipeline, max_await_time_ms=AWAIT_MS) as s:
            await db["c"].insert_one({"_id": 1})
            event = await next_change(s)
        assert event["ns"] == {"viewOn": "db.coll"}
        assert "ns.viewOn" not in event

    async def test_read_concern_local_refused(self, db: Db) -> None:
        """A change stream refuses an explicit read concern other than majority."""
        with pytest.raises(OperationFailure):
            await db.get_collection("c", read_concern=ReadConcern("local")).watch()
        async with await db.get_collection("c", read_concern=ReadConcern("majority")).watch():
            pass
