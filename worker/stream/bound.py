"""A handler as one watcher uses it: its context, whether it takes batches, its series."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from changestream_worker.handler import takes_batches

if TYPE_CHECKING:
    from changestream_worker.handler import Handler, HandlerContext
    from changestream_worker.metrics import Distribution, Metrics, Tally


class Bound:
    """One handler of the watcher with its context and its metric series."""

    __slots__ = ("batches", "ctx", "duration", "handler", "name", "ok", "sizes")

    def __init__(
        self, name: str, handler: Handler[Any], ctx: HandlerContext, watcher: str, m: Metrics
    ) -> None:
        self.name, self.handler, self.ctx = name, handler, ctx
        self.batches = takes_batches(handler)
        self.ok: Tally = m.events_handled_total.labels(watcher, name, "success")
        self.duration: Distribution = m.handler_duration_seconds.labels(watcher, name)
        self.sizes: Distribution = m.batch_size.labels(watcher, name)
