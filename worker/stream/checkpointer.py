"""The periodic checkpointer: writes a watcher's low watermark every interval or every N
completions, fenced by the lease epoch, and once more at stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import structlog

from changestream_worker.state.checkpoints import Checkpoint, CheckpointStore

if TYPE_CHECKING:
    from changestream_worker.metrics import Metrics
    from changestream_worker.stream.position import Position

log = structlog.get_logger("changestream_worker.stream.checkpointer")


class WatermarkSource(Protocol):
    """What the checkpointer reads from the dispatcher."""

    @property
    def watermark(self) -> Position | None: ...
    @property
    def completed_count(self) -> int: ...
    def add_listener(self, listener: Callable[[int], None]) -> None: ...


class Checkpointer:
    """Writes a watcher's low watermark every ``interval`` seconds or every ``max_events``
    completions, whichever comes first, and once more at ``stop``.

    A write is skipped when the watermark has not moved. When a write is fenced off
    (another process holds a newer lease epoch) ``fenced`` is set and ``on_fenced`` called;
    the checkpointer writes nothing further.

    Args:
        store: where checkpoints go.
        watcher: the watcher's name (the checkpoint's ``_id``).
        source: the dispatcher (``watermark``, ``completed_count``, ``add_listener``).
        interval: seconds between writes at most.
        max_events: completions that trigger a write before the interval is up.
        metrics: collectors, or ``None``.
        epoch: the lease epoch this watcher runs under, or ``None`` without leases.
        on_fenced: called once when a write is fenced off.
    """

    def __init__(
        self,
        store: CheckpointStore,
        watcher: str,
        source: WatermarkSource,
        interval: float,
        max_events: int,
        *,
        metrics: Metrics | None = None,
        epoch: int | None = None,
        on_fenced: Callable[[], None] | None = None,
    ) -> None:
        self.store, self.watcher, self.source = store, watcher, source
        self.interval, self.max_events = max(0.001, interval), max(1, max_events)
        self.metrics, self.epoch, self.on_fenced = metrics, epoch, on_fenced
        self.fenced = False
        self.writes = 0
        self.last_written: Position | None = None
        self._counted = 0  # completed_count at the last write
        self._base: int | None = None  # events_handled stored before this run
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        source.add_listener(self._on_complete)

    def _on_complete(self, count: int) -> None:
        if count - self._counted >= self.max_events:
            self._wake.set()

    def start(self) -> None:
        """Start the periodic flush loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name=f"checkpointer:{self.watcher}")

    async def _loop(self) -> None:
        while not self.fenced:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next tick retries; the watermark is not lost
                log.warning(
                    "checkpoint_write_failed",
                    watcher=self.watcher,
                    error_type=type(exc).__name__,
                    error=str(exc)[:300],
                )

    async def flush(self) -> bool:
        """Write the watermark now if it moved, shielded from cancellation.

        Returns:
            ``False`` when fenced off, else ``True`` (written or nothing to write).
        """
        return await asyncio.shield(self._flush())

    async def _flush(self) -> bool:
        async with self._lock:
            if self.fenced:
                return False
            pos = self.source.watermark
            if (
                pos is None
                or pos == self.last_written
                or (pos.token is None and pos.cluster_time is None)
            ):
                return True
            if self._base is None:
                previous = await self.store.load(self.watcher)
                self._base = previous.events_handled if previous is not None else 0
            count = self.source.completed_count
            checkpoint = Checkpoint(
                token=pos.token,
                cluster_time=pos.cluster_time,
                wall_time=pos.wall_time,
                updated=datetime.now(UTC),
                events_handled=self._base + count,
            )
            epoch = self.epoch
            if not await self.store.save(self.watcher, checkpoint, epoch):
                self._fenced(epoch)
                return False
            self.last_written, self._counted = pos, count
            self.writes += 1
            self._observe(pos)
            return True

    def _fenced(self, epoch: int | None) -> None:
        self.fenced = True
        log.error("checkpoint_fenced", watcher=self.watcher, epoch=epoch)
        if self.on_fenced is not None:
            self.on_fenced()

    def _observe(self, pos: Position) -> None:
        if self.metrics is None:
            return
        self.metrics.checkpoint_writes_total.labels(watcher=self.watcher).inc()
        when = (
            pos.wall_time.timestamp()
            if pos.wall_time is not None
            else (pos.cluster_time.time if pos.cluster_time is not None else None)
        )
        if when is not None:
            self.metrics.checkpoint_age_seconds.labels(watcher=self.watcher).set(
                max(0.0, time.time() - when)
            )

    async def stop(self) -> None:
        """Stop the loop and write the final watermark (shielded)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
