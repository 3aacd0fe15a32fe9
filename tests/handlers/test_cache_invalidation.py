"""cache_invalidation against the real Redis at REDIS_URL, driven by the worker."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
import redis.asyncio as redis
import structlog
from pymongo import AsyncMongoClient

from changestream_worker import BatchItemFailures, HandlerContext, SkipEvent
from changestream_worker.handlers.cache_invalidation import (
    CacheInvalidation,
    CacheInvalidationOptions,
)
from changestream_worker.testing.factories import make_event
from tests.support.harness import config_dict, eventually, running, settings_of, unique, watcher

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def cache() -> Any:
    r = redis.from_url(REDIS_URL)
    try:
        await r.ping()
    except (redis.ConnectionError, OSError) as exc:
        await r.aclose()
        pytest.skip(f"Redis at {REDIS_URL} unreachable: {exc}")
    yield r
    await r.aclose()


class TestCacheInvalidation:
    async def test_update_and_delete_drop_keys_using_the_pre_image(
        self, cache: Any, mongo_uri: str
    ) -> None:
        """Updates delete the id and email keys; a delete finds the email in the pre-image;
        subscribers get the key list."""
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri)
        db, state, prefix = unique("db"), unique("state"), unique("t")
        channel = f"{prefix}-inval"
        await client[db].create_collection("users", changeStreamPreAndPostImages={"enabled": True})
        handlers = {
            "cache": {
                "type": "cache_invalidation",
                "options": {
                    "redis_url": REDIS_URL,
                    "publish_channel": channel,
                    "keys": [
                        f"{prefix}:user:{{documentKey._id}}",
                        f"{prefix}:email:{{fullDocument.email}}",
                    ],
                },
            }
        }
        w = watcher(
            collection="users",
            handlers=["cache"],
            full_document="updateLookup",
            full_document_before_change="whenAvailable",
        )
        sub = cache.pubsub()
        await sub.subscribe(channel)
        try:
            async with running(settings_of(config_dict(mongo_uri, db, state, [w], handlers))):

                async def started() -> bool:
                    return await client[state].checkpoints.find_one({}) is not None

                await eventually(started, what="the watcher's start")
                await client[db].users.insert_one({"_id": 1, "email": "a@x.org"})
                await cache.set(f"{prefix}:user:1", "cached")
                await cache.set(f"{prefix}:email:a@x.org", "cached")
                await client[db].users.update_one({"_id": 1}, {"$set": {"n": 1}})

                async def gone() -> bool:
                    return await cache.exists(f"{prefix}:user:1", f"{prefix}:email:a@x.org") == 0

                await eventually(gone, what="keys dropped after the update")
                await cache.set(f"{prefix}:email:a@x.org", "cached again")
                await client[db].users.delete_one({"_id": 1})
                await eventually(gone, what="keys dropped after the delete")
            messages = []
            for _ in range(20):
                m = await sub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if m is not None:
                    messages.append(m["data"].decode())
                if len(messages) >= 3:
                    break
                await asyncio.sleep(0)
            assert f'"{prefix}:email:a@x.org"' in messages[-1]
        finally:
            await sub.unsubscribe(channel)
            await sub.aclose()
            await client.drop_database(db)
            await client.drop_database(state)
            await client.close()


class TestCacheInvalidationBatches:
    async def test_a_batch_is_one_delete_and_one_publish(self, cache: Any) -> None:
        """handle_batch over 50 events deletes every key they name and publishes their
        union once; an event no template resolves is reported by index as skipped."""
        prefix = unique("b")
        channel = f"{prefix}-inval"
        handler = CacheInvalidation(
            CacheInvalidationOptions(
                redis_url=REDIS_URL,
                publish_channel=channel,
                keys=[f"{prefix}:user:{{documentKey._id}}", f"{prefix}:n:{{fullDocument.n}}"],
            )
        )
        ctx = HandlerContext(
            client=None,
            database=None,
            state_database=None,  # type: ignore[arg-type]
            log=structlog.get_logger(),
            watcher="users",
            handler="cache",
        )
        events = [make_event("insert", i, {"_id": i, "n": i % 5}) for i in range(50)]
        events.insert(7, make_event("drop"))
        await handler.start(ctx)
        sub = cache.pubsub()
        await sub.subscribe(channel)
        try:
            for i in range(50):
                await cache.set(f"{prefix}:user:{i}", "cached")
            for n in range(5):
                await cache.set(f"{prefix}:n:{n}", "cached")
            with pytest.raises(BatchItemFailures) as info:
                await handler.handle_batch(events, ctx)
            assert list(info.value.failures) == [7]
            assert isinstance(info.value.failures[7], SkipEvent)
            assert await cache.exists(*(f"{prefix}:user:{i}" for i in range(50))) == 0
            assert await cache.exists(*(f"{prefix}:n:{n}" for n in range(5))) == 0
            messages = []
            for _ in range(20):
                m = await sub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if m is not None:
                    messages.append(json.loads(m["data"]))
        finally:
            await sub.unsubscribe(channel)
            await sub.aclose()
            await handler.stop()
        assert len(messages) == 1
        assert sorted(messages[0]) == sorted(
            [f"{prefix}:user:{i}" for i in range(50)] + [f"{prefix}:n:{n}" for n in range(5)]
        )
