"""What both relays share: the payload is json_util's relaxed Extended JSON, ids are stable,
templates fill from the event, a missing client library names its extra."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, MinKey, ObjectId, Regex, Timestamp, json_util
from bson.json_util import RELAXED_JSON_OPTIONS

from changestream_worker import ChangeEvent, PermanentError
from changestream_worker.handlers._relay import (
    PAYLOAD_FIELDS,
    message_id,
    payload,
    prefix_pattern,
    render,
    safe_url,
)
from changestream_worker.testing.factories import make_event

DOCS: list[dict[str, Any]] = [
    {"_id": ObjectId(), "a": [1.5, "x", None, True], "at": datetime(2024, 1, 2, tzinfo=UTC)},
    {"_id": 1, "n": Int64(2**40), "dec": Decimal128("1.10"), "bin": Binary(b"\x01", 0)},
    {"_id": "s", "re": Regex("^a", "i"), "deep": {"k": [ObjectId(), {"t": Timestamp(5, 6)}]}},
    {"_id": 2, "nan": float("nan"), "inf": float("-inf"), "old": datetime(1900, 1, 1, tzinfo=UTC)},
    {"_id": 3, "min": MinKey(), "text": 'é漢\n"q"'},
]


class TestPayload:
    @pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d["_id"]))
    def test_payload_is_exactly_json_utils_relaxed_form(self, doc: dict[str, Any]) -> None:
        """For BSON types of every kind (and NaN, old dates), the payload is the text
        json_util.dumps gives in relaxed mode for the listed fields."""
        event = make_event("update", doc["_id"], doc)
        fields = {k: event.raw[k] for k in PAYLOAD_FIELDS if k in event.raw}
        assert "wallTime" in event.raw and "wallTime" not in fields
        expected = json_util.dumps(fields, json_options=RELAXED_JSON_OPTIONS)
        assert payload(event).decode() == expected


class TestIdsAndTemplates:
    def test_message_id_is_the_token_and_bounded(self) -> None:
        """The id is the resume token's hex; an over-long token becomes a fixed digest."""
        event = make_event("insert", 1)
        assert message_id(event) == event.token["_data"]
        long = ChangeEvent({**event.raw, "_id": {"_data": "82" + "A" * 400}})
        assert message_id(long).startswith("sha256-") and len(message_id(long)) < 100
        assert message_id(long) == message_id(ChangeEvent(dict(long.raw)))

    def test_templates_fill_paths_and_name_a_missing_one(self) -> None:
        """Fields fill from the event; a missing one raises PermanentError naming it."""
        event = make_event("insert", 7, {"_id": 7, "region": "eu"}, coll="orders", db="shop")
        assert render("cdc.{ns.db}.{ns.coll}.{fullDocument.region}", event) == "cdc.shop.orders.eu"
        with pytest.raises(PermanentError, match=r"\{fullDocument.zone\}"):
            render("x.{fullDocument.zone}", event)

    def test_prefix_pattern_and_safe_url(self) -> None:
        """A template's literal prefix + wildcard; URLs lose their credentials."""
        assert prefix_pattern("cdc.{ns.db}.{ns.coll}", ">") == "cdc.>"
        assert prefix_pattern("a.b.x{ns.coll}", ">") == "a.b.>"
        assert prefix_pattern("{ns.coll}.x", ">") == ">"
        assert prefix_pattern("fixed.subject", ">") == "fixed.subject"
        assert safe_url("amqp://u:secret@h:5672/v") == "amqp://h:5672/v"
        assert safe_url("nats://h:4222") == "nats://h:4222"


class TestMissingExtra:
    @pytest.mark.parametrize(
        ("module", "blocked", "extra"),
        [("nats_relay", "nats", "nats"), ("amqp_relay", "aio_pika", "amqp")],
    )
    def test_importing_a_relay_without_its_library_names_the_extra(
        self, module: str, blocked: str, extra: str
    ) -> None:
        """With its client library missing, importing the relay raises MissingExtraError
        naming the extra to install."""
        code = (
            f"import sys; sys.modules[{blocked!r}] = None\n"
            "from changestream_worker.errors import MissingExtraError\n"
            "try:\n"
            f"    import changestream_worker.handlers.{module}\n"
            "except MissingExtraError as exc:\n"
            "    print(exc.extra, '|', exc)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert out.startswith(f"{extra} |")
        assert f"changestream-worker[{extra}]" in out
