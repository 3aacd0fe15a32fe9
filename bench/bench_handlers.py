"""Handlers used by bench/worker_bench.py: a no-op, a 5 ms sleeper, a batched no-op and a
latency probe, each counting completions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import ClassVar

from changestream_worker import ChangeEvent, Handler, HandlerContext


class NoOp(Handler):
    """Does nothing but count (and note when the first event arrived)."""

    done: ClassVar[int] = 0
    first: ClassVar[float] = 0.0
    first_cpu: ClassVar[float] = 0.0

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        cls = type(self)
        if not cls.done:
            cls.first, cls.first_cpu = time.perf_counter(), time.process_time()
        cls.done += 1


class NoOpBatch(Handler):
    """Takes batches and does nothing but count (and remember the batch sizes)."""

    done: ClassVar[int] = 0
    first: ClassVar[float] = 0.0
    sizes: ClassVar[list[int]] = []

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        cls = type(self)
        if not cls.done:
            cls.first = time.perf_counter()
        cls.done += len(events)
        cls.sizes.append(len(events))


class Sleep5ms(Handler):
    """Simulates a 5 ms network call."""

    done: ClassVar[int] = 0
    first: ClassVar[float] = 0.0

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        cls = type(self)
        if not cls.done:
            cls.first = time.perf_counter()
        await asyncio.sleep(0.005)
        cls.done += 1


class Latency(Handler):
    """Records, at handler start, the seconds since the inserted document's ``t`` field."""

    done: ClassVar[int] = 0
    samples: ClassVar[list[float]] = []

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        doc = event.full_document
        if doc is not None and "t" in doc:
            type(self).samples.append(time.time() - float(doc["t"]))
        type(self).done += 1
