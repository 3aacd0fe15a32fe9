"""Operator commands: ``status``, ``dlq list|replay|purge`` and ``checkpoint reset`` back-ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from changestream_worker.cli.tables import render_dead_letters, render_status
from changestream_worker.errors import ConfigError
from changestream_worker.service.handlers import HandlerSet
from changestream_worker.state.checkpoints import Checkpoint, MongoCheckpointStore
from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.state.status import iso, looks_running, read_status
from changestream_worker.stream.replay import Resolved, replay

if TYPE_CHECKING:
    from changestream_worker.config.models import Settings, WatcherSettings

EMBEDDED = "embedded://"
Client = AsyncMongoClient[dict[str, Any]]


class OpsError(Exception):
    """A usage problem: printed on stderr, exit code 2."""


@dataclass(frozen=True)
class _DefaultRetry:
    """Retry for replaying letters of a watcher that is no longer configured."""

    attempts: int = 3
    initial_delay: float = 0.2
    max_delay: float = 5.0


def watcher_names(settings: Settings) -> list[str]:
    """Every watcher instance name: ``w``, or ``w#0`` … ``w#N-1`` when partitioned."""
    names: list[str] = []
    for ws in settings.watchers:
        parts = getattr(ws, "partitions", 1) or 1
        names += [ws.name] if parts <= 1 else [f"{ws.name}#{i}" for i in range(parts)]
    return names


def _select(settings: Settings, watcher: str | None) -> list[str]:
    names = watcher_names(settings)
    if watcher is None:
        return names
    chosen = [n for n in names if n == watcher or n.split("#")[0] == watcher]
    if not chosen:
        raise OpsError(f"unknown watcher {watcher!r} (configured: {', '.join(names) or 'none'})")
    return chosen


@contextlib.asynccontextmanager
async def connect(settings: Settings) -> AsyncIterator[Client]:
    """A client on ``mongodb.uri``; ``embedded://`` has no state to inspect, so it is refused."""
    if settings.mongodb.uri.startswith(EMBEDDED):
        raise OpsError(
            "mongodb.uri is embedded://: an in-process emulator lives only inside "
            "`changestream-worker run`, so there is nothing to inspect; point the "
            "config at a MongoDB replica set"
        )
    uri, app = settings.mongodb.uri, settings.mongodb.app_name
    client: Client
    if "serverselectiontimeoutms" in uri.lower():
        client = AsyncMongoClient(uri, appname=app, tz_aware=True)
    else:  # an operator waits 5 s for an answer, unless the URI says otherwise
        client = AsyncMongoClient(uri, appname=app, tz_aware=True, serverSelectionTimeoutMS=5000)
    try:
        yield client
    finally:
        await client.close()


async def _run(settings: Settings, body: Callable[[Client], Awaitable[int]]) -> int:
    try:
        async with connect(settings) as client:
            return await body(client)
    except OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError:
        raise  # exit 2 with its lines, from main
    except PyMongoError as exc:
        from changestream_worker.logs import mask_uri

        print(f"error: MongoDB at {mask_uri(settings.mongodb.uri)}: {exc}"[:600], file=sys.stderr)
        return 1
    except Exception as exc:  # an operator gets one line, never a traceback
        print(f"error: {type(exc).__name__}: {exc}"[:600], file=sys.stderr)
        return 1


async def status(settings: Settings, as_json: bool) -> int:
    """Print each watcher's state, checkpoint time, lag, dead letters and lease."""

    async def body(client: Client) -> int:
        rows = await read_status(client[settings.state.database], watcher_names(settings))
        if as_json:
            print(json.dumps({"watchers": rows}, indent=2))
        else:
            print(render_status(rows))
        return 0

    return await _run(settings, body)


async def dlq_list(settings: Settings, watcher: str | None) -> int:
    """Print the dead letters of one watcher (or all), oldest first."""

    async def body(client: Client) -> int:
        store = DeadLetterStore(client[settings.state.database])
        letters = await store.list(watcher)
        if letters:
            print(render_dead_letters(letters))
        print(f"{len(letters)} dead letter(s)")
        return 0

    return await _run(settings, body)


async def dlq_purge(settings: Settings, watcher: str | None) -> int:
    """Delete the dead letters of one watcher (or all)."""

    async def body(client: Client) -> int:
        n = await DeadLetterStore(client[settings.state.database]).purge(watcher)
        print(f"purged {n} dead letter(s)" + (f" of {watcher}" if watcher else ""))
        return 0

    return await _run(settings, body)


