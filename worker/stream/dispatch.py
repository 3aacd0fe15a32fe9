"""Routes events to handlers: per-key lanes in stream order, bounded concurrency, retry, DLQ."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from bson import Timestamp, json_util
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from changestream_worker.errors import StopWatcher
from changestream_worker.stream.position import Position, Watermark, _Slot, token_cluster_time
from changestream_worker.stream.retry import (
    Backoff,
    HandlerResult,
    RetryPolicy,
    is_transient,
    run_handler,
)

if TYPE_CHECKING:
    from changestream_worker.events import ChangeEvent
    from changestream_worker.handler import Handler, HandlerContext
    from changestream_worker.metrics import Metrics

__all__ = ["DeadLetterSink", "DispatchPolicy", "Dispatcher", "LeaseLost", "Position"]

log = structlog.get_logger("changestream_worker.stream.dispatch")


class LeaseLost(Exception):
    """Set as ``Dispatcher.stopped`` when the guard says this process no longer owns the lease."""


class DispatchPolicy(Protocol):
    """What the dispatcher reads from ``WatcherSettings``."""

    @property
    def concurrency(self) -> int: ...
    @property
    def retry(self) -> RetryPolicy: ...
    @property
    def on_failure(self) -> str: ...


class DeadLetterSink(Protocol):
    """Where failed events go (``worker.deadletters.DeadLetterStore`` or a test double)."""

    async def add(
        self,
        watcher: str,
        handler: str,
        event: ChangeEvent,
        error: BaseException,
        attempts: int,
        first_failure: datetime,
        last_failure: datetime,
    ) -> Any: ...


def describe_key(event: ChangeEvent) -> str:
    """The document key as short text for logs (never the document itself)."""
    key = event.document_key
    return "" if key is None else json_util.dumps(key, sort_keys=True)[:200]


class Dispatcher:
    """Hands events to a watcher's handlers, in order per document, concurrently across them.

    Each event runs through its handlers one after another in config order; each handler is
    retried and dead-lettered on its own, so one handler's failure does not keep the others
    from the event. The event completes once every handler has finished (success, skip or
    dead letter). ``StopWatcher`` or a failure under ``on_failure: stop`` sets ``stopped``:
    the remaining handlers of that event do not run, the event never completes (the
    watermark stays before it) and nothing further is dispatched.

    Args:
        watcher: the watcher's name (labels, logs, dead letters).
        handlers: ``(name, handler, context)`` in config order.
        settings: ``concurrency``, ``retry`` and ``on_failure`` of the watcher.
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
        dead_letters: DeadLetterSink,
        metrics: Metrics | None = None,
        *,
        guard: Callable[[], bool] | None = None,
    ) -> None:
        self.watcher = watcher
        self.handlers = list(handlers)
        self.settings = settings
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.guard = guard
        self.stopped: BaseException | None = None
        self.completed_count = 0
        self.limit = max(1, settings.concurrency)
        self._marks = Watermark()
        self._lanes: dict[str, deque[tuple[ChangeEvent, _Slot]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._listeners: list[Callable[[int], None]] = []
        if metrics is not None:
            # read at scrape time: the hot path pays nothing for this gauge
            metrics.child(metrics.events_in_flight, watcher).set_function(lambda: self._in_flight)

    # ---- the watcher's side ----------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Events submitted and not yet finished (queued in a lane or running)."""
        return self._in_flight

    @property
    def watermark(self) -> Position | None:
        """The newest position whose predecessors have all completed (the checkpoint)."""
        return self._marks.position

    async def submit(self, event: ChangeEvent) -> None:
        """Queue ``event`` on its document's lane; waits while ``concurrency`` are in flight.

        Once ``stopped`` is set, events are dropped: they never complete, so the watermark
        cannot pass them.
        """
        while self._in_flight >= self.limit and self.stopped is None:
            self._room.clear()
            await self._room.wait()
        if self.stopped is not None:
            return
        slot = self._marks.add(_position(event))
        self._in_flight += 1
        self._idle.clear()
        lane = event.lane_key
        queue = self._lanes.get(lane)
        if queue is not None:
            queue.append((event, slot))
            return
        self._lanes[lane] = deque([(event, slot)])
        task = asyncio.create_task(self._run_lane(lane), name=f"lane:{self.watcher}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def mark_idle(self, token: Mapping[str, Any], cluster_time: Timestamp | None = None) -> None:
        """Record a post-batch resume token: the watermark reaches it once all before it are
        done. ``cluster_time`` defaults to the one encoded in the token, if readable."""
        if self.stopped is not None:
            return
        when = cluster_time or token_cluster_time(token)
        self._marks.add_done(Position(dict(token), when, None))

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(completed_count)`` after every completed event (a checkpointer)."""
        self._listeners.append(listener)

    async def drain(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: no limit) for every event in flight to
        finish; ``True`` if none is left."""
        if self._idle.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._idle.is_set()

    async def aclose(self) -> None:
        """Cancel whatever still runs (after a ``drain`` timed out); its events stay unfinished."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # a task cancelled before its first step never ran its cleanup: drop its queue here
        for queue in self._lanes.values():
            while queue:
                queue.popleft()
                self._finish(None, False)
        self._lanes.clear()

    # ---- lanes -----------------------------------------------------------------------
    async def _run_lane(self, lane: str) -> None:
        queue = self._lanes[lane]
        try:
            while queue and self.stopped is None:
                event, slot = queue[0]
                try:
                    done = await self._process(event)
                except Exception as exc:  # a bug here must stop the watcher, not lose events
                    log.exception("dispatch_crashed", watcher=self.watcher)
                    self._stop(exc)
                    done = False
                queue.popleft()
                self._finish(slot, done)
        finally:
            # stopped or cancelled: what is still queued is dropped, never completed
            while queue:
                queue.popleft()
                self._finish(None, False)
            self._lanes.pop(lane, None)

    def _finish(self, slot: _Slot | None, done: bool) -> None:
        if done and slot is not None:
            self._marks.complete(slot)
            self.completed_count += 1
            for listener in self._listeners:
                listener(self.completed_count)
        self._in_flight -= 1
        self._room.set()
        if self._in_flight == 0:
            self._idle.set()

    async def _process(self, event: ChangeEvent) -> bool:
        """Run every handler on ``event``; ``True`` when the event is complete."""
        for name, handler, ctx in self.handlers:
            if self.stopped is not None:  # another lane stopped the watcher: do no more work
                return False
            if self.guard is not None and not self.guard():
                self._stop(LeaseLost(f"watcher {self.watcher!r}: lease no longer held"))
                return False
            result = await run_handler(handler, event, ctx, self.settings.retry)
            self._count(name, result)
            if result.outcome == "stop":
                assert isinstance(result.error, StopWatcher)
                log.warning(
                    "handler_stopped_watcher",
                    watcher=self.watcher,
                    handler=name,
                    operation=event.operation_type,
                    document_key=describe_key(event),
                    reason=result.error.reason,
                )
                self._stop(result.error)
                return False
            if result.outcome == "failed" and not await self._failed(name, event, result):
                return False
        return True

    async def _failed(self, name: str, event: ChangeEvent, result: HandlerResult) -> bool:
        error = result.error
        assert error is not None
        stop = self.settings.on_failure == "stop"
        log.error(
            "event_failed",
            watcher=self.watcher,
            handler=name,
            operation=event.operation_type,
            document_key=describe_key(event),
            error_type=type(error).__name__,
            error=str(error)[:500],
            attempts=result.attempts,
            transient=is_transient(error),
            action="stop" if stop else "dead_letter",
        )
        if stop:
            self._stop(error)
            return False
        now = datetime.now(UTC)
        try:
            # a blip of the state database should not stop the watcher: retry that write too
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(5),
                wait=Backoff(0.2, 5.0),
                retry=retry_if_exception(is_transient),
                reraise=True,
            ):
                with attempt:
                    await self.dead_letters.add(
                        self.watcher,
                        name,
                        event,
                        error,
                        result.attempts,
                        result.first_failure or now,
                        result.last_failure or now,
                    )
        except Exception as exc:  # the event is neither handled nor parked: stop, lose nothing
            log.error(
                "dead_letter_write_failed",
                watcher=self.watcher,
                handler=name,
                document_key=describe_key(event),
                error=str(exc)[:500],
            )
            self._stop(exc)
            return False
        if self.metrics is not None:
            self.metrics.child(self.metrics.dead_letters_total, self.watcher, name).inc()
        return True

    def _stop(self, error: BaseException) -> None:
        if self.stopped is None:
            self.stopped = error
        self._room.set()  # a submit waiting for room must wake up and see ``stopped``

    def _count(self, name: str, result: HandlerResult) -> None:
        if self.metrics is None:
            return
        outcome: str = result.outcome
        if outcome == "stop" or (outcome == "failed" and self.settings.on_failure == "stop"):
            outcome = "stopped"
        elif outcome == "failed":
            outcome = "dead_letter"
        m = self.metrics
        m.child(m.events_handled_total, self.watcher, name, outcome).inc()
        m.child(m.handler_duration_seconds, self.watcher, name).observe(result.duration)


def _position(event: ChangeEvent) -> Position | None:
    # snapshot events carry no token: they complete without moving the watermark
    token = event.token
    if not token or event.from_snapshot:
        return None
    return Position(token, event.cluster_time, event.wall_time)
