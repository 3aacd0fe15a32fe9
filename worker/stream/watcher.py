"""One change stream: open or resume → read → dispatch → checkpoint, with its fault policies."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from bson import Timestamp
from pymongo.errors import ConnectionFailure, OperationFailure

from changestream_worker.events import ChangeEvent
from changestream_worker.state.checkpoints import Checkpoint, CheckpointStore
from changestream_worker.stream.checkpointer import Checkpointer
from changestream_worker.stream.dispatch import Dispatcher
from changestream_worker.stream.gauges import StreamGauges
from changestream_worker.stream.retry import backoff
from changestream_worker.stream.snapshot import Snapshot
from changestream_worker.stream.source import (
    END,
    ChangeSource,
    Idle,
    build_pipeline,
    cluster_time_now,
    timestamp_of,
)
from changestream_worker.stream.stops import WatcherStopped as WatcherStopped  # re-exported

if TYPE_CHECKING:
    from pymongo.asynchronous.change_stream import AsyncChangeStream
    from pymongo.asynchronous.database import AsyncDatabase

    from changestream_worker.config.models import CheckpointSettings, WatcherSettings
    from changestream_worker.metrics import Metrics

HISTORY_LOST = 286
log = structlog.get_logger("changestream_worker.stream.watcher")


@dataclass(frozen=True, slots=True)
class WatcherSpec:
    """What one watcher instance runs: its settings and the few the process decides.

    Args:
        ws: the watcher's settings.
        name: the instance name (``name`` or ``name#i`` for a partition).
        checkpoint: the checkpoint cadence.
        shutdown_timeout: seconds to wait for in-flight handlers when stopping.
        extra_stages: stages after the watcher's own filter (a partition's ``$match``).
        epoch: the lease epoch, fixed for one acquisition (``None`` without leases).
    """

    ws: WatcherSettings
    name: str
    checkpoint: CheckpointSettings
    shutdown_timeout: float
    extra_stages: tuple[Mapping[str, Any], ...] = ()
    epoch: int | None = None


class Watcher:
    """Runs one configured watcher until stopped; the supervisor restarts it if it crashes.

    Args:
        spec: the watcher's settings, name, extra stages and lease epoch.
        database: the watched database.
        dispatcher: routes events to handlers.
        store: where checkpoints live.
        metrics: collectors, or ``None``.
    """

    def __init__(
        self,
        spec: WatcherSpec,
        database: AsyncDatabase[Any],
        dispatcher: Dispatcher,
        store: CheckpointStore,
        metrics: Metrics | None,
    ) -> None:
        self.spec, self.ws, self.db, self.name = spec, spec.ws, database, spec.name
        self.epoch = spec.epoch
        self.dispatcher, self.store, self.metrics = dispatcher, store, metrics
        self.gauges = StreamGauges(metrics, self.name)
        target = self.db if self.ws.collection is None else self.db[self.ws.collection]
        self.source = ChangeSource(target, self.ws, build_pipeline(self.ws, spec.extra_stages))
        self.stopping = asyncio.Event()
        self.last_token: Mapping[str, Any] | None = None
        self.state = "starting"
        self.reason = ""
        self.log = log.bind(watcher=self.name)
        self.reopen_delay = backoff(0.2, 30.0)
        self.checkpointer = Checkpointer(
            store,
            self.name,
            dispatcher,
            spec.checkpoint.interval,
            spec.checkpoint.max_events,
            metrics=metrics,
            epoch=self.epoch,
            on_fenced=self.stopping.set,
        )

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
        if isinstance(start, datetime):
            at = timestamp_of(start)
        else:
            at = await cluster_time_now(self.db.client)
        # the first owner's starting point is stored before anything else, so that whoever
        # runs this watcher next (a restart, a standby, a rebalance) starts from it too
        if not await self.store.save(
            self.name, Checkpoint(token=None, cluster_time=at), self.epoch
        ):
            raise WatcherStopped("checkpoint holds a newer lease epoch", True, fenced=True)
        return None, at

    async def _snapshot(self, progress: Mapping[str, Any] | None) -> tuple[None, Timestamp]:
        if self.ws.collection is None:
            raise ValueError(f"watcher {self.name!r}: start_at: snapshot needs a collection")
        self.state = "snapshot"
        snapshot = Snapshot(
            self.db[self.ws.collection], self.name, self.store, self.epoch, self.log
        )
        at = await snapshot.run(self.dispatcher, progress, self.stopping)
        return None, at

    def _check_dispatcher(self) -> None:
        self.dispatcher.check()

    async def run(self) -> None:
        """Read, dispatch and checkpoint until asked to stop or a policy stops the watcher."""
        epoch = self.epoch
        if epoch is not None and not await self.store.claim(self.name, epoch):
            raise WatcherStopped("checkpoint holds a newer lease epoch", True, fenced=True)
        resume, at = await self._starting_point()
        self.checkpointer.start()
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    stream = await self.source.open(resume, at)
                    async with stream:
                        fresh = stream.resume_token
                        if resume is None and at is None and fresh is not None:
                            # a fresh start: remember where "now" was, so a crash before the
                            # first event cannot skip what happens in between
                            self.dispatcher.mark_idle(fresh)
                            await self.checkpointer.flush()
                        self.state, self.reason = "running", ""
                        self.gauges.up(True)
                        await self._read(stream)
                        failures = 0
                        if stream.alive or self.stopping.is_set():
                            break
                        resume, at = await self._after_invalidate()
                except OperationFailure as exc:
                    if exc.code != HISTORY_LOST:
                        if not exc.has_error_label("ResumableChangeStreamError"):
                            raise
                        failures += 1
                        resume, at = await self._reopen("server_error", exc, failures)
                    else:
                        resume, at = await self._history_lost(exc)
                except ConnectionFailure as exc:
                    failures += 1
                    resume, at = await self._reopen("network_error", exc, failures)
                self._check_dispatcher()
        finally:
            self.gauges.up(False)
            await self._finish()
        self._check_dispatcher()
        if self.checkpointer.fenced:
            raise WatcherStopped(
                "checkpoint write fenced off by a newer lease epoch", True, fenced=True
            )

    async def _read(self, stream: AsyncChangeStream[Any]) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(1, self.ws.batch_size))
        pump = asyncio.create_task(
            ChangeSource.pump(stream, queue, self.stopping), name=f"pump:{self.name}"
        )
        try:
            while not self.stopping.is_set():
                item = await queue.get()
                self._check_dispatcher()
                if item is END:
                    return
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Idle):
                    if item.token is not None:
                        self.dispatcher.mark_idle(item.token)
                    self.gauges.idle()
                    continue
                if item.get("operationType") == "invalidate":
                    self.last_token = item["_id"]
                    self.log.warning("watcher_invalidated", policy=self.ws.on_invalidate)
                    self.gauges.resumed("invalidate")
                    continue
                event = ChangeEvent(item)
                self.last_token = event.token
                self.gauges.received(event)
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
        self, reason: str, exc: Exception, failures: int
    ) -> tuple[Mapping[str, Any] | None, Timestamp | None]:
        self.state, self.reason = "resuming", f"{reason}: {exc}"
        self.log.warning("watcher_resuming", reason=reason, error=str(exc)[:300])
        self.gauges.resumed(reason)
        await self._sleep(self.reopen_delay(failures))
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
        self.gauges.resumed("history_lost")
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

    async def _finish(self) -> None:
        drained = await self.dispatcher.drain(self.spec.shutdown_timeout)
        if not drained:
            self.log.warning("watcher_drain_timeout", in_flight=self.dispatcher.in_flight)
        await self.dispatcher.aclose()  # the lane workers end here, drained or not
        await asyncio.shield(self.checkpointer.stop())


def _age(ts: Timestamp | None) -> float | None:
    return None if ts is None else round(time.time() - ts.time, 3)


def _iso(ts: Timestamp | None) -> str | None:
    return None if ts is None else ts.as_datetime().isoformat()