async def dlq_replay(settings: Settings, watcher: str | None, id: str | None) -> int:
    """Re-run dead letters through their handlers; each success is removed. Exit 1 if any
    letter failed again or names a handler the config no longer has."""
    from changestream_worker.config.registry import build_handlers

    if id is not None:
        from bson import ObjectId

        if not ObjectId.is_valid(id):
            print(f"error: --id: not a dead-letter id: {id!r}", file=sys.stderr)
            return 2

    async def body(client: Client) -> int:
        handlers = HandlerSet(
            build_handlers(settings), client, settings.mongodb.database, settings.state.database
        )
        by_name = {ws.name: ws for ws in settings.watchers}

        async def resolve(watcher_name: str, handler_name: str) -> Resolved | None:
            if handler_name not in handlers.handlers:
                return None
            ws: WatcherSettings | None = by_name.get(watcher_name.split("#")[0])
            db = ws.database if ws is not None else None
            ctx = handlers.context(handler_name, watcher_name, db, replay=True)
            handler = await handlers.start(handler_name, ctx)
            return handler, ctx, ws.retry if ws is not None else _DefaultRetry()

        try:
            report = await replay(
                DeadLetterStore(client[settings.state.database]), resolve, watcher, id
            )
        finally:
            await handlers.stop_all()
        for oid, error in report.failed:
            print(f"failed   {oid}: {error}")
        for oid, what in report.unresolved:
            print(f"skipped  {oid}: handler {what} is not in the config")
        print(
            f"replayed {len(report.replayed)}, failed {len(report.failed)}, "
            f"unresolved {len(report.unresolved)}"
        )
        if id is not None and not (report.replayed or report.failed or report.unresolved):
            print(
                f"error: no dead letter {id}" + (f" of {watcher}" if watcher else ""),
                file=sys.stderr,
            )
            return 1
        return 0 if not (report.failed or report.unresolved) else 1

    return await _run(settings, body)


def parse_reset_time(to: str, now: datetime | None = None) -> datetime | None:
    """``now`` → ``None`` (ask the cluster); an ISO-8601 time → that time in UTC.

    Raises:
        OpsError: not ``now`` and not an ISO time, or a time in the future.
    """
    if to == "now":
        return None
    try:
        when = datetime.fromisoformat(to)
    except ValueError:
        raise OpsError(f"--to: expected 'now' or an ISO-8601 time, got {to!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when > (now or datetime.now(UTC)):
        raise OpsError(f"--to: {to} is in the future")
    return when


async def confirm(question: str, assume_yes: bool) -> bool:
    """Ask on the terminal; ``--yes`` answers for the operator. No answer (EOF) means no."""
    if assume_yes:
        return True
    try:
        answer = await asyncio.to_thread(input, f"{question} [y/N] ")
    except EOFError:
        print(file=sys.stderr)
        return False
    return answer.strip().lower() in ("y", "yes")


async def checkpoint_reset(settings: Settings, watcher: str, to: str, assume_yes: bool) -> int:
    """Point a watcher's checkpoint at ``now`` or a past time, after a confirmation.

    The new checkpoint has no token, only ``cluster_time``; on its next start the watcher
    opens its stream with ``startAtOperationTime`` at that time. Snapshot progress is
    forgotten. Stop the watcher first: a running owner would overwrite the reset. Exit 1
    when the operator does not confirm (nothing is changed).
    """
    try:
        when = parse_reset_time(to)
        names = _select(settings, watcher)
    except OpsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    async def body(client: Client) -> int:
        if when is None:
            reply = await client.admin.command("ping")
            at = reply.get("operationTime")
            if not isinstance(at, Timestamp):
                raise OpsError("the server reports no operationTime: is it a replica set?")
        else:
            at = Timestamp(int(when.timestamp()), 0)
        state_db = client[settings.state.database]
        now = datetime.now(UTC)
        for name in names:
            if (instance := await looks_running(state_db, name, now)) is not None:
                print(
                    f"warning: {name} looks running (instance {instance}); "
                    "it will overwrite this reset unless stopped",
                    file=sys.stderr,
                )
        question = (
            f"Point the checkpoint of {', '.join(names)} at {iso(at)}? Events between the "
            "old checkpoint and that time are skipped or handled again."
        )
        if not await confirm(question, assume_yes):
            print("aborted: no checkpoint changed", file=sys.stderr)
            return 1
        store = MongoCheckpointStore(state_db)
        for name in names:
            await store.reset(name, Checkpoint(token=None, cluster_time=at, updated=now))
            print(f"checkpoint of {name} reset: next start at {iso(at)} (startAtOperationTime)")
        return 0

    return await _run(settings, body)
