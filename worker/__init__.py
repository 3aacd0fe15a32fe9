"""changestream-worker: react to MongoDB change streams, checkpointed and ordered per key."""

from __future__ import annotations

from changestream_worker.errors import (
    BatchItemFailures,
    ConfigError,
    MissingExtraError,
    PermanentError,
    RetryEvent,
    SkipEvent,
    StopWatcher,
    TransientError,
    WorkerError,
)
from changestream_worker.events import ChangeEvent, Namespace, get_path
from changestream_worker.handler import Handler, HandlerContext, HandlerOptions, takes_batches

__all__ = [
    "BatchItemFailures",
    "ChangeEvent",
    "ConfigError",
    "Handler",
    "HandlerContext",
    "HandlerOptions",
    "MissingExtraError",
    "Namespace",
    "PermanentError",
    "RetryEvent",
    "SkipEvent",
    "StopWatcher",
    "TransientError",
    "WorkerError",
    "get_path",
    "takes_batches",
]
