"""Replaying dead letters: each through its handler again, under the retry policy."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from bson import ObjectId

from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.stream.retry import RetryPolicy, run_handler

if TYPE_CHECKING:
    from changestream_worker.handler import Handler, HandlerContext

log = structlog.get_logger("changestream_worker.stream.replay")

Resolved = tuple["Handler", "HandlerContext", RetryPolicy]
Resolver = Callable[[str, str], Awaitable[Resolved | None]]


@dataclass(slots=True)
class ReplayReport:
    """What a replay did: ids replayed (removed), failed (kept), and unresolvable (kept)."""

    replayed: builtins.list[ObjectId] = field(default_factory=builtins.list)
    failed: builtins.list[tuple[ObjectId, str]] = field(default_factory=builtins.list)
    unresolved: builtins.list[tuple[ObjectId, str]] = field(default_factory=builtins.list)


async def replay(
    store: DeadLetterStore,
    resolve: Resolver,
    watcher: str | None = None,
    id: ObjectId | str | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> ReplayReport:
    """Re-run dead letters through their handler, oldest first; remove each that succeeds.

    A ``SkipEvent`` counts as success. A failure keeps the letter and records the new error.

    Args:
        store: the dead-letter store.
        resolve: ``(watcher, handler) -> (handler, context, retry policy)``, or ``None``
            when the config no longer has them.
        watcher: only this watcher's letters.
        id: only this letter.
        sleep: how to wait between retry attempts.
    """
    if id is not None:
        one = await store.get(id)
        letters = [one] if one is not None and watcher in (None, one.watcher) else []
    else:
        letters = await store.list(watcher)
    report = ReplayReport()
    for letter in letters:
        target = await resolve(letter.watcher, letter.handler)
        if target is None:
            report.unresolved.append((letter.id, f"{letter.watcher}/{letter.handler}"))
            continue
        handler, ctx, policy = target
        result = await run_handler(handler, letter.event, ctx, policy, sleep)
        if result.outcome in ("success", "retried", "skipped"):
            await store.delete(letter.id)
            report.replayed.append(letter.id)
            log.info(
                "dead_letter_replayed",
                watcher=letter.watcher,
                handler=letter.handler,
                id=str(letter.id),
                operation=letter.operation,
            )
        else:
            error = result.error or RuntimeError(result.outcome)
            await store.record_failure(letter.id, error, result.attempts)
            report.failed.append((letter.id, f"{type(error).__name__}: {error}"[:500]))
            log.warning(
                "dead_letter_replay_failed",
                watcher=letter.watcher,
                handler=letter.handler,
                id=str(letter.id),
                error_type=type(error).__name__,
                error=str(error)[:300],
            )
    return report
