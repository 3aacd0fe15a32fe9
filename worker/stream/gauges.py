"""What one watcher reports about its stream: events read, lag, heartbeat, up, resumes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from changestream_worker.events import ChangeEvent
    from changestream_worker.metrics import Metrics


class StreamGauges:
    """The stream-side metrics of one watcher (a no-op without a metrics container).

    Args:
        metrics: the collectors, or ``None`` (tests, tools).
        watcher: the watcher's instance name (the ``watcher`` label).
    """

    def __init__(self, metrics: Metrics | None, watcher: str) -> None:
        self.metrics, self.watcher = metrics, watcher
        self._received: dict[str, Any] = {}  # operation -> counter child
        if metrics is not None:
            self._lag = metrics.lag_seconds.labels(watcher)
            self._beat = metrics.last_batch_timestamp_seconds.labels(watcher)
            self._up = metrics.watcher_up.labels(watcher)

    def up(self, flag: bool) -> None:
        if self.metrics is not None:
            self._up.set(1 if flag else 0)

    def received(self, event: ChangeEvent) -> None:
        """One event read: count it, and the lag is its age."""
        if self.metrics is None:
            return
        op = event.operation_type
        counter = self._received.get(op)
        if counter is None:
            counter = self._received[op] = self.metrics.events_received_total.labels(
                self.watcher, op
            )
        counter.inc()
        wall = event.wall_time
        ts = wall.timestamp() if wall else (event.cluster_time.time if event.cluster_time else None)
        now = time.time()
        if ts is not None:
            self._lag.set(max(0.0, now - ts))
        self._beat.set(now)

    def idle(self) -> None:
        """An empty batch: the stream has caught up, so lag is zero and the heartbeat moves."""
        if self.metrics is not None:
            self._lag.set(0.0)
            self._beat.set(time.time())

    def resumed(self, reason: str) -> None:
        """The stream was reopened (``network_error``, ``server_error``, ``history_lost``,
        ``invalidate``)."""
        if self.metrics is not None:
            self.metrics.resumes_total.labels(self.watcher, reason).inc()
