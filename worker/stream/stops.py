"""The one way a watcher stops on purpose: ``WatcherStopped``, built from what caused it."""

from __future__ import annotations

from changestream_worker.errors import StopWatcher

__all__ = ["LeaseLost", "WatcherStopped", "stopped_by"]


class LeaseLost(Exception):
    """The lease guard says this process no longer owns the watcher's lease."""


class WatcherStopped(Exception):
    """The watcher stopped: by policy, by a handler, by a failure or by losing its lease.

    Args:
        reason: one line for logs and ``/readyz``.
        expected: ``True`` when the stop is on purpose (the supervisor keeps it ready and
            does not restart it as a crash).
        fenced: ``True`` when another process now owns the watcher.
    """

    def __init__(self, reason: str, expected: bool, fenced: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expected = expected
        self.fenced = fenced


def stopped_by(cause: BaseException) -> WatcherStopped:
    """The ``WatcherStopped`` that a dispatcher stopped by ``cause`` raises (cause chained)."""
    if isinstance(cause, WatcherStopped):
        return cause
    if isinstance(cause, LeaseLost):
        stop = WatcherStopped(str(cause), expected=True, fenced=True)
    elif isinstance(cause, StopWatcher):
        stop = WatcherStopped(f"a handler stopped the watcher: {cause.reason}", True)
    else:
        stop = WatcherStopped(f"handler failure: {type(cause).__name__}: {cause}", False)
    stop.__cause__ = cause
    return stop
