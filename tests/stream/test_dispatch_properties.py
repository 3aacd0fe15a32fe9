"""Property tests of the dispatcher: random keys, completion order, failures and batching."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from changestream_worker.errors import BatchItemFailures, PermanentError, TransientError
from changestream_worker.events import ChangeEvent
from changestream_worker.handler import Handler, HandlerContext, HandlerOptions
from changestream_worker.stream.dispatch import Dispatcher
from changestream_worker.testing.factories import make_event, token_of
from tests.stream.test_dispatch import ctx, seq_of, seq_of_token

ATTEMPTS = 3


@dataclass(frozen=True)
class Retry:
    """Retries without waiting: the properties do not depend on the backoff."""

    attempts: int = ATTEMPTS
    initial_delay: float = 0.0
    max_delay: float = 0.0


@dataclass(frozen=True)
class Batch:
    """``WatcherSettings.batch``."""

    max_events: int = 1
    max_wait: float = 0.0


@dataclass(frozen=True)
class Policy:
    """``WatcherSettings`` as the dispatcher reads it."""

    concurrency: int
    batch: Batch
    retry: Retry = field(default_factory=Retry)
    on_failure: str = "dead_letter"


@dataclass(frozen=True)
class Plan:
    """One event's fate: ``fails`` transient failures before success, or ``poison``."""

    key: int
    fails: int
    poison: bool
    delay: float


class Log:
    """Everything observable, stamped with one step counter: calls, finals, watermarks."""

    def __init__(self) -> None:
        self.step = 0
        self.calls: list[tuple[int, int, list[int]]] = []  # (start, end, seqs)
        self.final: dict[int, int] = {}  # seq -> step of its last call or dead letter
        self.succeeded: set[int] = set()
        self.dead: list[int] = []
        self.samples: list[tuple[int, int]] = []  # (step, watermark seq)

    def tick(self) -> int:
        self.step += 1
        return self.step


class Player(Handler):
    """Plays the plans, as ``handle`` or as ``handle_batch`` (item failures or whole-batch
    errors)."""

    def __init__(self, plans: dict[int, Plan], log: Log, mode: str) -> None:
        super().__init__(HandlerOptions())
        self.plans, self.log, self.mode = plans, log, mode
        self.failed: dict[int, int] = {}

    def _verdict(self, seq: int) -> BaseException | None:
        plan = self.plans[seq]
        if plan.poison:
            return PermanentError(f"poison {seq}")
        if self.failed.get(seq, 0) < plan.fails:
            self.failed[seq] = self.failed.get(seq, 0) + 1
            return TransientError(f"flaky {seq}")
        return None

    async def _call(self, seqs: list[int]) -> dict[int, BaseException]:
        start = self.log.tick()
        await asyncio.sleep(max(self.plans[s].delay for s in seqs))
        verdicts = {i: v for i, s in enumerate(seqs) if (v := self._verdict(s)) is not None}
        end = self.log.tick()
        self.log.calls.append((start, end, seqs))
        for i, s in enumerate(seqs):
            self.log.final[s] = end
            if i not in verdicts:
                self.log.succeeded.add(s)
        return verdicts

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        verdicts = await self._call([seq_of(event)])
        if verdicts:
            raise verdicts[0]


class BatchPlayer(Player):
    """The same plans through ``handle_batch``."""

    handle = Handler.handle  # type: ignore[assignment]  # batch-only: the one-event path uses batches of one

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        seqs = [seq_of(e) for e in events]
        verdicts = await self._call(seqs)
        if not verdicts:
            return
        if self.mode == "items":
            raise BatchItemFailures(dict(verdicts))
        transient = [v for v in verdicts.values() if isinstance(v, TransientError)]
        raise transient[0] if transient else next(iter(verdicts.values()))


