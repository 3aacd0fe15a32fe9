"""Handlers used by bench/worker.py: a no-op and a 5 ms sleeper, both counting completions."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from changestream_worker import ChangeEvent, Handler, HandlerContext


class NoOp(Handler):
    """Does nothing but count."""

    done: ClassVar[int] = 0

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        type(self).done += 1


class Sleep5ms(Handler):
    """Simulates a 5 ms network call."""

    done: ClassVar[int] = 0

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        await asyncio.sleep(0.005)
        type(self).done += 1
