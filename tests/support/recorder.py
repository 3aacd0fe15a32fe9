"""A handler for tests: records every event it handles in a MongoDB collection."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from changestream_worker import ChangeEvent, Handler, HandlerContext, HandlerOptions, PermanentError


class RecorderOptions(HandlerOptions):
    collection: str = "handled"
    delay: float = 0.0
    fail_keys: list[Any] = []


class Recorder(Handler):
    """Inserts one document per handled event (duplicates stay visible as extra documents)."""

    Options = RecorderOptions

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        opts = self.options
        assert isinstance(opts, RecorderOptions)
        if opts.delay:
            await asyncio.sleep(opts.delay)
        doc = event.full_document or {}
        if event.document_id in opts.fail_keys:
            raise PermanentError(f"refusing key {event.document_id!r}")
        await ctx.state_database[opts.collection].insert_one(
            {
                "event_id": event.event_id,
                "key": event.document_id,
                "op": event.operation_type,
                "seq": doc.get("seq"),
                "ts": event.cluster_time,
                "watcher": ctx.watcher,
                "snapshot": event.from_snapshot,
                "pid": os.getpid(),
                "at": time.time(),
            }
        )
