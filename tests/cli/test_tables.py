"""The operator tables: one line per watcher, optional columns only when reported."""

from __future__ import annotations

from typing import Any

from changestream_worker.cli.tables import duration, render_status, table


def row(name: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "watcher": name,
        "state": "running",
        "reason": "",
        "checkpoint": {"cluster_time": "2026-03-01T11:58:30Z", "events_handled": 12},
        "lag_seconds": 90.0,
        "dead_letters": 1,
        "in_flight": 3,
        "backlog": None,
        "lease_wait_s": None,
        "lease": {
            "owner": "pod-a",
            "epoch": 3,
            "expires_at": "2026-03-01T12:00:10Z",
            "expired": False,
        },
    }
    return {**base, **over}


class TestStatusTable:
    def test_one_line_per_watcher_with_lag_in_flight_dlq_and_lease(self) -> None:
        """Header and rows carry lag, in-flight, dead letters and the lease owner."""
        lines = render_status([row("items"), row("orders#0", lease=None, in_flight=None)])
        assert lines.splitlines()[0].split() == [
            "WATCHER", "STATE", "CHECKPOINT", "LAG", "IN-FLIGHT", "HANDLED", "DLQ", "LEASE",
            "REASON",
        ]  # fmt: skip
        items = lines.splitlines()[1].split()
        assert items[:7] == ["items", "running", "2026-03-01T11:58:30Z", "1m30s", "3", "12", "1"]
        assert items[7:] == ["pod-a", "until", "2026-03-01T12:00:10Z"]
        assert lines.splitlines()[2].split()[4] == "-"

    def test_reported_backlog_and_lease_wait_get_columns(self) -> None:
        """Backlog and lease wait appear as columns once any watcher reports them."""
        text = render_status([row("a", backlog=250), row("b", lease_wait_s=75.0, state="standby")])
        header = text.splitlines()[0].split()
        assert header[7:10] == ["BACKLOG", "LEASE", "WAIT"]
        assert text.splitlines()[1].split()[7:9] == ["250", "-"]
        assert text.splitlines()[2].split()[7:9] == ["-", "1m15s"]

    def test_lease_states(self) -> None:
        """Released and expired leases say so."""
        released = {"owner": None, "epoch": 1, "expires_at": None, "expired": False}
        expired = {"owner": "pod-z", "epoch": 2, "expires_at": "x", "expired": True}
        text = render_status([row("a", lease=released), row("b", lease=expired)])
        assert "released" in text.splitlines()[1] and "pod-z (expired)" in text.splitlines()[2]


class TestHelpers:
    def test_duration(self) -> None:
        """Seconds, minutes and hours read as an operator expects."""
        assert [duration(x) for x in (None, 4.25, 187, 7500)] == ["-", "4.2s", "3m07s", "2h05m"]

    def test_table_aligns_columns(self) -> None:
        """Columns are padded to their widest cell."""
        assert table(["A", "BB"], [["xxx", "y"]]) == "A    BB\nxxx  y"
