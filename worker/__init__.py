"""changestream-worker: react to MongoDB change streams, checkpointed and ordered per key."""

from __future__ import annotations

from worker.errors import (
    ConfigError,
    PermanentError,
    RetryEvent,
    SkipEvent,
    StopWatcher,
    TransientError,
    WorkerError,
)
from worker.events import ChangeEvent, Namespace, get_path
from worker.handler import Handler, HandlerContext, HandlerOptions

__all__ = [
    "ChangeEvent",
    "ConfigError",
    "Handler",
    "HandlerContext",
    "HandlerOptions",
    "Namespace",
    "PermanentError",
    "RetryEvent",
    "SkipEvent",
    "StopWatcher",
    "TransientError",
    "WorkerError",
    "get_path",
]
