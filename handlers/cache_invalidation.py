"""cache_invalidation: delete the Redis keys a change makes stale, in one round trip.

Guarantee: idempotent (deleting a key twice is harmless), so at-least-once delivery is
enough. Key templates name paths in the change event, e.g. ``user:{documentKey._id}`` or
``user:email:{fullDocument.email}``. For deletes, ``fullDocument.*`` paths are read from the
pre-image (``fullDocumentBeforeChange``): after a delete the document — and its email — is
gone, so only the pre-image can name the keys it had. That needs
``full_document_before_change: whenAvailable`` on the watcher and pre-images enabled on the
collection (``changeStreamPreAndPostImages``); without them such keys are skipped and logged.
A batch of events is one pipeline: one DEL of all their keys and one PUBLISH of that list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from changestream_worker import (
    BatchItemFailures,
    ChangeEvent,
    Handler,
    HandlerContext,
    HandlerOptions,
    MissingExtraError,
    SkipEvent,
    TransientError,
)

try:
    import redis.asyncio as redis
except ImportError as exc:  # check-config turns this into the pip install line
    raise MissingExtraError("redis", "redis") from exc

FIELD = re.compile(r"\{([^{}]+)\}")


def _fill(template: str, values: list[str]) -> str:
    it = iter(values)
    return FIELD.sub(lambda _m: next(it), template)


class CacheInvalidationOptions(HandlerOptions):
    """Options of ``cache_invalidation`` (see config/worker.yaml)."""

    redis_url: str = "redis://localhost:6379/0"
    keys: list[str]
    publish_channel: str | None = None


class CacheInvalidation(Handler[CacheInvalidationOptions]):
    """One pipeline of DEL per call (and an optional PUBLISH of the deleted keys)."""

    def __init__(self, options: CacheInvalidationOptions) -> None:
        super().__init__(options)
        self.redis: Any = None

    async def start(self, ctx: HandlerContext) -> None:
        self.redis = redis.from_url(self.options.redis_url)

    async def stop(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    def keys_for(self, event: ChangeEvent) -> list[str]:
        """The keys this event makes stale (templates whose paths are missing are left out)."""
        deleted = event.operation_type == "delete"
        out = []
        for template in self.options.keys:
            values = []
            for path in FIELD.findall(template):
                if deleted and path.startswith("fullDocument."):
                    path = "fullDocumentBeforeChange." + path.removeprefix("fullDocument.")
                value = event.get(path)
                if value is None:
                    break
                values.append(str(value))
            else:
                out.append(_fill(template, values))
        return out

    async def _invalidate(self, keys: list[str]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.delete(*keys)
                if self.options.publish_channel:
                    pipe.publish(self.options.publish_channel, json.dumps(keys))
                await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TransientError(f"redis: {exc}") from exc

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        keys = self.keys_for(event)
        if not keys:
            raise SkipEvent("no key template resolved for this event")
        await self._invalidate(keys)
        ctx.log.debug("cache_invalidated", keys=len(keys))

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        keys: dict[str, None] = {}  # ordered and unique: one DEL names each key once
        skipped: dict[int, BaseException] = {}
        for i, event in enumerate(events):
            found = self.keys_for(event)
            if not found:
                skipped[i] = SkipEvent("no key template resolved for this event")
            keys.update(dict.fromkeys(found))
        if keys:
            await self._invalidate(list(keys))
            ctx.log.debug("cache_invalidated", keys=len(keys), events=len(events))
        if skipped:
            raise BatchItemFailures(skipped)
