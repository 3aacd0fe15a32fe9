"""Dispatcher: per-key order, bounded concurrency, backpressure, watermark, retry, dead letters."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pytest
from pymongo.errors import AutoReconnect, OperationFailure
from structlog.testing import capture_logs

from changestream_worker.errors import (
    PermanentError,
    RetryEvent,
    SkipEvent,
    StopWatcher,
    TransientError,
)
from changestream_worker.events import ChangeEvent
from changestream_worker.handler import Handler, HandlerContext, HandlerOptions
from changestream_worker.stream.dispatch import Dispatcher, LeaseLost, Position
from changestream_worker.stream.position import Watermark
from changestream_worker.stream.retry import is_transient, run_handler
from changestream_worker.testing.factories import make_event, token_of

Behaviour = Callable[[ChangeEvent, int], Awaitable[None]]


@dataclass(frozen=True)
class Retry:
    """The shape of ``WatcherSettings.retry`` the dispatcher reads."""

    attempts: int = 3
    initial_delay: float = 0.001
    max_delay: float = 0.005


@dataclass(frozen=True)
class Policy:
    """The shape of ``WatcherSettings`` the dispatcher reads."""

    concurrency: int = 8
    retry: Retry = field(default_factory=Retry)
    on_failure: str = "dead_letter"


class MemoryDeadLetters:
    """An in-memory dead-letter sink with ``DeadLetterStore.add``'s signature."""

    def __init__(self, fail: bool = False) -> None:
        self.letters: list[dict[str, Any]] = []
        self.fail = fail

    async def add(
        self,
        watcher: str,
        handler: str,
        event: ChangeEvent,
        error: BaseException,
        attempts: int,
        first_failure: datetime,
        last_failure: datetime,
    ) -> None:
        if self.fail:
            raise PermanentError("dead-letter store is read-only")
        self.letters.append(
            {
                "watcher": watcher,
                "handler": handler,
                "event": event,
                "error": error,
                "attempts": attempts,
                "first": first_failure,
                "last": last_failure,
            }
        )