class DeadLetters:
    """Records dead letters in the log."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def add(self, watcher: str, handler: str, event: ChangeEvent, *args: Any) -> None:
        seq = seq_of(event)
        self.log.dead.append(seq)
        self.log.final[seq] = self.log.tick()


scenarios = st.fixed_dictionaries(
    {
        "plans": st.lists(
            st.builds(
                Plan,
                key=st.integers(0, 5),
                fails=st.integers(0, ATTEMPTS - 1),
                poison=st.integers(0, 6).map(lambda x: x == 0),
                delay=st.sampled_from([0.0, 0.0, 0.0005, 0.001, 0.002]),
            ),
            min_size=1,
            max_size=40,
        ),
        "concurrency": st.integers(1, 6),
        "max_events": st.integers(1, 8),
        "idle_every": st.integers(2, 9),
        "seed": st.integers(0, 2**16),
    }
)


async def play(scenario: dict[str, Any], mode: str) -> tuple[Log, Dispatcher]:
    """Run the scenario; events have odd sequence numbers, post-batch tokens even ones."""
    log = Log()
    plans = {2 * i + 1: p for i, p in enumerate(scenario["plans"])}
    handler: Player = (
        Player(plans, log, mode) if mode == "handle" else BatchPlayer(plans, log, mode)
    )
    policy = Policy(scenario["concurrency"], Batch(scenario["max_events"]))
    d = Dispatcher("w", [("h", handler, ctx())], policy, DeadLetters(log), None)
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            wm = d.watermark
            log.samples.append((log.tick(), -1 if wm is None else seq_of_token(wm.token)))
            await asyncio.sleep(0)

    monitor = asyncio.create_task(watch())
    rng = random.Random(scenario["seed"])
    for seq, plan in plans.items():
        await d.submit(make_event(key=plan.key, seq=seq))
        if rng.randrange(scenario["idle_every"]) == 0:
            d.mark_idle(token_of(seq + 1))
    assert await d.drain(30)
    done.set()
    await monitor
    wm = d.watermark
    log.samples.append((log.tick(), -1 if wm is None else seq_of_token(wm.token)))
    await d.aclose()
    return log, d


def check(log: Log, d: Dispatcher, scenario: dict[str, Any]) -> None:
    plans = {2 * i + 1: p for i, p in enumerate(scenario["plans"])}
    # the checkpoint never passes an event before its last call (or dead letter) ended
    for step, mark in log.samples:
        assert all(log.final[s] < step for s in plans if s <= mark), (step, mark)
    # per document: calls never overlap, each call in stream order, last effects in order
    for key in {p.key for p in plans.values()}:
        mine = [(a, b, [s for s in seqs if plans[s].key == key]) for a, b, seqs in log.calls]
        mine = sorted((a, b, s) for a, b, s in mine if s)
        assert all(prev[1] < nxt[0] for prev, nxt in pairwise(mine))
        assert all(s == sorted(s) for _, _, s in mine)
        finals = [log.final[s] for s in sorted(plans) if plans[s].key == key]
        assert finals == sorted(finals)
    assert all(len(seqs) <= scenario["max_events"] for _, _, seqs in log.calls)
    assert d.completed_count == len(plans) and d.in_flight == 0
    assert d.watermark is not None and seq_of_token(d.watermark.token) >= max(plans)


class TestDispatcherProperties:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios)
    def test_handle_keeps_order_and_the_checkpoint_rule(self, scenario: dict[str, Any]) -> None:
        """One event per call: per-document order, the checkpoint behind unfinished work."""
        log, d = asyncio.run(play(scenario, "handle"))
        check(log, d, scenario)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios, st.sampled_from(["items", "whole"]))
    def test_batches_end_exactly_as_handle_would(self, scenario: dict[str, Any], mode: str) -> None:
        """Batches (item failures or whole-batch errors): the same rules hold, and the same
        events succeed and are dead-lettered as through ``handle``."""
        log, d = asyncio.run(play(scenario, mode))
        check(log, d, scenario)
        alone, _ = asyncio.run(play(scenario, "handle"))
        assert sorted(log.dead) == sorted(alone.dead)
        assert log.succeeded == alone.succeeded
