"""Operator commands: ``status``, ``dlq list|replay|purge`` and ``checkpoint reset`` back-ends."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from changestream_worker.handler import HandlerContext
from changestream_worker.state import names as state_names
from changestream_worker.state.checkpoints import Checkpoint, MongoCheckpointStore
from changestream_worker.state.deadletters import DeadLetterStore, Resolved, replay

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

    from changestream_worker.config.models import Settings, WatcherSettings
    from changestream_worker.handler import Handler

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
    client: Client = AsyncMongoClient(
        settings.mongodb.uri,
        appname=settings.mongodb.app_name,
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
    )
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
    except PyMongoError as exc:
        from changestream_worker.logs import mask_uri

        print(f"error: MongoDB at {mask_uri(settings.mongodb.uri)}: {exc}"[:600], file=sys.stderr)
        return 1


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _when(value: Any) -> datetime | None:
    if isinstance(value, Timestamp):
        return value.as_datetime()
    return _aware(value) if isinstance(value, datetime) else None


def _iso(value: Any) -> str | None:
    when = _when(value)
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(value: Any, now: datetime) -> float | None:
    when = _when(value)
    return None if when is None else round(max(0.0, (now - when).total_seconds()), 3)


async def collect_status(
    state_db: AsyncDatabase[dict[str, Any]], names: list[str], now: datetime | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready row per watcher: state, checkpoint, lag, dead letters, lease.

    Watchers that are no longer configured but still have dead letters get a row too.
    """
    now = now or datetime.now(UTC)
    dlq = await DeadLetterStore(state_db).counts()
    configured = set(names)
    rows = []
    for name in names + sorted(n for n in dlq if n not in configured):
        cp = await state_db[state_names.CHECKPOINTS].find_one({"_id": name})
        lease = await state_db[state_names.LEASES].find_one({"_id": name})
        st = await state_db[state_names.WATCHER_STATUS].find_one({"_id": name}) or {}
        row: dict[str, Any] = {
            "watcher": name,
            "configured": name in configured,
            "state": st.get("state", "unknown"),
            "reason": st.get("reason") or "",
            "instance": st.get("instance"),
            "state_updated": _iso(st.get("updated")),
            "checkpoint": None,
            "lag_seconds": None,
            "dead_letters": dlq.get(name, 0),
            "lease": None,
            # hook (reliability): written by service/observer.py, see its Backlog.detail()
            "backlog": st.get("backlog"),
            "takeover": st.get("takeover"),
        }
        if cp is not None:
            at = cp.get("wall_time") or cp.get("cluster_time")
            row["checkpoint"] = {
                "cluster_time": _iso(cp.get("cluster_time")),
                "wall_time": _iso(cp.get("wall_time")),
                "updated": _iso(cp.get("updated")),
                "has_token": cp.get("token") is not None,
                "events_handled": int(cp.get("events_handled") or 0),
                "epoch": cp.get("epoch"),
                "snapshot": _snapshot(cp.get("snapshot")),
            }
            row["lag_seconds"] = _age(at, now)
        if lease is not None:
            expires = lease.get("expires_at")
            expired = not isinstance(expires, datetime) or _aware(expires) <= now
            row["lease"] = {
                "owner": lease.get("owner"),
                "epoch": lease.get("epoch"),
                "expires_at": _iso(expires),
                "expired": expired,
            }
            if row["state"] == "running" and (expired or lease.get("owner") is None):
                # the last owner died without saying so (SIGKILL, lost node)
                row["state"], row["reason"] = "unknown", "lease expired: owner gone?"
        rows.append(row)
    return rows


