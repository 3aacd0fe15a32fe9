"""The broker relays across a SIGKILLed worker: JetStream exactly once, RabbitMQ at least once."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import nats
import pytest

from tests.e2e.conftest import wait_until
from tests.support.harness import WorkerProcess, config_dict, unique, watcher

# 5,000 events through a worker killed three times: minutes on a loaded 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
TOTAL = 5_000
CONCURRENCY = 16
CHECKPOINT_EVERY = 100
# what a kill can leave handled but not checkpointed: a checkpoint's worth of completed
# events plus every lane's in-flight batch
WINDOW = CHECKPOINT_EVERY + CONCURRENCY * 100


class Jetstream:
    """A fresh stream over ``prefix.>`` on the real NATS."""

    def __init__(self) -> None:
        self.name, self.prefix = unique("CRASH"), unique("crash")

    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    def call(self, fn: Callable[[Any], Any]) -> Any:
        return asyncio.run(self._call(fn))

    def count(self) -> int:
        async def n(js: Any) -> int:
            return int((await js.stream_info(self.name)).state.messages or 0)

        return int(self.call(n))

    def messages(self) -> list[tuple[str, Any]]:
        async def read(js: Any) -> list[tuple[str, Any]]:
            out = []
            for seq in range(1, int((await js.stream_info(self.name)).state.messages) + 1):
                msg = await js.get_msg(self.name, seq)
                out.append((msg.headers["Nats-Msg-Id"], json.loads(msg.data)["documentKey"]))
            return out

        return list(self.call(read))


class Rabbit:
    """A fresh topic exchange and queue bound to ``prefix.#`` on the real RabbitMQ."""

    def __init__(self) -> None:
        self.exchange, self.queue, self.prefix = unique("x"), unique("q"), unique("crash")

    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        conn = await aio_pika.connect(AMQP_URL, timeout=3)
        try:
            return await fn(await conn.channel())
        finally:
            await conn.close()

    def call(self, fn: Callable[[Any], Any]) -> Any:
        return asyncio.run(self._call(fn))

    def count(self) -> int:
        async def n(ch: Any) -> int:
            q = await ch.declare_queue(self.queue, passive=True)
            return int(q.declaration_result.message_count or 0)

        return int(self.call(n))

    def messages(self) -> list[tuple[str, Any]]:
        async def read(ch: Any) -> list[tuple[str, Any]]:
            q = await ch.declare_queue(self.queue, passive=True)
            out = []
            while (m := await q.get(no_ack=True, fail=False)) is not None:
                out.append((m.message_id, json.loads(m.body)["documentKey"]))
            return out

        return list(self.call(read))


@pytest.fixture
def jetstream() -> Iterator[Jetstream]:
    js = Jetstream()
    try:
        js.call(lambda j: j.add_stream(name=js.name, subjects=[f"{js.prefix}.>"]))
    except Exception as exc:  # any client error means the service is not there
        pytest.skip(f"NATS at {NATS_URL} unreachable: {exc}")
    yield js
    js.call(lambda j: j.delete_stream(js.name))


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    r = Rabbit()

    async def declare(ch: Any) -> None:
        x = await ch.declare_exchange(r.exchange, "topic")
        q = await ch.declare_queue(r.queue)
        await q.bind(x, f"{r.prefix}.#")

    try:
        r.call(declare)
    except Exception as exc:  # any client error means the service is not there
        pytest.skip(f"RabbitMQ at {AMQP_URL} unreachable: {exc}")
    yield r

    async def delete(ch: Any) -> None:
        await ch.queue_delete(r.queue)
        await ch.exchange_delete(r.exchange)

    r.call(delete)


def run_with_kills(
    dbs: Any, tmp_path: Path, mongo_uri: str, handler: dict[str, Any], count: Callable[[], int]
) -> None:
    """A worker relaying 5,000 inserts, SIGKILLed three times along the way, then drained."""
    _client, db, state = dbs
    cfg = config_dict(
        mongo_uri,
        db.name,
        state.name,
        [watcher(handlers=["relay"], concurrency=CONCURRENCY)],
        {"relay": handler},
        checkpoint={"interval": "200ms", "max_events": CHECKPOINT_EVERY},
    )
    worker = WorkerProcess(cfg, tmp_path).start()
    wait_until(lambda: state.checkpoints.find_one({}) is not None, 30, "the watcher's start")

    def load() -> None:
        for start in range(0, TOTAL, 100):
            db.items.insert_many([{"_id": i, "seq": i} for i in range(start, start + 100)])
            time.sleep(0.02)

    writer = threading.Thread(target=load)
    writer.start()
    try:
        for mark in (800, 2000, 3200):
            wait_until(lambda m=mark: count() >= m, 60, f"{mark} messages relayed")
            worker.kill()
            worker.start()
        writer.join()
        wait_until(lambda: count() >= TOTAL, 120, "every insert relayed")
        time.sleep(1.0)  # anything still in flight lands before we count
    finally:
        writer.join()
        code = worker.stop()
    assert code == 0, worker.log()[-2000:]


class TestRelaysAcrossKills:
    def test_jetstream_holds_exactly_one_message_per_insert(
        self, dbs: Any, tmp_path: Path, mongo_uri: str, jetstream: Jetstream
    ) -> None:
        """5,000 inserts, the worker SIGKILLed 3 times: the stream holds exactly 5,000
        messages, one per insert (re-publishes dropped by Nats-Msg-Id)."""
        handler = {
            "type": "nats_relay",
            "options": {"url": NATS_URL, "subject": f"{jetstream.prefix}.{{ns.coll}}"},
        }
        run_with_kills(dbs, tmp_path, mongo_uri, handler, jetstream.count)
        stored = jetstream.messages()
        assert len(stored) == TOTAL
        assert sorted(key["_id"] for _, key in stored) == list(range(TOTAL))
        assert len({mid for mid, _ in stored}) == TOTAL

    def test_rabbitmq_holds_every_insert_with_bounded_recognisable_repeats(
        self, dbs: Any, tmp_path: Path, mongo_uri: str, rabbit: Rabbit
    ) -> None:
        """5,000 inserts, the worker SIGKILLed 3 times: every insert is in the queue, each
        repeat carries its first copy's message_id, repeats ≤ one in-flight window a kill."""
        handler = {
            "type": "amqp_relay",
            "options": {
                "url": AMQP_URL,
                "exchange": rabbit.exchange,
                "routing_key": f"{rabbit.prefix}.{{ns.coll}}",
            },
        }
        run_with_kills(dbs, tmp_path, mongo_uri, handler, rabbit.count)
        got = rabbit.messages()
        first: dict[int, str] = {}
        for mid, key in got:
            assert first.setdefault(key["_id"], mid) == mid, "a repeat with another id"
        assert sorted(first) == list(range(TOTAL))
        repeats = len(got) - TOTAL
        assert 0 <= repeats <= 3 * WINDOW, f"{repeats} repeats for 3 kills"
