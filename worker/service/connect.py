"""Reaching MongoDB: wait for it at start with capped backoff, then track whether it answers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import pymongo
import structlog
from pymongo import AsyncMongoClient
from pymongo.errors import ConfigurationError, PyMongoError, ServerSelectionTimeoutError
from pymongo.monitoring import (
    TopologyClosedEvent,
    TopologyDescriptionChangedEvent,
    TopologyListener,
    TopologyOpenedEvent,
)
from pymongo.topology_description import TopologyDescription
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
)

from changestream_worker.errors import WorkerError
from changestream_worker.logs import mask_uri
from changestream_worker.stream.retry import Backoff

__all__ = [
    "MongoUnreachable",
    "Reachability",
    "StartupTimeout",
    "describe_error",
    "wait_for_mongodb",
    "watch_connection",
]

log = structlog.get_logger("changestream_worker.service.connect")
Client = AsyncMongoClient[dict[str, Any]]
# pymongo appends its timeouts and the whole topology to a selection error: noise in a log line
_NOISE = re.compile(r" \(configured timeouts: [^)]*\)|, Timeout: .*$", re.DOTALL)


class MongoUnreachable(WorkerError):
    """One attempt found no writable MongoDB server; the message is one readable line."""


class StartupTimeout(WorkerError):
    """MongoDB stayed unreachable for the whole ``startup_timeout``."""


class Reachability(TopologyListener):
    """Whether this process can reach a writable MongoDB server, for /readyz and logs.

    Registered as the client's topology listener, it follows the driver's own monitoring:
    unreachable while no primary is known (a lost network, an election, a stopped server),
    reachable again as soon as one is, without a probe of its own.
    """

    def __init__(self) -> None:
        self.reachable = False
        self.reason = "not connected yet"
        self.attempts = 0
        self.changed_at = time.monotonic()
        self.lost = asyncio.Event()  # set on a loss after the start; the watch loop probes
        self.back = asyncio.Event()  # set while the driver knows a writable server

    def detail(self) -> dict[str, Any]:
        """The JSON /readyz shows under ``mongodb``."""
        out: dict[str, Any] = {"reachable": self.reachable}
        if not self.reachable:
            out["reason"] = self.reason
            out["unreachable_for_s"] = round(time.monotonic() - self.changed_at, 1)
            if self.attempts:
                out["attempts"] = self.attempts
        return out

    def mark(self, reachable: bool, reason: str = "") -> None:
        if reachable != self.reachable:
            self.changed_at = time.monotonic()
        self.reachable, self.reason = reachable, "" if reachable else reason
        if reachable:
            self.back.set()
        else:
            self.back.clear()

    # ---- TopologyListener: the driver calls these from its monitors --------------------
    def opened(self, event: TopologyOpenedEvent) -> None:
        pass

    def closed(self, event: TopologyClosedEvent) -> None:
        pass

    def description_changed(self, event: TopologyDescriptionChangedEvent) -> None:
        new = event.new_description
        if not new.server_descriptions():
            return  # the client is closing: no news about the servers
        if new.has_writable_server():
            self.mark(True)
        elif self.reachable:
            # no log here: the watch loop probes first, and a stale monitor result is no loss
            self.mark(False, topology_reason(new) or "no writable server (primary) known")
            self.lost.set()


def topology_reason(description: TopologyDescription) -> str:
    """The servers' own errors, one line: why no writable server is known."""
    errors = []
    for sd in description.server_descriptions().values():
        if sd.error is not None:
            errors.append(_clean(str(sd.error)))
    return "; ".join(dict.fromkeys(errors))


def _clean(text: str) -> str:
    return _NOISE.sub("", text).strip()[:300]


def describe_error(exc: BaseException, client: Client | None = None) -> str:
    """One line for a connection failure, without pymongo's topology dump."""
    if isinstance(exc, ServerSelectionTimeoutError):
        text = _clean(str(exc))
        if text.startswith("No replica set members available for replica set name"):
            text += " (check the replicaSet option against the server's replica set name)"
        elif client is not None and not text:
            text = topology_reason(client.topology_description)
        return text or "no server answered"
    return _clean(f"{type(exc).__name__}: {exc}")


