"""Routes events to handlers: ``concurrency`` lane workers pulling keyed work in stream order
per document, one event or one batch per call, bounded in flight, retry, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from bson import Timestamp

from changestream_worker.metrics import Metrics
from changestream_worker.stream.batches import BatchCalls
from changestream_worker.stream.bound import Bound
from changestream_worker.stream.failures import FailurePolicy, Failures, describe_key
from changestream_worker.stream.lanes import Item, Lanes
from changestream_worker.stream.position import Position, Watermark, token_cluster_time
from changestream_worker.stream.retry import HandlerResult, run_call
from changestream_worker.stream.stops import LeaseLost, WatcherStopped, stopped_by

if TYPE_CHECKING:
    from changestream_worker.events import ChangeEvent
    from changestream_worker.handler import Handler, HandlerContext
    from changestream_worker.state.deadletters import DeadLetterStore

__all__ = [
    "DispatchPolicy",
    "Dispatcher",
    "LeaseLost",
    "Position",
    "WatcherStopped",
    "describe_key",
]

log = structlog.get_logger("changestream_worker.stream.dispatch")


class DispatchPolicy(FailurePolicy, Protocol):
    """What the dispatcher reads from ``WatcherSettings`` (``batch`` too, when present)."""

    @property
    def concurrency(self) -> int: ...


class Dispatcher(Failures, BatchCalls):
    """Hands events to a watcher's handlers, in order per document, concurrently across them.

    ``concurrency`` long-lived lane workers take ready work: one event, or for a watcher
    with a ``handle_batch`` handler up to ``batch.max_events`` (waiting up to
    ``batch.max_wait`` for more), from documents no other worker holds. Each unit runs
    through the handlers in config order; each handler is retried and dead-lettered on its
    own, so one handler's failure does not keep the others from an event. Events complete
    once every handler has finished with them. ``StopWatcher``, a failure under
    ``on_failure: stop`` or a lost lease set ``stopped``: the unit's events never complete
    (the watermark stays before them), queued events are dropped, nothing more runs, and
    ``check`` raises the one ``WatcherStopped``.

    Args:
        watcher: the watcher's name (labels, logs, dead letters).
        handlers: ``(name, handler, context)`` in config order.
        settings: ``concurrency``, ``retry``, ``on_failure`` and ``batch`` of the watcher.
        dead_letters: where failed events go.
        metrics: collectors, or ``None``.
        guard: checked before every handler call; once it returns ``False`` (the lease may
            have expired) ``stopped`` becomes ``LeaseLost`` and nothing more is handled.
    """

    def __init__(
        self,
        watcher: str,
        handlers: Sequence[tuple[str, Handler, HandlerContext]],
        settings: DispatchPolicy,
        dead_letters: DeadLetterStore,
        metrics: Metrics | None = None,
        *,
        guard: Callable[[], bool] | None = None,
    ) -> None:
        self.watcher = watcher
        self.handlers = list(handlers)
        series = self._series = metrics or Metrics()  # no registry: series nobody reads
        self.bound = [Bound(n, h, c, watcher, series) for n, h, c in self.handlers]
        self.settings = settings
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.guard = guard
        self.stopped: BaseException | None = None
        self.completed_count = 0
        batch = getattr(settings, "batch", None)
        self.max_events, self.max_wait = 1, 0.0
        if batch is not None and any(b.batches for b in self.bound):
            self.max_events, self.max_wait = int(batch.max_events), float(batch.max_wait)
        self.workers = max(1, settings.concurrency)
        #: events in flight at most (queued or running): a batch for every worker
        self.limit = self.workers * self.max_events
        self._lanes = Lanes(self.limit, self.max_events)
        self._marks = Watermark()
        self._tasks: list[asyncio.Task[None]] = []
        self._listeners: list[Callable[[int], None]] = []
        if metrics is not None:
            # read at scrape time: the hot path pays nothing for this gauge
            metrics.child(metrics.events_in_flight, watcher).set_function(lambda: self.in_flight)

    # ---- the watcher's side ----------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Events submitted and not yet finished (queued or running)."""
        return self._lanes.in_flight

    @property
    def watermark(self) -> Position | None:
        """The newest position whose predecessors have all completed (the checkpoint)."""
        return self._marks.position

    async def submit(self, event: ChangeEvent) -> None:
        """Queue ``event`` behind its document's earlier events; waits while ``limit``
        events are in flight.

        Once ``stopped`` is set, events are dropped: they never complete, so the watermark
        cannot pass them.
        """
        lanes = self._lanes
        if lanes.in_flight >= lanes.limit and self.stopped is None:
            await lanes.wait_room()
        if self.stopped is not None or lanes.closed:
            return
        if not self._tasks:
            self._start()
        # snapshot events carry no token: they complete without moving the watermark
        mark = None if event.from_snapshot or not event.raw.get("_id") else event
        lanes.put(event, self._marks.add(mark))

    def mark_idle(self, token: Mapping[str, Any], cluster_time: Timestamp | None = None) -> None:
        """Record a post-batch resume token: the watermark reaches it once all before it are
        done. ``cluster_time`` defaults to the one encoded in the token, if readable."""
        if self.stopped is not None:
            return
        when = cluster_time or token_cluster_time(token)
        if not self._marks.add_done(Position(dict(token), when, None)):
            log.warning("stale_post_batch_token_ignored", watcher=self.watcher)

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(completed_count)`` after every completed unit (a checkpointer)."""
        self._listeners.append(listener)

    def check(self) -> None:
        """Raise the ``WatcherStopped`` for ``stopped``, if the dispatcher has stopped.

        Raises:
            WatcherStopped: built from ``stopped`` (chained as its cause).
        """
        if self.stopped is not None:
            raise stopped_by(self.stopped)

    async def drain(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: no limit) for every event in flight to
        finish; ``True`` if none is left."""
        if not self._lanes.in_flight:
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._lanes.wait_idle(), timeout)
        return not self._lanes.in_flight

    async def aclose(self) -> None:
        """Stop the lane workers; whatever still runs is cancelled and stays unfinished."""
        lanes = self._lanes
        lanes.close()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        lanes.finished(len(lanes.drop_queued()))

    # ---- lane workers ----------------------------------------------------------------
    def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._work(), name=f"lane:{self.watcher}:{i}")
            for i in range(self.workers)
        ]

    async def _work(self) -> None:
        lanes = self._lanes
        while True:
            if not lanes.ready:
                if lanes.closed:
                    return
                await lanes.wait_work()
                continue
            keys: list[Hashable] = []
            items: list[Item] = []
            lanes.take(keys, items)
            done = False
            try:
                if self.max_wait > 0 and len(items) < self.max_events:
                    await self._fill(keys, items)
                done = await self._process(items)
            except Exception as exc:  # a bug here must stop the watcher, not lose events
                log.exception("dispatch_crashed", watcher=self.watcher)
                self._stop(exc)
            finally:
                if done:
                    self._complete(items)
                lanes.release(keys, len(items))

    async def _fill(self, keys: list[Hashable], items: list[Item]) -> None:
        """Wait up to ``max_wait`` for more events to join a batch that is not full."""
        lanes, loop = self._lanes, asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_events and not lanes.closed and self.stopped is None:
            left = deadline - loop.time()
            if left <= 0 or lanes.in_flight >= lanes.limit:
                return  # the producer waits for room: nothing more can come
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lanes.wait_work(), left)
            lanes.take(keys, items)

    def _complete(self, items: list[Item]) -> None:
        complete = self._marks.complete
        for item in items:
            complete(item[2])
        self.completed_count += len(items)
        for listener in self._listeners:
            listener(self.completed_count)

    async def _process(self, items: list[Item]) -> bool:
        """Run every handler on the events of ``items``; ``True`` when all are complete."""
        guard = self.guard
        for b in self.bound:
            if b.batches:
                if self.stopped is not None or (guard is not None and not self._guarded()):
                    return False
                if not await self._batch(b, [item[1] for item in items]):
                    return False
                continue
            handle, ctx = b.handler.handle, b.ctx
            for item in items:
                if self.stopped is not None or (guard is not None and not self._guarded()):
                    return False
                event = item[1]
                started = time.perf_counter()
                try:
                    await handle(event, ctx)
                except Exception as exc:  # the rare path: retries, skip, dead letter, stop
                    retry = self.settings.retry
                    result = await run_call(partial(handle, event, ctx), retry, first=exc)
                    result.duration = time.perf_counter() - started
                    if not await self._settle(b, event, result):
                        return False
                else:
                    b.ok.value += 1
                    b.duration.observe(time.perf_counter() - started)
        return True

    def _guarded(self) -> bool:
        assert self.guard is not None
        if self.guard():
            return True
        self._stop(LeaseLost(f"watcher {self.watcher!r}: lease no longer held"))
        return False

    async def _settle(self, b: Bound, event: ChangeEvent, result: HandlerResult) -> bool:
        """Count one event's result and act on it; ``False`` once the watcher must stop."""
        self._count(b, result, 1)
        b.duration.observe(result.duration)
        return await self._after(b, event, result)

    def _stop(self, error: BaseException) -> None:
        if self.stopped is None:
            self.stopped = error
        lanes = self._lanes
        lanes.finished(len(lanes.drop_queued()))
        lanes.close()  # a submit waiting for room must wake up and see ``stopped``
