"""Retry policy for handlers: which errors are transient, backoff with jitter, one outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal, Protocol, cast

from pymongo.errors import ConnectionFailure, PyMongoError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_base, wait_exponential_jitter

from changestream_worker.errors import RetryEvent, SkipEvent, StopWatcher, TransientError

if TYPE_CHECKING:
    from changestream_worker.events import ChangeEvent
    from changestream_worker.handler import Handler, HandlerContext

TRANSIENT_LABELS = ("TransientTransactionError", "RetryableWriteError")
Outcome = Literal["success", "retried", "skipped", "failed", "stop"]


class RetryPolicy(Protocol):
    """What the retry needs from ``WatcherSettings.retry``."""

    @property
    def attempts(self) -> int: ...
    @property
    def initial_delay(self) -> float: ...
    @property
    def max_delay(self) -> float: ...


def is_transient(exc: BaseException) -> bool:
    """Whether retrying ``exc`` may help: network trouble, pymongo's transient labels,
    timeouts, and what a handler declares transient (``TransientError``, ``RetryEvent``)."""
    # TimeoutError (== asyncio.TimeoutError) and ConnectionError are OSError subclasses
    if isinstance(exc, TransientError | RetryEvent | ConnectionFailure | OSError):
        return True
    if isinstance(exc, PyMongoError):
        return any(exc.has_error_label(label) for label in TRANSIENT_LABELS)
    return False


class Backoff(wait_base):
    """The worker's one backoff: tenacity's exponential wait with jitter
    (``initial·2ⁿ⁻¹ + U(0, initial)``, capped at ``maximum``), unless the failure was a
    ``RetryEvent(after=…)``. A tenacity wait strategy, and ``delay(n)`` for plain loops.

    Args:
        initial: the first delay, and the width of the jitter.
        maximum: no delay is longer.
    """

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = max(0.0, initial), max(0.0, maximum)
        # jitter spreads the retries of many lanes (or replicas) hitting the same outage
        self._wait = wait_exponential_jitter(
            multiplier=self.initial, max=self.maximum, jitter=self.initial
        )

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, RetryEvent) and exc.after is not None:
            return max(0.0, float(exc.after))
        return float(self._wait(retry_state))

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1 = after the first failure)."""
        return float(self._wait(cast("RetryCallState", _Attempt(max(1, attempt)))))


class _Attempt:
    # the one field tenacity's exponential wait reads from a RetryCallState
    __slots__ = ("attempt_number",)

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def backoff(initial: float, maximum: float) -> Callable[[int], float]:
    """``Backoff``'s schedule as a function of the attempt number (1, 2, ...), for loops
    that are not tenacity retries: reopening a stream, restarting a crashed watcher."""
    return Backoff(initial, maximum).delay


@dataclass(slots=True)
class HandlerResult:
    """How one handler fared with one event.

    ``outcome``: ``success`` (first attempt), ``retried`` (succeeded after retries),
    ``skipped`` (``SkipEvent``), ``failed`` (attempts ran out or the error is permanent),
    ``stop`` (``StopWatcher``).
    """

    outcome: Outcome
    attempts: int
    duration: float
    error: BaseException | None = None
    first_failure: datetime | None = None
    last_failure: datetime | None = None


async def run_handler(
    handler: Handler,
    event: ChangeEvent,
    ctx: HandlerContext,
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> HandlerResult:
    """Run ``handler.handle(event, ctx)`` under the retry policy; never raises but
    ``CancelledError``.

    Args:
        handler: the handler instance.
        event: the event to handle.
        ctx: the handler's context.
        policy: attempts, initial and maximum delay.
        sleep: how to wait between attempts.
    """
    return await run_call(lambda: handler.handle(event, ctx), policy, sleep)


async def run_call(
    call: Callable[[], Awaitable[None]],
    policy: RetryPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    first: BaseException | None = None,
) -> HandlerResult:
    """Run ``call()`` (one handler call: an event or a batch) under the retry policy;
    never raises but ``CancelledError``.

    Args:
        call: makes the handler call.
        policy: attempts, initial and maximum delay.
        sleep: how to wait between attempts.
        first: the error of a first attempt already made (by the caller's fast path).
    """
    result = HandlerResult("success", 0, 0.0)
    started = time.perf_counter()
    if first is None:
        try:
            await _attempt(call, result)
        except Exception as exc:
            first = exc
        else:  # the common case costs one call: tenacity only once something failed
            result.duration = time.perf_counter() - started
            return result
    else:
        result.attempts = 1
        result.first_failure = result.last_failure = datetime.now(UTC)
    pending: BaseException | None = first

    async def again() -> None:
        nonlocal pending
        if pending is not None:
            # replay the failure already seen as tenacity's attempt 1, so its attempt
            # numbers and backoff match the handler calls made
            error, pending = pending, None
            raise error
        await _attempt(call, result)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(max(1, policy.attempts)),
        wait=Backoff(policy.initial_delay, policy.max_delay),
        retry=retry_if_exception(is_transient),
        reraise=True,
        sleep=sleep,
    )
    try:
        await retrying(again)
    except SkipEvent as exc:
        result.outcome, result.error = "skipped", exc
    except StopWatcher as exc:
        result.outcome, result.error = "stop", exc
    except Exception as exc:
        result.outcome, result.error = "failed", exc
    else:
        result.outcome = "retried"
    result.duration = time.perf_counter() - started
    return result


async def _attempt(call: Callable[[], Awaitable[None]], result: HandlerResult) -> None:
    result.attempts += 1
    try:
        await call()
    except Exception:
        now = datetime.now(UTC)
        result.first_failure = result.first_failure or now
        result.last_failure = now
        raise