class Scripted(Handler):
    """A handler whose behaviour per call is a coroutine function (event, call number)."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        super().__init__(HandlerOptions())
        self.behaviour = behaviour
        self.calls: list[ChangeEvent] = []
        self.done: list[ChangeEvent] = []

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        self.calls.append(event)
        if self.behaviour is not None:
            await self.behaviour(event, len(self.calls))
        self.done.append(event)


def ctx(name: str = "h") -> HandlerContext:
    # these handlers never touch MongoDB: the context's database fields stay unset
    none = cast(Any, None)
    return HandlerContext(
        client=none, database=none, state_database=none, log=none, watcher="w", handler=name
    )


def dispatcher(
    *handlers: Handler, dlq: MemoryDeadLetters | None = None, **policy: Any
) -> Dispatcher:
    bound = [(f"h{i}", h, ctx(f"h{i}")) for i, h in enumerate(handlers)]
    return Dispatcher("w", bound, Policy(**policy), dlq or MemoryDeadLetters(), None)


def seq_of_token(token: Any) -> int:
    return int(token["_data"][-34:-2], 16)


def seq_of(event: ChangeEvent) -> int:
    return seq_of_token(event.token)


async def settle(cond: Callable[[], bool], tries: int = 500) -> None:
    for _ in range(tries):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


class TestOrdering:
    @pytest.mark.parametrize("seed", range(5))
    async def test_same_key_runs_in_stream_order_while_keys_overlap(self, seed: int) -> None:
        """Events of one key run in stream order; different keys run at the same time."""
        rng = random.Random(seed)
        running, peak = 0, 0

        async def work(event: ChangeEvent, n: int) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(rng.random() / 1000)
            running -= 1

        h = Scripted(work)
        d = dispatcher(h, concurrency=16)
        for seq in range(300):
            await d.submit(make_event(key=rng.randrange(12), seq=seq))
        assert await d.drain(10)
        by_key: dict[Any, list[int]] = {}
        for event in h.done:
            by_key.setdefault(event.document_id, []).append(seq_of(event))
        assert all(seqs == sorted(seqs) for seqs in by_key.values())
        assert len(h.done) == 300 and d.completed_count == 300
        assert 1 < peak <= 16

    async def test_every_handler_runs_in_config_order(self) -> None:
        """Each event passes through all handlers, one after another, in config order."""
        order: list[str] = []

        def tag(name: str) -> Behaviour:
            async def run(event: ChangeEvent, n: int) -> None:
                order.append(f"{name}{seq_of(event)}")

            return run

        d = dispatcher(Scripted(tag("a")), Scripted(tag("b")))
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        assert order == ["a1", "b1"]


class TestBackpressure:
    async def test_concurrency_bound_is_never_exceeded(self) -> None:
        """No more than ``concurrency`` events are in flight, queued lanes included."""
        gate = asyncio.Event()

        async def wait(event: ChangeEvent, n: int) -> None:
            await gate.wait()

        d = dispatcher(Scripted(wait), concurrency=4)
        for seq in range(4):
            await d.submit(make_event(key=seq % 2, seq=seq))
        blocked = asyncio.create_task(d.submit(make_event(key=9, seq=4)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done() and d.in_flight == 4
        gate.set()
        await blocked
        assert await d.drain(5) and d.completed_count == 5

    async def test_submit_waits_for_a_slow_handler(self) -> None:
        """With a slow handler, the producer is paced: in flight stays at the bound."""
        peak = 0

        async def slow(event: ChangeEvent, n: int) -> None:
            await asyncio.sleep(0.001)

        d = dispatcher(Scripted(slow), concurrency=3)
        for seq in range(60):
            await d.submit(make_event(key=seq, seq=seq))
            peak = max(peak, d.in_flight)
        assert peak == 3
        assert await d.drain(5)


class TestWatermark:
    @pytest.mark.parametrize("seed", range(25))
    def test_tracker_matches_a_naive_model(self, seed: int) -> None:
        """Random submissions, idle marks and completions: the watermark is always the
        newest position whose predecessors are all complete."""
        rng = random.Random(seed)
        marks = Watermark()
        entries: list[tuple[Position | None, bool]] = []  # (position, done) in stream order
        open_slots: dict[int, Any] = {}
        for step in range(300):
            roll = rng.random()
            if roll < 0.45:
                pos = None if rng.random() < 0.1 else Position(token_of(step))
                open_slots[len(entries)] = marks.add(pos)
                entries.append((pos, False))
            elif roll < 0.55:
                pos = Position(token_of(step))
                marks.add_done(pos)
                entries.append((pos, True))
            elif open_slots:
                index = rng.choice(list(open_slots))
                marks.complete(open_slots.pop(index))
                entries[index] = (entries[index][0], True)
            expected = None
            for pos, done in entries:
                if not done:
                    break
                expected = pos or expected
            assert marks.position == expected
            assert len(marks) == len(open_slots)

    @pytest.mark.parametrize("seed", range(5))
    async def test_watermark_never_passes_unfinished_events(self, seed: int) -> None:
        """Events released in random order: the watermark never names an event with an
        unfinished predecessor."""
        rng = random.Random(seed)
        gates = {seq: asyncio.Event() for seq in range(40)}

        async def held(event: ChangeEvent, n: int) -> None:
            await gates[seq_of(event)].wait()

        h = Scripted(held)
        d = dispatcher(h, concurrency=40)
        for seq in range(40):
            await d.submit(make_event(key=seq, seq=seq))
        order = list(gates)
        rng.shuffle(order)
        released: set[int] = set()
        for seq in order:
            gates[seq].set()
            released.add(seq)
            await settle(lambda: len(h.done) == len(released))
            prefix = 0
            while prefix in released:
                prefix += 1
            wm = d.watermark
            upto = -1 if wm is None or not wm.token else seq_of_token(wm.token)
            assert upto == prefix - 1  # never ahead of unfinished work, never needlessly behind
        assert await d.drain(5)
        assert d.watermark is not None and d.watermark.token == token_of(39)

    async def test_idle_mark_advances_after_pending_work(self) -> None:
        """A post-batch token becomes the watermark once the events before it complete."""
        gate = asyncio.Event()

        async def wait(event: ChangeEvent, n: int) -> None:
            await gate.wait()

        d = dispatcher(Scripted(wait))
        d.mark_idle(token_of(0))
        assert d.watermark is not None and d.watermark.token == token_of(0)
        await d.submit(make_event(seq=1))
        d.mark_idle(token_of(2))
        assert d.watermark.token == token_of(0)
        gate.set()
        assert await d.drain(5)
        assert d.watermark.token == token_of(2)
        assert d.watermark.cluster_time is not None  # read from the token

    async def test_snapshot_events_do_not_move_the_watermark(self) -> None:
        """Snapshot events have no token: they complete without becoming the checkpoint."""
        d = dispatcher(Scripted())
        raw = dict(make_event(seq=1).raw, _id=None)
        await d.submit(ChangeEvent(raw, from_snapshot=True))
        assert await d.drain(5)
        assert d.completed_count == 1 and d.watermark is None


class TestRetry:
    async def test_transient_error_is_retried_until_success(self) -> None:
        """Two transient failures, then success: no dead letter, the event completes."""

        async def flaky(event: ChangeEvent, n: int) -> None:
            if n < 3:
                raise TransientError("relay busy")

        h, dlq = Scripted(flaky), MemoryDeadLetters()
        d = dispatcher(h, dlq=dlq, retry=Retry(attempts=5))
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        assert len(h.calls) == 3 and dlq.letters == [] and d.completed_count == 1

    async def test_permanent_error_is_dead_lettered_at_once_and_lane_continues(self) -> None:
        """A non-transient error: one attempt, a dead letter, then the key's next event."""

        async def refuse_first(event: ChangeEvent, n: int) -> None:
            if n == 1:
                raise ValueError("bad document")

        h, dlq = Scripted(refuse_first), MemoryDeadLetters()
        d = dispatcher(h, dlq=dlq, retry=Retry(attempts=5))
        await d.submit(make_event(key=7, seq=1))
        await d.submit(make_event(key=7, seq=2))
        assert await d.drain(5)
        assert [letter["attempts"] for letter in dlq.letters] == [1]
        assert isinstance(dlq.letters[0]["error"], ValueError)
        assert [seq_of(e) for e in h.done] == [2]
        assert d.completed_count == 2 and d.watermark is not None
        assert d.watermark.token == token_of(2)

    async def test_exhausted_attempts_are_dead_lettered_with_their_count(self) -> None:
        """A transient error every time: after N attempts the event is dead-lettered."""

        async def down(event: ChangeEvent, n: int) -> None:
            raise AutoReconnect("connection reset")

        dlq = MemoryDeadLetters()
        d = dispatcher(Scripted(down), dlq=dlq, retry=Retry(attempts=4))
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        assert dlq.letters[0]["attempts"] == 4
        assert dlq.letters[0]["first"] <= dlq.letters[0]["last"]

    async def test_one_handler_failing_does_not_keep_others_from_the_event(self) -> None:
        """The first handler dead-letters; the second still handles the event."""

        async def boom(event: ChangeEvent, n: int) -> None:
            raise PermanentError("no")

        second, dlq = Scripted(), MemoryDeadLetters()
        d = dispatcher(Scripted(boom), second, dlq=dlq)
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        assert [letter["handler"] for letter in dlq.letters] == ["h0"]
        assert len(second.done) == 1 and d.completed_count == 1

    async def test_retry_event_waits_as_asked(self) -> None:
        """``RetryEvent(after=x)`` makes the next attempt wait x seconds."""
        waits: list[float] = []

        async def sleep(seconds: float) -> None:
            waits.append(seconds)

        async def later(event: ChangeEvent, n: int) -> None:
            if n == 1:
                raise RetryEvent(after=7.5)

        result = await run_handler(Scripted(later), make_event(seq=1), ctx(), Retry(), sleep)
        assert result.outcome == "retried" and result.attempts == 2 and waits == [7.5]

    def test_transient_classification(self) -> None:
        """Network errors, labelled server errors and handler-declared ones are transient."""
        labelled = OperationFailure("conflict", 112, {"errorLabels": ["TransientTransactionError"]})
        assert is_transient(labelled) and is_transient(AutoReconnect("x"))
        assert is_transient(TimeoutError()) and is_transient(ConnectionResetError())
        assert is_transient(TransientError("x")) and is_transient(RetryEvent())
        assert not is_transient(OperationFailure("bad", 2)) and not is_transient(ValueError())
        assert not is_transient(PermanentError("x"))