def _snapshot(snap: Any) -> dict[str, Any] | None:
    if not isinstance(snap, dict):
        return None
    return {
        "done": bool(snap.get("done")),
        "last_id": None if snap.get("last_id") is None else str(snap.get("last_id")),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def render_status(rows: list[dict[str, Any]]) -> str:
    """The status rows as a table for a terminal."""
    out = []
    for r in rows:
        cp, lease = r["checkpoint"] or {}, r["lease"]
        held = "-"
        if lease is not None:
            held = (
                "released"
                if lease["owner"] is None
                else (
                    f"{lease['owner']} (expired)"
                    if lease["expired"]
                    else f"{lease['owner']} until {lease['expires_at']}"
                )
            )
        out.append(
            [
                r["watcher"],
                r["state"],
                cp.get("cluster_time") or cp.get("wall_time") or "-",
                _duration(r["lag_seconds"]),
                str(cp.get("events_handled", "-")),
                str(r["dead_letters"]),
                held,
                r["reason"][:80],
            ]
        )
    header = ["WATCHER", "STATE", "CHECKPOINT", "LAG", "HANDLED", "DLQ", "LEASE", "REASON"]
    return table(header, out)


async def status(settings: Settings, as_json: bool) -> int:
    """Print each watcher's state, checkpoint time, lag, dead letters and lease."""

    async def body(client: Client) -> int:
        rows = await collect_status(client[settings.state.database], watcher_names(settings))
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
        rows = [
            [
                str(dl.id),
                dl.watcher,
                dl.handler,
                dl.operation,
                json.dumps(dl.document_key, default=str)[:40],
                dl.error_type,
                dl.error_message.replace("\n", " ")[:60],
                str(dl.attempts),
                _iso(dl.last_failure) or "-",
            ]
            for dl in letters
        ]
        header = [
            "ID",
            "WATCHER",
            "HANDLER",
            "OP",
            "KEY",
            "ERROR",
            "MESSAGE",
            "ATTEMPTS",
            "LAST FAILURE",
        ]
        if rows:
            print(table(header, rows))
        print(f"{len(rows)} dead letter(s)")
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
        handlers = build_handlers(settings)
        started: dict[str, Handler] = {}
        by_name = {ws.name: ws for ws in settings.watchers}

        async def resolve(watcher_name: str, handler_name: str) -> Resolved | None:
            handler = handlers.get(handler_name)
            if handler is None:
                return None
            ws: WatcherSettings | None = by_name.get(watcher_name.split("#")[0])
            db = (ws.database if ws is not None else None) or settings.mongodb.database
            ctx = HandlerContext(
                client=client,
                database=client[db],
                state_database=client[settings.state.database],
                log=structlog.get_logger("handler").bind(
                    watcher=watcher_name, handler=handler_name, replay=True
                ),
                watcher=watcher_name,
                handler=handler_name,
            )
            if handler_name not in started:
                await handler.start(ctx)
                started[handler_name] = handler
            return handler, ctx, ws.retry if ws is not None else _DefaultRetry()

        try:
            report = await replay(
                DeadLetterStore(client[settings.state.database]), resolve, watcher, id
            )
        finally:
            for handler in started.values():
                with contextlib.suppress(Exception):
                    await handler.stop()
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


async def checkpoint_reset(settings: Settings, watcher: str, to: str) -> int:
    """Point a watcher's checkpoint at ``now`` or a past time.

    The new checkpoint has no token, only ``cluster_time``; on its next start the watcher
    opens its stream with ``startAtOperationTime`` at that time. Snapshot progress is
    forgotten. Stop the watcher first: a running owner would overwrite the reset.
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
        store = MongoCheckpointStore(state_db)
        now = datetime.now(UTC)
        for name in names:
            st = await state_db[state_names.WATCHER_STATUS].find_one({"_id": name}) or {}
            lease = await state_db[state_names.LEASES].find_one({"_id": name}) or {}
            expires = lease.get("expires_at")
            held = isinstance(expires, datetime) and _aware(expires) > now and lease.get("owner")
            if st.get("state") == "running" or held:
                print(
                    f"warning: {name} looks running (instance {st.get('instance') or '?'}); "
                    "it will overwrite this reset unless stopped",
                    file=sys.stderr,
                )
            await store.reset(name, Checkpoint(token=None, cluster_time=at, updated=now))
            print(f"checkpoint of {name} reset: next start at {_iso(at)} (startAtOperationTime)")
        return 0

    return await _run(settings, body)
