"""Plain-text tables of the operator commands: status rows and dead letters."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from changestream_worker.state.status import iso

if TYPE_CHECKING:
    from changestream_worker.state.deadletters import DeadLetter

# Reported figures that get a column only when some watcher reports them, so a worker
# version that does not write them yet leaves no empty column.
OPTIONAL_COLUMNS = (("backlog", "BACKLOG"), ("lease_wait_s", "LEASE WAIT"))


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def duration(seconds: float | None) -> str:
    """``4.2s``, ``3m07s``, ``2h05m``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _lease(lease: dict[str, Any] | None) -> str:
    if lease is None:
        return "-"
    if lease["owner"] is None:
        return "released"
    if lease["expired"]:
        return f"{lease['owner']} (expired)"
    return f"{lease['owner']} until {lease['expires_at']}"


def _figure(value: Any) -> str:
    return "-" if value is None else str(value)


def render_status(rows: list[dict[str, Any]]) -> str:
    """The rows of ``read_status`` as one table: a line per watcher."""
    extra = [(k, h) for k, h in OPTIONAL_COLUMNS if any(r.get(k) is not None for r in rows)]
    header = ["WATCHER", "STATE", "CHECKPOINT", "LAG", "IN-FLIGHT", "HANDLED", "DLQ"]
    header += [h for _, h in extra] + ["LEASE", "REASON"]
    out = []
    for r in rows:
        cp = r["checkpoint"] or {}
        line = [
            r["watcher"],
            r["state"],
            cp.get("cluster_time") or cp.get("wall_time") or "-",
            duration(r["lag_seconds"]),
            _figure(r.get("in_flight")),
            str(cp.get("events_handled", "-")),
            str(r["dead_letters"]),
        ]
        for key, _ in extra:
            value = r.get(key)
            line.append(duration(value) if key.endswith("_s") else _figure(value))
        out.append([*line, _lease(r["lease"]), r["reason"][:80]])
    return table(header, out)


def render_dead_letters(letters: list[DeadLetter]) -> str:
    """Dead letters, oldest first, one line each."""
    header = ["ID", "WATCHER", "HANDLER", "OP", "KEY", "ERROR", "MESSAGE", "ATTEMPTS"]
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
            iso(dl.last_failure) or "-",
        ]
        for dl in letters
    ]
    return table([*header, "LAST FAILURE"], rows)
