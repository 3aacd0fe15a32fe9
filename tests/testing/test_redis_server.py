"""The Redis-protocol test double, driven by redis-py's asyncio client over TCP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from changestream_worker.testing.redis_server import RedisServer


@pytest.fixture
async def server() -> AsyncIterator[RedisServer]:
    async with RedisServer(port=0) as srv:
        yield srv


class TestHandshake:
    @pytest.mark.parametrize("protocol", [2, 3])
    async def test_client_connects_with_each_protocol(
        self, server: RedisServer, protocol: int
    ) -> None:
        """redis-py's handshake (HELLO for RESP3, CLIENT SETINFO, SELECT) succeeds; PING answers."""
        client = redis.from_url(server.url.replace("/0", "/3"), protocol=protocol)
        try:
            assert await client.ping() is True
            await client.set("k", "v")
            assert await client.get("k") == b"v"
            assert await client.get("missing") is None
        finally:
            await client.aclose()
        assert server.store.get(3, b"k") == b"v" and server.store.get(0, b"k") is None


class TestCommands:
    async def test_set_get_del_exists(self, server: RedisServer) -> None:
        """DEL and EXISTS count only keys that are there; a deleted key reads back as None."""
        client = redis.from_url(server.url)
        try:
            await client.set("a", "1")
            await client.set("b", "2")
            assert await client.exists("a", "b", "c") == 2
            assert await client.delete("a", "c") == 1
            assert await client.get("a") is None and await client.get("b") == b"2"
            assert await client.dbsize() == 1
            assert await client.set("b", "3", nx=True) is None
            assert await client.set("c", "3", xx=True) is None
            assert await client.get("b") == b"2" and await client.exists("c") == 0
        finally:
            await client.aclose()

    async def test_expiry(self, server: RedisServer) -> None:
        """A key set with PX is gone once its time is up."""
        client = redis.from_url(server.url)
        try:
            await client.set("t", "x", px=50)
            assert await client.get("t") == b"x"
            await asyncio.sleep(0.08)
            assert await client.get("t") is None
        finally:
            await client.aclose()

    @pytest.mark.parametrize("transaction", [False, True])
    async def test_pipeline_del_and_publish(self, server: RedisServer, transaction: bool) -> None:
        """A pipeline of DEL + PUBLISH (what cache_invalidation sends) runs in order."""
        client = redis.from_url(server.url)
        try:
            await client.set("user:1", "cached")
            async with client.pipeline(transaction=transaction) as pipe:
                pipe.delete("user:1", "user:email:x")
                pipe.publish("invalidated", json.dumps(["user:1"]))
                assert await pipe.execute() == [1, 0]
            assert await client.get("user:1") is None
        finally:
            await client.aclose()
        assert server.published == [(b"invalidated", b'["user:1"]')]

    @pytest.mark.parametrize("protocol", [2, 3])
    async def test_publish_reaches_subscribers(self, server: RedisServer, protocol: int) -> None:
        """PUBLISH delivers to each SUBSCRIBEd client and answers how many got it."""
        client = redis.from_url(server.url, protocol=protocol)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe("inv")
            assert await client.publish("inv", "k1") == 1
            assert await client.publish("other", "k2") == 0
            msg = None
            for _ in range(50):  # the subscribe confirmation comes first and reads as None
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if msg is not None:
                    break
            assert msg is not None and msg["channel"] == b"inv" and msg["data"] == b"k1"
            await pubsub.unsubscribe("inv")
            await asyncio.sleep(0.05)
            assert await client.publish("inv", "k3") == 0
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def test_unknown_command_is_an_error_and_the_connection_stays(
        self, server: RedisServer
    ) -> None:
        """An unknown command answers -ERR; the same connection serves the next command."""
        client = redis.from_url(server.url, single_connection_client=True)
        try:
            with pytest.raises(redis.ResponseError, match="unknown command 'HGETALL'"):
                await client.hgetall("h")
            with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
                await client.execute_command("GET")
            assert await client.ping() is True
        finally:
            await client.aclose()


class TestBadInput:
    async def test_garbage_closes_only_that_connection(self, server: RedisServer) -> None:
        """A malformed RESP header gets an error and a close; other clients carry on."""
        client = redis.from_url(server.url)
        try:
            await client.set("k", "v")
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(b"*2\r\n$abc\r\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.read(), 5)
            assert reply.startswith(b"-ERR Protocol error") and reader.at_eof()
            writer.close()
            await writer.wait_closed()
            assert await client.get("k") == b"v"
        finally:
            await client.aclose()

    async def test_inline_commands(self, server: RedisServer) -> None:
        """Inline commands (as telnet sends them) work."""
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"PING\r\nSET a b\r\nGET a\r\nQUIT\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b"+PONG\r\n+OK\r\n$1\r\nb\r\n+OK\r\n"
        writer.close()
        await writer.wait_closed()
