"""Batch delivery: grouping, per-document order, item failures, bisection, retry, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import generate_latest

from changestream_worker.errors import BatchItemFailures, PermanentError, TransientError
from changestream_worker.events import ChangeEvent
from changestream_worker.handler import Handler, HandlerContext, HandlerOptions
from changestream_worker.metrics import Metrics
from changestream_worker.stream.dispatch import Dispatcher, LeaseLost
from changestream_worker.testing.factories import make_event, token_of
from tests.stream.test_dispatch import MemoryDeadLetters, Retry, ctx, seq_of


@dataclass(frozen=True)
class Batch:
    """The shape of ``WatcherSettings.batch``."""

    max_events: int = 10
    max_wait: float = 0.0


@dataclass(frozen=True)
class Policy:
    """``WatcherSettings`` as the dispatcher reads it, with ``batch``."""

    concurrency: int = 4
    retry: Retry = field(default_factory=Retry)
    on_failure: str = "dead_letter"
    batch: Batch = field(default_factory=Batch)


class Recorder(Handler):
    """A batch handler that records its batches; ``fail(events, n)`` may raise."""

    def __init__(self, fail: Any = None, delay: float = 0.0) -> None:
        super().__init__(HandlerOptions())
        self.fail, self.delay = fail, delay
        self.batches: list[list[int]] = []
        self.done: list[int] = []

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        seqs = [seq_of(e) for e in events]
        self.batches.append(seqs)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            self.fail(seqs, len(self.batches))
        self.done.extend(seqs)


def dispatcher(
    *handlers: Handler,
    dlq: MemoryDeadLetters | None = None,
    metrics: Metrics | None = None,
    **kw: Any,
) -> Dispatcher:
    bound = [(f"h{i}", h, ctx(f"h{i}")) for i, h in enumerate(handlers)]
    guard = kw.pop("guard", None)
    return Dispatcher("w", bound, Policy(**kw), dlq or MemoryDeadLetters(), metrics, guard=guard)


async def feed(d: Dispatcher, keys: Sequence[int]) -> None:
    for seq, key in enumerate(keys):
        await d.submit(make_event(key=key, seq=seq))


class TestGrouping:
    async def test_ready_events_arrive_in_batches_in_stream_order(self) -> None:
        """Queued events reach ``handle_batch`` in batches of up to ``max_events``, each in
        stream order, every event exactly once."""
        h = Recorder(delay=0.001)
        d = dispatcher(h, concurrency=2, batch=Batch(max_events=7))
        await feed(d, [i % 13 for i in range(200)])
        assert await d.drain(10)
        assert max(len(b) for b in h.batches) == 7 and len(h.batches) < 200
        assert all(b == sorted(b) for b in h.batches)
        assert sorted(h.done) == list(range(200)) and d.completed_count == 200
        assert d.watermark is not None and d.watermark.token == token_of(199)

    async def test_documents_never_overtake_across_batches(self) -> None:
        """Two workers, few keys: a document's events are handled in stream order overall."""
        h = Recorder(delay=0.001)
        d = dispatcher(h, concurrency=3, batch=Batch(max_events=4))
        keys = [i % 3 for i in range(90)]
        await feed(d, keys)
        assert await d.drain(10)
        for key in range(3):
            mine = [s for s in h.done if keys[s] == key]
            assert mine == sorted(mine)

    async def test_max_wait_gathers_events_that_arrive_later(self) -> None:
        """With ``max_wait``, a batch that is not full waits for events submitted meanwhile."""
        h = Recorder()
        d = dispatcher(h, concurrency=1, batch=Batch(max_events=50, max_wait=0.2))
        for seq in range(5):
            await d.submit(make_event(key=seq, seq=seq))
            await asyncio.sleep(0.01)
        assert await d.drain(5)
        assert h.batches == [[0, 1, 2, 3, 4]]

    async def test_handle_only_handler_beside_a_batch_handler(self) -> None:
        """A plain ``handle`` handler in the same watcher sees every event once, in order."""
        from tests.stream.test_dispatch import Scripted

        plain, batched = Scripted(), Recorder()
        d = dispatcher(batched, plain, batch=Batch(max_events=5))
        await feed(d, [1] * 12)
        assert await d.drain(5)
        assert [seq_of(e) for e in plain.done] == list(range(12))
        assert batched.done == list(range(12))

    async def test_backpressure_counts_events_not_batches(self) -> None:
        """In flight stays at ``concurrency * max_events`` events, however they are grouped."""
        gate = asyncio.Event()

        class Held(Recorder):
            async def handle_batch(
                self, events: Sequence[ChangeEvent], ctx: HandlerContext
            ) -> None:
                await gate.wait()

        d = dispatcher(Held(), concurrency=2, batch=Batch(max_events=3))
        await feed(d, list(range(6)))
        blocked = asyncio.create_task(d.submit(make_event(key=99, seq=6)))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not blocked.done() and d.in_flight == 6
        gate.set()
        await blocked
        assert await d.drain(5) and d.completed_count == 7


