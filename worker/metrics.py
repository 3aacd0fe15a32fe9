"""Prometheus collectors of the worker, registered on an injected registry (nothing global)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

PREFIX = "changestream_worker_"
# handler latencies from a cache DEL (~1 ms) to an SMTP relay or a slow transaction (~1 min)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# events per handle_batch call, up to batch.max_events' limit
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


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
        # per-event collectors are plain counts read at scrape time (see Tally)
        self.events_received_total = LazyCounter(
            p + "events_received_total",
            "Change events read from the stream.",
            ["watcher", "operation"],
            registry=r,
        )
        self.events_handled_total = LazyCounter(
            p + "events_handled_total",
            "Events finished by a handler, by outcome (success, retried, skipped, dead_letter, "
            "stopped).",
            ["watcher", "handler", "outcome"],
            registry=r,
        )
        self.handler_duration_seconds = LazyHistogram(
            p + "handler_duration_seconds",
            "Time a handler call took (one event, or one batch), retries included.",
            ["watcher", "handler"],
            DURATION_BUCKETS,
            registry=r,
        )
        self.batch_size = LazyHistogram(
            p + "batch_size",
            "Events per handle_batch call.",
            ["watcher", "handler"],
            BATCH_BUCKETS,
            registry=r,
        )
        self.events_in_flight = Gauge(
            p + "events_in_flight", "Events submitted and not yet finished.", w, registry=r
        )
        # set for every event read: plain values read at scrape time (see Tally)
        self.lag_seconds = LazyGauge(
            p + "lag_seconds",
            "Age of the last event read; 0 once an empty batch shows the stream has caught up.",
            w,
            registry=r,
        )
        self.last_batch_timestamp_seconds = LazyGauge(
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


class Tally:
    """One labelled series of a lazy collector: a plain number the hot path adds to (no
    lock: the event loop is its only writer), read when Prometheus scrapes."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self.value += amount

    def set(self, value: float) -> None:
        """Replace the value (a gauge's series)."""
        self.value = value

    def get(self) -> float:
        """The current value."""
        return self.value

    @property
    def _value(self) -> Tally:
        # the shape of a prometheus_client child (``child._value.get()``) that tests read
        return self


class Distribution:
    """One labelled series of a lazy histogram: bucket counts and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value


class _Lazy:
    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.series: dict[tuple[str, ...], Any] = {}  # Tally or Distribution
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        yield from self._families()

    def _families(self) -> Iterator[Metric]:
        raise NotImplementedError


class LazyCounter(_Lazy):
    """A counter whose series are ``Tally`` objects, summed by nobody: each is read as is."""

    def labels(self, *values: str, **named: str) -> Tally:
        """The series for these label values (created at 0), by position or by name."""
        if named:
            values = tuple(named[n] for n in self.labelnames)
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = Tally()
        return found

    def _families(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, tally in list(self.series.items()):
            family.add_metric(list(values), tally.value)
        yield family


class LazyGauge(LazyCounter):
    """A gauge whose series are ``Tally`` objects set by the hot path, read at scrape time."""

    def _families(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, tally in list(self.series.items()):
            family.add_metric(list(values), tally.value)
        yield family


class LazyHistogram(_Lazy):
    """A histogram whose series are ``Distribution`` objects, made cumulative at scrape time."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.bounds = [float(b) for b in buckets]
        super().__init__(name, documentation, labelnames, registry)

    def labels(self, *values: str, **named: str) -> Distribution:
        """The series for these label values (empty at first), by position or by name."""
        if named:
            values = tuple(named[n] for n in self.labelnames)
        found = self.series.get(values)
        if found is None:
            found = self.series[values] = Distribution(self.bounds)
        return found

    def _families(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [*(repr(b) if b != int(b) else f"{b:.1f}" for b in self.bounds), "+Inf"]
        for values, dist in list(self.series.items()):
            total, buckets = 0, []
            for edge, count in zip(edges, list(dist.counts), strict=True):
                total += count
                buckets.append((edge, float(total)))
            family.add_metric(list(values), buckets, dist.sum)
        yield family
