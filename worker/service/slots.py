"""A watcher's place in the supervisor: its task, its state for /readyz and `status`."""

from __future__ import annotations

import asyncio
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from changestream_worker.config.models import WatcherSettings
    from changestream_worker.stream.watcher import Watcher

#: states in which a watcher counts as ready: doing its job, or not meant to
READY_STATES = frozenset({"running", "standby", "stopped_by_policy", "snapshot", "resuming"})


class WatcherSlot:
    """One watcher (or one partition of it) as the supervisor runs it."""

    def __init__(self, ws: WatcherSettings, name: str, partition: int = 0) -> None:
        self.ws, self.name, self.partition = ws, name, partition
        self.task: asyncio.Task[None] | None = None
        self.watcher: Watcher | None = None
        self.state = "starting"
        self.reason = ""
        self.restarts = 0
        self.seen_tracebacks: set[str] = set()
        self.tb = ""

    def set(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, reason

    def crashed(self, exc: BaseException) -> bool:
        """Count a crash; True the first time this traceback is seen (log it whole once)."""
        self.restarts += 1
        self.set("restarting", f"{type(exc).__name__}: {exc}")
        self.tb = "".join(traceback.format_exception(exc))
        first = self.tb not in self.seen_tracebacks
        self.seen_tracebacks.add(self.tb)
        return first

    def report(self) -> dict[str, Any]:
        """The slot as /healthz and /readyz show it (a running watcher's own state wins)."""
        w = self.watcher
        state = w.state if w is not None and self.state == "running" else self.state
        return {
            "state": state,
            "reason": self.reason or (w.reason if w else ""),
            "restarts": self.restarts,
        }


def instance_names(ws: WatcherSettings) -> list[str]:
    """The names a watcher runs under: itself, or ``name#i`` for each of its partitions."""
    if ws.partitions <= 1:
        return [ws.name]
    return [f"{ws.name}#{i}" for i in range(ws.partitions)]
