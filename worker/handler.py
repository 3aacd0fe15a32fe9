"""The public handler API: the base class handlers subclass and the context they receive."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.database import AsyncDatabase
    from structlog.typing import FilteringBoundLogger

    from worker.events import ChangeEvent


class HandlerOptions(BaseModel):
    """Base of handler option models: unknown keys are a config error."""

    model_config = ConfigDict(extra="forbid")


@dataclass(slots=True)
class HandlerContext:
    """What a handler may use: the MongoDB client, the watched and state databases, a logger.

    Args:
        client: the worker's ``AsyncMongoClient``.
        database: the database the watcher watches (``mongodb.database`` or its own).
        state_database: where the worker keeps checkpoints, dead letters and ledgers.
        log: a structlog logger bound with ``watcher`` and ``handler``.
        watcher: the watcher's name.
        handler: the handler instance's name in the config.
    """

    client: AsyncMongoClient[dict[str, Any]]
    database: AsyncDatabase[dict[str, Any]]
    state_database: AsyncDatabase[dict[str, Any]]
    log: FilteringBoundLogger
    watcher: str
    handler: str
    extra: dict[str, Any] = field(default_factory=dict)


class Handler:
    """Subclass this, set ``Options`` to a pydantic model if you take options, and
    implement ``handle``. One instance serves every watcher that names it.

    Args:
        options: the validated ``Options`` instance (or ``HandlerOptions()`` if none).
    """

    Options: ClassVar[type[HandlerOptions]] = HandlerOptions

    def __init__(self, options: HandlerOptions) -> None:
        self.options = options

    async def start(self, ctx: HandlerContext) -> None:
        """Called once before the first event (open connections, create indexes)."""

    async def handle(self, event: ChangeEvent, ctx: HandlerContext) -> None:
        """Do the work for one event. Raise to retry or dead-letter it.

        Raises:
            SkipEvent: nothing to do.
            RetryEvent: try again later.
            TransientError: a failure worth retrying.
            PermanentError: retrying cannot help; dead-letter it now.
        """
        raise NotImplementedError

    async def stop(self) -> None:
        """Called once at shutdown (close connections)."""
