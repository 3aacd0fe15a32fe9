"""What the dispatcher does with an event a handler did not finish: count, log, dead-letter
(retrying the state write) or stop the watcher."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog
from bson import json_util
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from changestream_worker.errors import StopWatcher
from changestream_worker.stream.retry import Backoff, HandlerResult, RetryPolicy, is_transient

if TYPE_CHECKING:
    from changestream_worker.events import ChangeEvent
    from changestream_worker.metrics import Metrics
    from changestream_worker.state.deadletters import DeadLetterStore
    from changestream_worker.stream.bound import Bound

log = structlog.get_logger("changestream_worker.stream.dispatch")


class FailurePolicy(Protocol):
    """What the failure path reads from the watcher's settings."""

    @property
    def retry(self) -> RetryPolicy: ...
    @property
    def on_failure(self) -> str: ...


def describe_key(event: ChangeEvent) -> str:
    """The document key as short text for logs (never the document itself)."""
    key = event.document_key
    return "" if key is None else json_util.dumps(key, sort_keys=True)[:200]


class Failures:
    """The dispatcher's handling of results other than a first-time success (a mixin: it
    reads the dispatcher's settings, dead-letter sink and metric series)."""

    watcher: str
    settings: FailurePolicy
    dead_letters: DeadLetterStore
    metrics: Metrics | None
    _series: Metrics

    def _stop(self, error: BaseException) -> None:
        raise NotImplementedError

    def _count(self, b: Bound, result: HandlerResult, events: int) -> None:
        outcome: str = result.outcome
        if outcome == "success":
            b.ok.value += events
            return
        if outcome == "stop" or (outcome == "failed" and self.settings.on_failure == "stop"):
            outcome = "stopped"
        elif outcome == "failed":
            outcome = "dead_letter"
        self._series.events_handled_total.labels(self.watcher, b.name, outcome).inc(events)

    async def _after(self, b: Bound, event: ChangeEvent, result: HandlerResult) -> bool:
        """Act on one event's counted result; ``False`` once the watcher must stop."""
        if result.outcome == "stop":
            assert isinstance(result.error, StopWatcher)
            log.warning(
                "handler_stopped_watcher",
                watcher=self.watcher,
                handler=b.name,
                operation=event.operation_type,
                document_key=describe_key(event),
                reason=result.error.reason,
            )
            self._stop(result.error)
            return False
        if result.outcome == "failed":
            return await self._failed(b.name, event, result)
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
