"""amqp_relay against the real RabbitMQ at AMQP_URL: confirms, ids, refusals, outages."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from structlog.testing import capture_logs

from changestream_worker import (
    BatchItemFailures,
    ConfigError,
    PermanentError,
    TransientError,
)
from changestream_worker.handlers.amqp_relay import AmqpRelay, AmqpRelayOptions
from changestream_worker.testing.factories import make_event
from tests.handlers._proxy import Proxy
from tests.handlers._proxy import offline_context as context
from tests.support.harness import unique

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@dataclass
class Broker:
    channel: AbstractChannel
    exchange: str
    prefix: str
    queue: AbstractQueue

    async def drain(self) -> list[Any]:
        out = []
        while (msg := await self.queue.get(no_ack=True, fail=False)) is not None:
            out.append(msg)
        return out


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A fresh topic exchange with a queue bound to ``prefix.#``; deleted afterwards."""
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
    except Exception as exc:  # any client error means the service is not there
        pytest.skip(f"RabbitMQ at {AMQP_URL} unreachable: {exc}")
    channel = await conn.channel()
    name, prefix = unique("x"), unique("cdc")
    exchange = await channel.declare_exchange(name, "topic")
    queue = await channel.declare_queue(unique("q"))
    await queue.bind(exchange, f"{prefix}.#")
    try:
        yield Broker(channel, name, prefix, queue)
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await conn.close()


async def started(b: Broker, url: str = AMQP_URL, **over: Any) -> AmqpRelay:
    options = {"exchange": b.exchange, "routing_key": f"{b.prefix}.{{ns.coll}}", **over}
    relay = AmqpRelay(AmqpRelayOptions(url=url, **options))
    await relay.start(context())
    return relay


class TestAmqpRelay:
    async def test_batch_is_confirmed_persistent_and_repeats_keep_their_id(
        self, broker: Broker
    ) -> None:
        """30 events as one batch arrive in order, persistent JSON with message_id = the
        event id; the batch again (a restart) repeats them with the same ids."""
        relay = await started(broker)
        events = [make_event("insert", i, {"_id": i, "n": i}) for i in range(30)]
        try:
            await relay.handle_batch(events, context())
            await relay.handle_batch(events[:5], context())
        finally:
            await relay.stop()
        got = await broker.drain()
        ids = [e.event_id for e in events]
        assert [m.message_id for m in got] == ids + ids[:5]
        assert {m.delivery_mode for m in got} == {aio_pika.DeliveryMode.PERSISTENT}
        assert {m.content_type for m in got} == {"application/json"}
        assert json.loads(got[3].body)["fullDocument"] == {"_id": 3, "n": 3}
        assert got[0].routing_key == f"{broker.prefix}.c"

    async def test_unroutable_and_oversized_messages_are_refused_by_index(
        self, broker: Broker
    ) -> None:
        """A routing key no queue is bound to and a message over max_message_bytes are
        reported per index as permanent with the reason; the others are delivered."""
        relay = await started(broker, routing_key="{fullDocument.to}", max_message_bytes=2000)
        to = f"{broker.prefix}.ok"
        batch = [
            make_event("insert", 1, {"_id": 1, "to": to}),
            make_event("insert", 2, {"_id": 2, "to": unique("nobody")}),
            make_event("insert", 3, {"_id": 3, "to": to, "pad": "x" * 5000}),
            make_event("insert", 4, {"_id": 4, "to": to}),
        ]
        try:
            with pytest.raises(BatchItemFailures) as info:
                await relay.handle_batch(batch, context())
            failures = info.value.failures
            assert sorted(failures) == [1, 2]
            assert all(isinstance(e, PermanentError) for e in failures.values())
            assert "unroutable" in str(failures[1])
            assert "max_message_bytes" in str(failures[2])
            await relay.handle(make_event("insert", 5, {"_id": 5, "to": to}), context())
        finally:
            await relay.stop()
        assert [json.loads(m.body)["documentKey"]["_id"] for m in await broker.drain()] == [
            1,
            4,
            5,
        ]

    async def test_a_missing_exchange_is_a_config_error_at_start(self, broker: Broker) -> None:
        """Starting on an exchange that does not exist (and no exchange_type to declare it)
        fails with a ConfigError naming the option."""
        relay = AmqpRelay(AmqpRelayOptions(url=AMQP_URL, exchange=unique("missing")))
        with pytest.raises(ConfigError, match=r"handlers\.relay\.options\.exchange: exchange"):
            await relay.start(context())
        await relay.stop()


class TestAmqpRelayOutage:
    async def test_lost_connection_is_transient_and_recovers(self, broker: Broker) -> None:
        """With the connection cut, a batch fails as TransientError with a warning per
        attempt; once RabbitMQ is reachable again the batch is delivered."""
        target = urlsplit(AMQP_URL)
        proxy = await Proxy(target.hostname or "127.0.0.1", target.port or 5672).start()
        url = f"amqp://{target.username}:{target.password}@127.0.0.1:{proxy.port}/"
        relay = await started(broker, url=url, confirm_timeout=1.0)
        events = [make_event("insert", i) for i in range(10)]
        try:
            await proxy.cut()
            await asyncio.sleep(0.2)
            with capture_logs() as logs:
                for _ in range(3):
                    with pytest.raises(TransientError):
                        await relay.handle_batch(events, context())
            failed = [e for e in logs if e["event"] == "amqp_connect_failed"]
            attempts = [e["attempt"] for e in failed]
            assert attempts, "each failed reconnect logs a warning"
            assert attempts == list(range(1, len(attempts) + 1))
            assert all(e["log_level"] == "warning" and "guest" not in e["url"] for e in failed)
            await proxy.start()
            await relay.handle_batch(events, context())
        finally:
            await relay.stop()
            await proxy.cut()
        got = await broker.drain()
        assert [m.message_id for m in got] == [e.event_id for e in events]
