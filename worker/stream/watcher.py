"""One change stream: open or resume → read → dispatch → checkpoint, with its fault policies."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from bson import Timestamp
from pymongo.errors import ConnectionFailure, OperationFailure

from changestream_worker.events import ChangeEvent
from changestream_worker.state.checkpoints import Checkpoint, CheckpointStore
from changestream_worker.stream.checkpointer import Checkpointer
from changestream_worker.stream.dispatch import Dispatcher
from changestream_worker.stream.snapshot import cluster_time_now, run_snapshot
from changestream_worker.stream.stops import WatcherStopped as WatcherStopped  # re-exported

if TYPE_CHECKING:
    from pymongo.asynchronous.change_stream import AsyncChangeStream
    from pymongo.asynchronous.database import AsyncDatabase

    from changestream_worker.config.models import Settings, WatcherSettings
    from changestream_worker.metrics import Metrics

HISTORY_LOST = 286
INVALID_RESUME_TOKEN = 260
log = structlog.get_logger("changestream_worker.stream.watcher")


class _Idle:
    """An empty batch: the stream has caught up; ``token`` is its post-batch resume token."""

    __slots__ = ("token",)

    def __init__(self, token: Mapping[str, Any] | None) -> None:
        self.token = token


_END = object()  # the stream closed (after an invalidate)


def build_pipeline(
    ws: WatcherSettings, extra: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The server-side filter: operations and the user's match, as one ``$match`` stage."""
    clauses: list[dict[str, Any]] = []
    if ws.operations:
        ops = list(ws.operations)
        if "invalidate" not in ops:
            ops.append("invalidate")  # the watcher must see invalidates to apply its policy
        clauses.append({"operationType": {"$in": ops}})
    if ws.match:
        clauses.append(dict(ws.match))
    stages: list[dict[str, Any]] = []
    if clauses:
        stages.append({"$match": clauses[0] if len(clauses) == 1 else {"$and": clauses}})
    return stages + list(extra or [])


def timestamp_of(when: datetime) -> Timestamp:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Timestamp(int(when.timestamp()), 0)