class TestControl:
    async def test_skip_event_completes_without_dead_letter(self) -> None:
        """``SkipEvent`` ends that handler's work on the event; it still completes."""

        async def skip(event: ChangeEvent, n: int) -> None:
            raise SkipEvent("not for me")

        dlq = MemoryDeadLetters()
        d = dispatcher(Scripted(skip), dlq=dlq)
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        assert dlq.letters == [] and d.completed_count == 1 and d.stopped is None

    async def test_stop_watcher_keeps_watermark_before_the_event(self) -> None:
        """``StopWatcher``: ``stopped`` is set, the event is not completed, nothing follows."""

        async def stop_on_two(event: ChangeEvent, n: int) -> None:
            if seq_of(event) == 2:
                raise StopWatcher("maintenance")

        h = Scripted(stop_on_two)
        d = dispatcher(h, concurrency=1)
        for seq in range(1, 4):
            await d.submit(make_event(key=seq, seq=seq))
        assert await d.drain(5)
        assert isinstance(d.stopped, StopWatcher)
        assert [seq_of(e) for e in h.done] == [1]
        assert d.watermark is not None and d.watermark.token == token_of(1)
        await d.submit(make_event(seq=9))  # dropped: the dispatcher has stopped
        assert d.in_flight == 0 and len(h.calls) == 2

    async def test_on_failure_stop_stops_instead_of_dead_lettering(self) -> None:
        """``on_failure: stop``: no dead letter, ``stopped`` is the error, the watermark holds."""

        async def boom(event: ChangeEvent, n: int) -> None:
            if seq_of(event) == 2:
                raise PermanentError("cannot")

        h, dlq = Scripted(boom), MemoryDeadLetters()
        d = dispatcher(h, dlq=dlq, on_failure="stop", concurrency=1)
        for seq in range(1, 4):
            await d.submit(make_event(key=1, seq=seq))
        assert await d.drain(5)
        assert isinstance(d.stopped, PermanentError) and dlq.letters == []
        assert d.watermark is not None and d.watermark.token == token_of(1)
        assert d.completed_count == 1

    async def test_dead_letter_write_failure_stops_rather_than_losing(self) -> None:
        """If the dead letter cannot be written, the watcher stops; the event stays pending."""

        async def boom(event: ChangeEvent, n: int) -> None:
            raise PermanentError("cannot")

        d = dispatcher(Scripted(boom), dlq=MemoryDeadLetters(fail=True))
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        assert d.stopped is not None and d.watermark is None

    async def test_lost_lease_stops_handling(self) -> None:
        """Once the guard says the lease is gone, no handler runs and ``stopped`` says why."""
        owned = True
        h = Scripted()
        bound = [("h0", h, ctx())]
        d = Dispatcher("w", bound, Policy(), MemoryDeadLetters(), None, guard=lambda: owned)
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        owned = False
        await d.submit(make_event(seq=2))
        assert await d.drain(5)
        assert isinstance(d.stopped, LeaseLost) and len(h.done) == 1

    async def test_drain_times_out_then_completes(self) -> None:
        """``drain`` reports False while work is stuck and True once it is done."""
        gate = asyncio.Event()

        async def wait(event: ChangeEvent, n: int) -> None:
            await gate.wait()

        d = dispatcher(Scripted(wait))
        await d.submit(make_event(seq=1))
        assert await d.drain(0.01) is False
        gate.set()
        assert await d.drain(None) is True

    async def test_aclose_cancels_stuck_work_without_completing_it(self) -> None:
        """After a drain timeout, ``aclose`` cancels the lanes; their events stay unfinished."""

        async def forever(event: ChangeEvent, n: int) -> None:
            await asyncio.Event().wait()

        d = dispatcher(Scripted(forever))
        await d.submit(make_event(seq=1))
        await d.aclose()
        assert d.in_flight == 0 and d.completed_count == 0 and d.watermark is None


class TestLogs:
    async def test_failure_is_logged_once_without_the_document(self) -> None:
        """One ``event_failed`` line with watcher, handler, operation and key; no document."""

        async def boom(event: ChangeEvent, n: int) -> None:
            raise TransientError("smtp 451")

        d = dispatcher(Scripted(boom), retry=Retry(attempts=3))
        event = make_event(key=42, doc={"_id": 42, "email": "secret@example.com"}, seq=1)
        with capture_logs() as logs:
            await d.submit(event)
            assert await d.drain(5)
        failed = [entry for entry in logs if entry["event"] == "event_failed"]
        assert len(failed) == 1
        entry = failed[0]
        assert entry["watcher"] == "w" and entry["handler"] == "h0"
        assert entry["operation"] == "insert" and entry["document_key"] == '{"_id": 42}'
        assert entry["error_type"] == "TransientError" and entry["attempts"] == 3
        assert "secret@example.com" not in repr(logs)