class TestBatchFailures:
    async def test_item_failures_go_down_the_one_event_path(self) -> None:
        """Only the reported events and the later events of their documents are retried
        one by one; a permanent one is dead-lettered, the rest count as done."""
        calls: list[list[int]] = []

        def fail(seqs: list[int], n: int) -> None:
            calls.append(seqs)
            if len(seqs) > 1 and 2 in seqs:
                raise BatchItemFailures({seqs.index(2): "bad row"})
            if seqs == [2]:
                raise PermanentError("still bad")

        h, dlq = Recorder(fail), MemoryDeadLetters()
        d = dispatcher(h, dlq=dlq, concurrency=1, batch=Batch(max_events=10))
        # key of each seq: 2 and 5 share document 7
        await feed(d, [0, 1, 7, 3, 4, 7, 6])
        assert await d.drain(5)
        assert calls[0] == [0, 1, 2, 3, 4, 5, 6]
        assert calls[1:] == [[2], [5]]  # the failed one, then its document's later event
        assert [seq_of(x["event"]) for x in dlq.letters] == [2]
        assert d.completed_count == 7 and d.watermark is not None
        assert d.watermark.token == token_of(6)

    async def test_permanent_batch_error_bisects_to_the_poison_event(self) -> None:
        """A permanent error for the whole batch: halves until the one bad event is alone;
        only it is dead-lettered."""

        def poison(seqs: list[int], n: int) -> None:
            if 11 in seqs:
                raise PermanentError("poison")

        h, dlq = Recorder(poison), MemoryDeadLetters()
        d = dispatcher(h, dlq=dlq, concurrency=1, batch=Batch(max_events=16))
        await feed(d, list(range(16)))
        assert await d.drain(5)
        assert [seq_of(x["event"]) for x in dlq.letters] == [11]
        assert sorted(h.done) == [s for s in range(16) if s != 11]
        assert len(h.batches) <= 1 + 2 * 4  # log2(16) levels, two calls each
        assert d.completed_count == 16

    async def test_transient_batch_error_retries_the_whole_batch(self) -> None:
        """A transient error: the same batch is called again; nothing dead-lettered."""

        def flaky(seqs: list[int], n: int) -> None:
            if n < 3:
                raise TransientError("warehouse busy")

        h, dlq = Recorder(flaky), MemoryDeadLetters()
        d = dispatcher(h, dlq=dlq, concurrency=1, retry=Retry(attempts=5))
        await feed(d, list(range(5)))
        assert await d.drain(5)
        assert h.batches == [[0, 1, 2, 3, 4]] * 3 and dlq.letters == []

    async def test_lost_lease_stops_before_the_batch_call(self) -> None:
        """The guard is checked before each batch call; once false nothing more runs."""
        owned = True
        h = Recorder()
        d = dispatcher(h, guard=lambda: owned)
        await d.submit(make_event(seq=1))
        assert await d.drain(5)
        owned = False
        await d.submit(make_event(seq=2))
        assert await d.drain(5)
        assert isinstance(d.stopped, LeaseLost) and h.batches == [[1]]
        assert d.watermark is not None and d.watermark.token == token_of(1)


class TestBatchMetrics:
    async def test_batch_size_duration_per_call_and_counts_per_event(self) -> None:
        """One batch of 5: the size histogram and the duration histogram count one call,
        the handled counter counts five events."""
        metrics = Metrics()
        d = dispatcher(Recorder(), metrics=metrics, concurrency=1)
        await feed(d, list(range(5)))
        assert await d.drain(5)
        text = generate_latest(metrics.registry).decode()
        assert 'changestream_worker_batch_size_count{handler="h0",watcher="w"} 1.0' in text
        assert 'changestream_worker_batch_size_sum{handler="h0",watcher="w"} 5.0' in text
        assert 'handler_duration_seconds_count{handler="h0",watcher="w"} 1.0' in text
        assert 'events_handled_total{handler="h0",outcome="success",watcher="w"} 5.0' in text