class Watcher:
    """Runs one configured watcher until stopped; the supervisor restarts it if it crashes.

    Args:
        settings: the whole config (checkpoint cadence, state database, shutdown timeout).
        ws: this watcher's settings.
        database: the watched database.
        dispatcher: routes events to handlers.
        store: where checkpoints live.
        metrics: collectors, or ``None``.
        partition: ``(index, count)`` when the watcher is split into partitions.
    """

    def __init__(
        self,
        settings: Settings,
        ws: WatcherSettings,
        database: AsyncDatabase[Any],
        dispatcher: Dispatcher,
        store: CheckpointStore,
        metrics: Metrics | None,
        name: str | None = None,
        extra_stages: list[dict[str, Any]] | None = None,
        fence: Any = None,
    ) -> None:
        self.settings, self.ws, self.db = settings, ws, database
        self.name = name or ws.name
        self.dispatcher, self.store, self.metrics = dispatcher, store, metrics
        self.pipeline = build_pipeline(ws, extra_stages)
        self.fence = fence  # a callable returning the lease epoch, or None without leases
        self.stopping = asyncio.Event()
        self.last_token: Mapping[str, Any] | None = None
        self.last_event_wall: float | None = None
        self.state = "starting"
        self._unsampled = 0  # events read since the lag gauge was last set
        self.reason = ""
        self.log = log.bind(watcher=self.name)
        self.checkpointer = Checkpointer(
            store,
            self.name,
            dispatcher,
            settings.checkpoint.interval,
            settings.checkpoint.max_events,
            metrics=metrics,
            epoch=self._epoch,
            on_fenced=self.stopping.set,
        )

    def _epoch(self) -> int | None:
        return None if self.fence is None else self.fence()

    @property
    def target(self) -> Any:
        return self.db if self.ws.collection is None else self.db[self.ws.collection]

    def _open_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "full_document": None if self.ws.full_document == "default" else self.ws.full_document,
            "full_document_before_change": None
            if self.ws.full_document_before_change == "off"
            else self.ws.full_document_before_change,
            "batch_size": self.ws.batch_size,
            "max_await_time_ms": int(self.ws.max_await_time * 1000),
        }
        return kw

    async def _open(
        self, resume: Mapping[str, Any] | None, at: Timestamp | None, start_after: bool = False
    ) -> AsyncChangeStream[Any]:
        kw = self._open_kwargs()
        if resume is not None:
            kw["start_after" if start_after else "resume_after"] = resume
        elif at is not None:
            kw["start_at_operation_time"] = at
        try:
            stream: AsyncChangeStream[Any] = await self.target.watch(self.pipeline, **kw)
            return stream
        except OperationFailure as exc:
            if exc.code == INVALID_RESUME_TOKEN and resume is not None and not start_after:
                # the stored token is an invalidate: only startAfter may begin after it
                return await self._open(resume, None, start_after=True)
            raise

    async def _starting_point(self) -> tuple[Mapping[str, Any] | None, Timestamp | None]:
        cp = await self.store.load(self.name)
        snap = getattr(cp, "snapshot", None) if cp is not None else None
        if snap and not snap.get("done"):
            return await self._snapshot(snap)
        if cp is not None and (cp.token or cp.cluster_time):
            self.log.info("watcher_resumed", token_age_s=_age(cp.cluster_time))
            return cp.token, None if cp.token else cp.cluster_time
        start = self.ws.start_at
        if start == "snapshot":
            return await self._snapshot(None)
        at = timestamp_of(start) if isinstance(start, datetime) else await cluster_time_now(self)
        # the first owner's starting point is stored before anything else, so that whoever
        # runs this watcher next (a restart, a standby, a rebalance) starts from it too
        if not await self.store.save(
            self.name, Checkpoint(token=None, cluster_time=at), self._epoch()
        ):
            raise WatcherStopped("checkpoint holds a newer lease epoch", True, fenced=True)
        return None, at

    async def _snapshot(self, progress: Mapping[str, Any] | None) -> tuple[None, Timestamp]:
        self.state = "snapshot"
        at = await run_snapshot(self, progress)
        return None, at

    def _check_dispatcher(self) -> None:
        self.dispatcher.check()

    async def run(self) -> None:
        """Read, dispatch and checkpoint until asked to stop or a policy stops the watcher."""
        epoch = self._epoch()
        if epoch is not None and not await self.store.claim(self.name, epoch):
            raise WatcherStopped("checkpoint holds a newer lease epoch", True, fenced=True)
        resume, at = await self._starting_point()
        self.checkpointer.start()
        backoff = 0.2
        try:
            while not self.stopping.is_set():
                try:
                    stream = await self._open(resume, at)
                    async with stream:
                        fresh = stream.resume_token
                        if resume is None and at is None and fresh is not None:
                            # a fresh start: remember where "now" was, so a crash before the
                            # first event cannot skip what happens in between
                            self.dispatcher.mark_idle(fresh)
                            await self.checkpointer.flush()
                        self.state, self.reason = "running", ""
                        self._set_up(True)
                        await self._read(stream)
                        backoff = 0.2
                        if stream.alive or self.stopping.is_set():
                            break
                        resume, at = await self._after_invalidate()
                except OperationFailure as exc:
                    if exc.code != HISTORY_LOST:
                        if not exc.has_error_label("ResumableChangeStreamError"):
                            raise
                        resume, at = await self._reopen("server_error", exc, backoff)
                    else:
                        resume, at = await self._history_lost(exc)
                    backoff = min(backoff * 2, 30.0)
                except ConnectionFailure as exc:
                    resume, at = await self._reopen("network_error", exc, backoff)
                    backoff = min(backoff * 2, 30.0)
                self._check_dispatcher()
        finally:
            self._set_up(False)
            await self._finish()
        self._check_dispatcher()
        if self.checkpointer.fenced:
            raise WatcherStopped(
                "checkpoint write fenced off by a newer lease epoch", True, fenced=True
            )

    async def _pump(self, stream: AsyncChangeStream[Any], queue: asyncio.Queue[Any]) -> None:
        """Fetch ahead of the dispatcher (at most one batch), so that the server's next
        batch is on its way while this one is handled."""
        try:
            while stream.alive and not self.stopping.is_set():
                change = await stream.try_next()
                await queue.put(change if change is not None else _Idle(stream.resume_token))
            await queue.put(_END)
        except Exception as exc:  # handed to the reading loop, which owns the policies
            await queue.put(exc)

    async def _read(self, stream: AsyncChangeStream[Any]) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(1, self.ws.batch_size))
        pump = asyncio.create_task(self._pump(stream, queue), name=f"pump:{self.name}")
        try:
            while not self.stopping.is_set():
                item = await queue.get()
                self._check_dispatcher()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, _Idle):
                    if item.token is not None:
                        self.dispatcher.mark_idle(item.token)
                    self._observe_idle()
                    continue
                if item.get("operationType") == "invalidate":
                    self.last_token = item["_id"]
                    self.log.warning("watcher_invalidated", policy=self.ws.on_invalidate)
                    if self.metrics is not None:
                        self.metrics.resumes_total.labels(self.name, "invalidate").inc()
                    continue
                event = ChangeEvent(item)
                self.last_token = event.token
                self._observe(event, queue.empty())
                await self.dispatcher.submit(event)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _after_invalidate(self) -> tuple[Mapping[str, Any] | None, None]:
        if self.ws.on_invalidate == "stop":
            raise WatcherStopped(
                "stream invalidated (drop, rename or dropDatabase); on_invalidate=stop", True
            )
        token = self.last_token
        if token is not None:
            self.dispatcher.mark_idle(token)  # the new stream begins after the invalidate
        return token, None

    async def _reopen(
        self, reason: str, exc: Exception, backoff: float
    ) -> tuple[Mapping[str, Any] | None, Timestamp | None]:
        self.state, self.reason = "resuming", f"{reason}: {exc}"
        self.log.warning("watcher_resuming", reason=reason, error=str(exc)[:300])
        if self.metrics is not None:
            self.metrics.resumes_total.labels(self.name, reason).inc()
        await self._sleep(backoff * (0.5 + random.random()))
        if self.last_token is not None:
            return self.last_token, None
        cp = await self.store.load(self.name)
        if cp is None:
            return None, None
        return cp.token, None if cp.token else cp.cluster_time

    async def _history_lost(self, exc: OperationFailure) -> tuple[None, Timestamp | None]:
        cp = await self.store.load(self.name)
        since = cp.cluster_time if cp is not None else None
        policy = self.ws.on_history_lost
        if self.metrics is not None:
            self.metrics.resumes_total.labels(self.name, "history_lost").inc()
        if policy == "fail":
            self.log.error(
                "watcher_history_lost", policy=policy, lost_since=_iso(since), error=str(exc)[:300]
            )
            raise WatcherStopped("change stream history lost (286); on_history_lost=fail", False)
        now = datetime.now(UTC)
        self.log.error(
            "data_gap",
            watcher=self.name,
            policy=policy,
            lost_from=_iso(since),
            lost_until=now.isoformat(),
        )
        self.last_token = None
        if policy == "snapshot":
            return await self._snapshot(None)
        return None, None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def _set_up(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.watcher_up.labels(self.name).set(1 if up else 0)

    def _observe(self, event: ChangeEvent, settled: bool) -> None:
        m = self.metrics
        if m is None:
            return
        m.child(m.events_received_total, self.name, event.operation_type).value += 1
        # the gauges describe the newest event read: set them once per burst (when the
        # read-ahead queue runs dry) or every 100 events, not for each event
        self._unsampled += 1
        if not settled and self._unsampled < 100:
            return
        self._unsampled = 0
        wall = event.wall_time
        ts = wall.timestamp() if wall else (event.cluster_time.time if event.cluster_time else None)
        now = time.time()
        if ts is not None:
            m.child(m.lag_seconds, self.name).set(max(0.0, now - ts))
        m.child(m.last_batch_timestamp_seconds, self.name).set(now)

    def _observe_idle(self) -> None:
        if self.metrics is None:
            return
        # an empty batch means the stream has caught up: lag is zero, the heartbeat moves
        self.metrics.lag_seconds.labels(self.name).set(0.0)
        self.metrics.last_batch_timestamp_seconds.labels(self.name).set(time.time())

    async def _finish(self) -> None:
        drained = await self.dispatcher.drain(self.settings.shutdown_timeout)
        if not drained:
            self.log.warning("watcher_drain_timeout", in_flight=self.dispatcher.in_flight)
        await self.dispatcher.aclose()  # the lane workers end here, drained or not
        await asyncio.shield(self.checkpointer.stop())


def _age(ts: Timestamp | None) -> float | None:
    return None if ts is None else round(time.time() - ts.time, 3)


def _iso(ts: Timestamp | None) -> str | None:
    return None if ts is None else ts.as_datetime().isoformat()
