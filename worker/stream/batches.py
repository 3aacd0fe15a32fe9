"""Batch calls: one ``handle_batch`` for many events, the whole batch retried on a transient
error, per-item failures sent down the one-event path, bisection to find a poison event."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import structlog

from changestream_worker.errors import BatchItemFailures
from changestream_worker.handler import Handler
from changestream_worker.stream.failures import FailurePolicy
from changestream_worker.stream.lanes import lane_of
from changestream_worker.stream.retry import HandlerResult, is_transient, run_call

if TYPE_CHECKING:
    from changestream_worker.events import ChangeEvent
    from changestream_worker.handler import HandlerContext
    from changestream_worker.stream.bound import Bound

log = structlog.get_logger("changestream_worker.stream.dispatch")


def redo_indexes(events: Sequence[ChangeEvent], failures: Mapping[int, BaseException]) -> list[int]:
    """The events to run again one by one: each failed one and every later event of the
    same document in the batch (they must not overtake it), in stream order."""
    first: dict[Hashable, int] = {}
    for index in sorted(failures):
        if 0 <= index < len(events):
            first.setdefault(lane_of(events[index]), index)
    if not first:
        return []
    return [i for i, event in enumerate(events) if i >= first.get(lane_of(event), len(events))]


def one_event(
    handler: Handler, event: ChangeEvent, ctx: HandlerContext
) -> Callable[[], Awaitable[None]]:
    """A call handling one event: ``handle`` if the handler has it, else a batch of one."""
    if type(handler).handle is not Handler.handle:
        return partial(handler.handle, event, ctx)

    async def alone() -> None:
        try:
            await handler.handle_batch([event], ctx)
        except BatchItemFailures as exc:
            for error in exc.failures.values():
                raise error from None

    return alone


class BatchCalls:
    """The dispatcher's batch path (a mixin: it uses the dispatcher's failure handling)."""

    settings: FailurePolicy
    stopped: BaseException | None
    watcher: str

    def _count(self, b: Bound, result: HandlerResult, events: int) -> None:
        raise NotImplementedError

    async def _after(self, b: Bound, event: ChangeEvent, result: HandlerResult) -> bool:
        raise NotImplementedError

    def _guarded(self) -> bool:
        raise NotImplementedError

    def _may_go_on(self) -> bool:
        guard = getattr(self, "guard", None)
        return self.stopped is None and (guard is None or self._guarded())

    async def _batch(self, b: Bound, events: list[ChangeEvent]) -> bool:
        """Run ``b``'s ``handle_batch`` over ``events``; ``False`` once the watcher must stop."""
        b.sizes.observe(len(events))
        result = await run_call(partial(b.handler.handle_batch, events, b.ctx), self.settings.retry)
        b.duration.observe(result.duration)
        outcome, error = result.outcome, result.error
        if outcome in ("success", "retried", "skipped"):
            self._count(b, result, len(events))
            return True
        if outcome == "stop":
            self._count(b, result, len(events))
            return await self._after(b, events[0], result)
        if isinstance(error, BatchItemFailures):
            return await self._item_failures(b, events, error, result.attempts)
        if len(events) > 1 and not is_transient(error or Exception()):
            # a permanent error for the whole batch: halve it until the poison event is alone
            mid = len(events) // 2
            return (  # the lease guard holds before each of these calls too
                self._may_go_on()
                and await self._batch(b, events[:mid])
                and self._may_go_on()
                and await self._batch(b, events[mid:])
            )
        for event in events:  # alone, or out of attempts: each fails as ``handle`` would
            self._count(b, result, 1)
            if not await self._after(b, event, result):
                return False
        return True

    async def _item_failures(
        self, b: Bound, events: list[ChangeEvent], error: BatchItemFailures, attempts: int
    ) -> bool:
        redo = redo_indexes(events, error.failures)
        bad = [i for i in error.failures if not 0 <= i < len(events)]
        if bad:
            log.warning("batch_failure_index_ignored", watcher=self.watcher, handler=b.name)
        done = len(events) - len(redo)
        if done:
            self._count(
                b, HandlerResult("retried" if attempts > 1 else "success", attempts, 0), done
            )
        for i in redo:
            if not self._may_go_on():
                return False
            event = events[i]
            result = await run_call(one_event(b.handler, event, b.ctx), self.settings.retry)
            self._count(b, result, 1)
            b.duration.observe(result.duration)
            if not await self._after(b, event, result):
                return False
        return True
