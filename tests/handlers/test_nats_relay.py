"""nats_relay against the real NATS JetStream at NATS_URL: ids, payload, refusals, outages."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest
from bson import ObjectId
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from changestream_worker import (
    BatchItemFailures,
    ChangeEvent,
    ConfigError,
    PermanentError,
    TransientError,
)
from changestream_worker.handlers.nats_relay import NatsRelay, NatsRelayOptions
from changestream_worker.testing.factories import make_event
from tests.handlers._proxy import Proxy
from tests.handlers._proxy import offline_context as context
from tests.support.harness import unique

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
async def js() -> AsyncIterator[JetStreamContext]:
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except Exception as exc:  # any client error means the service is not there
        pytest.skip(f"NATS at {NATS_URL} unreachable: {exc}")
    yield nc.jetstream()
    await nc.close()


@pytest.fixture
async def stream(js: JetStreamContext) -> AsyncIterator[tuple[str, str]]:
    """(stream name, subject prefix) of a fresh stream capturing ``prefix.>``."""
    name, prefix = unique("T"), unique("cdc")
    await js.add_stream(name=name, subjects=[f"{prefix}.>"], max_msg_size=4096)
    yield name, prefix
    await js.delete_stream(name)


async def messages(js: JetStreamContext, name: str) -> list[Any]:
    info = await js.stream_info(name)
    return [await js.get_msg(name, seq) for seq in range(1, (info.state.messages or 0) + 1)]


async def started(prefix: str, url: str = NATS_URL, **over: Any) -> NatsRelay:
    relay = NatsRelay(
        NatsRelayOptions(url=url, subject=f"{prefix}.{{ns.coll}}.{{operationType}}", **over)
    )
    await relay.start(context())
    return relay


class TestNatsRelay:
    async def test_batch_lands_once_in_order_and_a_replay_is_dropped(
        self, js: JetStreamContext, stream: tuple[str, str]
    ) -> None:
        """60 events published as one batch land as 60 messages in stream order, each with
        Nats-Msg-Id = the event id; the same batch again (a restart) adds none."""
        name, prefix = stream
        relay = await started(prefix)
        events = [make_event("insert", i) for i in range(40)]
        events += [make_event("update", i, {"_id": i, "n": 1}) for i in range(20)]
        try:
            await relay.handle_batch(events, context())
            await relay.handle_batch(events, context())
        finally:
            await relay.stop()
        stored = await messages(js, name)
        assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.event_id for e in events]
        assert [m.subject for m in stored] == [f"{prefix}.c.{e.operation_type}" for e in events]

    async def test_payload_is_relaxed_extended_json_of_the_listed_fields(
        self, js: JetStreamContext, stream: tuple[str, str]
    ) -> None:
        """An update with lookup travels as relaxed Extended JSON: _id, operationType, ns,
        documentKey, clusterTime ($timestamp), fullDocument ($oid), updateDescription."""
        name, prefix = stream
        oid = ObjectId()
        event = make_event("update", oid, {"_id": oid, "qty": 3})
        relay = await started(prefix)
        try:
            await relay.handle(event, context())
        finally:
            await relay.stop()
        (msg,) = await messages(js, name)
        body = json.loads(msg.data)
        assert sorted(body) == sorted(
            [
                "_id",
                "operationType",
                "ns",
                "documentKey",
                "clusterTime",
                "fullDocument",
                "updateDescription",
            ]
        )
        assert body["fullDocument"] == {"_id": {"$oid": str(oid)}, "qty": 3}
        ts = event.cluster_time
        assert ts is not None
        assert body["clusterTime"] == {"$timestamp": {"t": ts.time, "i": ts.inc}}
        assert body["updateDescription"]["updatedFields"] == {"qty": 3}
        assert body["_id"] == {"_data": event.event_id}

    async def test_refused_messages_are_reported_by_index_with_the_reason(
        self, js: JetStreamContext, stream: tuple[str, str]
    ) -> None:
        """Events larger than the stream's max_msg_size, without the subject's field, or
        with a space in it: reported per index as permanent with the reason; the rest stored."""
        name, prefix = stream
        relay = NatsRelay(
            NatsRelayOptions(url=NATS_URL, subject=f"{prefix}.{{fullDocument.region}}")
        )
        await relay.start(context())
        batch = [
            make_event("insert", 1, {"_id": 1, "region": "eu"}),
            make_event("insert", 2, {"_id": 2, "region": "eu", "pad": "x" * 8000}),
            make_event("insert", 3, {"_id": 3}),
            make_event("insert", 4, {"_id": 4, "region": "us"}),
            make_event("insert", 5, {"_id": 5, "region": "a b"}),
        ]
        try:
            with pytest.raises(BatchItemFailures) as info:
                await relay.handle_batch(batch, context())
        finally:
            await relay.stop()
        failures = info.value.failures
        assert sorted(failures) == [1, 2, 4]
        assert all(isinstance(e, PermanentError) for e in failures.values())
        assert "size" in str(failures[1]).lower()
        assert "not a valid NATS subject" in str(failures[4])
        assert "fullDocument.region" in str(failures[2])
        assert [m.subject for m in await messages(js, name)] == [f"{prefix}.eu", f"{prefix}.us"]

    async def test_a_subject_no_stream_captures_is_a_config_error_at_start(
        self, js: JetStreamContext
    ) -> None:
        """Starting on a subject prefix no stream captures fails with a ConfigError that
        names the option and the subject."""
        relay = NatsRelay(NatsRelayOptions(url=NATS_URL, subject=unique("nowhere") + ".{ns.coll}"))
        with pytest.raises(ConfigError, match=r"handlers\.relay\.options\.subject: no JetStream"):
            await relay.start(context())
        await relay.stop()

    async def test_create_stream_makes_one_with_the_duplicate_window(
        self, js: JetStreamContext
    ) -> None:
        """create_stream creates a stream over the subject's prefix with the configured
        duplicate window, and the relay publishes into it."""
        name, prefix = unique("C"), unique("cdc")
        relay = await started(prefix, create_stream=name, duplicate_window=30.0)
        try:
            await relay.handle(make_event("insert", 1), context())
            info = await js.stream_info(name)
            assert info.config.subjects == [f"{prefix}.>"]
            assert info.config.duplicate_window == 30.0
            assert info.state.messages == 1
        finally:
            await relay.stop()
            await js.delete_stream(name)


class TestNatsRelayOutage:
    async def test_lost_connection_is_transient_and_recovers(
        self, js: JetStreamContext, stream: tuple[str, str]
    ) -> None:
        """With the connection cut, a batch fails as TransientError and warnings are
        logged; once NATS is back the same batch lands, once."""
        name, prefix = stream
        target = urlsplit(NATS_URL)
        proxy = await Proxy(target.hostname or "127.0.0.1", target.port or 4222).start()
        relay = await started(
            prefix, url=f"nats://127.0.0.1:{proxy.port}", ack_timeout=0.5, connect_attempts=1
        )
        events: list[ChangeEvent] = [make_event("insert", i) for i in range(10)]
        try:
            await proxy.cut()
            with capture_logs() as logs, pytest.raises(TransientError):
                for _ in range(3):  # the client notices the cut on its own schedule
                    await relay.handle_batch(events, context())
            assert any(e["log_level"] == "warning" for e in logs)
            await proxy.start()
            for _ in range(20):
                try:
                    await relay.handle_batch(events, context())
                    break
                except TransientError:
                    continue
        finally:
            await relay.stop()
            await proxy.cut()
        stored = await messages(js, name)
        assert [m.headers["Nats-Msg-Id"] for m in stored] == [e.event_id for e in events]
