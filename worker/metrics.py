"""Prometheus collectors of the worker, registered on an injected registry (nothing global)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "changestream_worker_"
# handler latencies from a cache DEL (~1 ms) to an SMTP relay or a slow transaction (~1 min)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every collector the worker exports; tests give each instance a fresh registry.

    Args:
        registry: where to register; a new private registry when ``None``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r, p = self.registry, PREFIX
        w = ["watcher"]
        self.events_received_total = Counter(
            p + "events_received_total",
            "Change events read from the stream.",
            ["watcher", "operation"],
            registry=r,
        )
        self.events_handled_total = Counter(
            p + "events_handled_total",
            "Events finished by a handler, by outcome (success, retried, skipped, dead_letter, "
            "stopped).",
            ["watcher", "handler", "outcome"],
            registry=r,
        )
        self.handler_duration_seconds = Histogram(
            p + "handler_duration_seconds",
            "Time a handler took per event, retries included.",
            ["watcher", "handler"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.events_in_flight = Gauge(
            p + "events_in_flight", "Events submitted and not yet finished.", w, registry=r
        )
        self.lag_seconds = Gauge(
            p + "lag_seconds",
            "Age of the last event read; 0 once an empty batch shows the stream has caught up.",
            w,
            registry=r,
        )
        self.last_batch_timestamp_seconds = Gauge(
            p + "last_batch_timestamp_seconds",
            "Unix time of the last batch (empty or not) read: the stream's heartbeat.",
            w,
            registry=r,
        )
        self.checkpoint_age_seconds = Gauge(
            p + "checkpoint_age_seconds",
            "Age of the cluster time of the stored checkpoint.",
            w,
            registry=r,
        )
        self.checkpoint_writes_total = Counter(
            p + "checkpoint_writes_total", "Checkpoint documents written.", w, registry=r
        )
        self.resumes_total = Counter(
            p + "resumes_total",
            "Stream reopenings, by reason (network_error, server_error, history_lost, invalidate).",
            ["watcher", "reason"],
            registry=r,
        )
        self.watcher_restarts_total = Counter(
            p + "watcher_restarts_total",
            "Crashed watchers restarted by the supervisor.",
            w,
            registry=r,
        )
        self.watcher_up = Gauge(
            p + "watcher_up", "1 while the watcher reads its stream.", w, registry=r
        )
        self.dead_letters_total = Counter(
            p + "dead_letters_total",
            "Events parked in dead letters.",
            ["watcher", "handler"],
            registry=r,
        )
        self.oplog_headroom_seconds = Gauge(
            p + "oplog_headroom_seconds",
            "Seconds until the checkpoint's cluster time falls off the oplog (negative: lost).",
            w,
            registry=r,
        )
        self.lease_held = Gauge(
            p + "lease_held", "1 while this process owns the watcher's lease.", w, registry=r
        )
        # backlog and takeovers (service/observer.py)
        self.backlog_events = Gauge(
            p + "backlog_events",
            "Changes of the watched namespace after the watcher's position, capped (estimate).",
            w,
            registry=r,
        )
        self.backlog_seconds = Gauge(
            p + "backlog_seconds",
            "Server's newest cluster time minus the watcher's position; 0 when nothing waits.",
            w,
            registry=r,
        )
        self.lease_wait_seconds = Gauge(
            p + "lease_wait_seconds",
            "Seconds until this standby may take over a lease its owner stopped renewing.",
            w,
            registry=r,
        )

    def child(self, collector: Any, *labels: str) -> Any:
        """``collector.labels(*labels)``, memoised: the hot path pays one dict lookup."""
        key = (id(collector), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = collector.labels(*labels)
        return found