async def _probe(client: Client, seconds: float) -> None:
    try:
        # a bounded client-side timeout per attempt; ping needs the primary (the default)
        with pymongo.timeout(seconds):
            await client.admin.command("ping")
    except (ConfigurationError, PyMongoError) as exc:  # DNS of a +srv URI fails as a config error
        raise MongoUnreachable(describe_error(exc, client)) from exc


async def wait_for_mongodb(
    client: Client,
    uri: str,
    reachability: Reachability,
    stop: asyncio.Event,
    startup_timeout: float | None = None,
    *,
    probe_timeout: float = 3.0,
    initial_delay: float = 0.5,
    max_delay: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    announce: bool = True,
) -> bool:
    """Ping until MongoDB answers; True once it does, False if ``stop`` was set first.

    Each failed attempt logs one ``mongodb_unreachable`` warning (masked URI, error, next
    retry); the waits grow exponentially with jitter up to ``max_delay``.

    Raises:
        StartupTimeout: when ``startup_timeout`` seconds passed without an answer.
    """
    started = clock()
    deadline = None if startup_timeout is None else started + startup_timeout

    def remaining() -> float:
        return float("inf") if deadline is None else max(0.0, deadline - clock())

    # the worker's one backoff; its jitter keeps replicas restarted together out of step
    backoff = Backoff(initial_delay, max_delay)

    def wait(state: RetryCallState) -> float:
        return min(backoff(state), remaining())

    def before_sleep(state: RetryCallState) -> None:
        outcome = state.outcome
        error = str(outcome.exception()) if outcome is not None else "unknown"
        reachability.attempts = state.attempt_number
        reachability.mark(False, error)
        retry_in = state.upcoming_sleep
        if deadline is not None and remaining() <= 0:
            return  # the last attempt failed: the timeout reports it
        log.warning(
            "mongodb_unreachable",
            mongodb=mask_uri(uri),
            error=error,
            attempt=state.attempt_number,
            retry_in_s=round(retry_in, 1),
            waited_s=round(clock() - started, 1),
        )

    async def sleep(seconds: float) -> None:
        # the driver's monitor may find the server first: probe again at once when it does
        waits = [
            asyncio.ensure_future(stop.wait()),
            asyncio.ensure_future(reachability.back.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def give_up(state: RetryCallState) -> bool:
        return stop.is_set() or (deadline is not None and remaining() <= 0)

    retrying = AsyncRetrying(
        sleep=sleep,
        stop=give_up,
        wait=wait,
        retry=retry_if_exception_type(MongoUnreachable),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        async for attempt in retrying:
            with attempt:
                probe = asyncio.ensure_future(
                    _probe(client, max(0.1, min(probe_timeout, remaining())))
                )
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait([probe, stopping], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if stop.is_set():
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError, MongoUnreachable):
                        await probe
                    return False
                await probe
    except MongoUnreachable as exc:
        if stop.is_set():
            return False
        reachability.mark(False, str(exc))
        waited = round(clock() - started, 1)
        raise StartupTimeout(
            f"MongoDB at {mask_uri(uri)} was not reachable within startup_timeout "
            f"({waited}s): {exc}"
        ) from exc
    if reachability.attempts and announce:
        log.info(
            "mongodb_reachable",
            mongodb=mask_uri(uri),
            attempts=reachability.attempts + 1,
            waited_s=round(clock() - started, 1),
        )
    reachability.attempts = 0
    reachability.mark(True)
    return True


async def watch_connection(
    client: Client, uri: str, reachability: Reachability, stop: asyncio.Event, **kw: Any
) -> None:
    """After the start: each time the driver loses every writable server, probe with the
    same backoff and one warning per attempt until MongoDB answers again."""
    while not stop.is_set():
        lost = asyncio.ensure_future(reachability.lost.wait())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([lost, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            stopping.cancel()
        if stop.is_set():
            return
        reachability.lost.clear()
        since = reachability.changed_at
        with contextlib.suppress(MongoUnreachable):
            await _probe(client, kw.get("probe_timeout", 3.0))
            reachability.mark(True)
            continue  # a blip, or a monitor's stale result: answered at once
        log.warning("mongodb_connection_lost", mongodb=mask_uri(uri), error=reachability.reason)
        if await wait_for_mongodb(client, uri, reachability, stop, None, announce=False, **kw):
            log.info(
                "mongodb_reachable_again",
                mongodb=mask_uri(uri),
                unreachable_for_s=round(time.monotonic() - since, 1),
            )
