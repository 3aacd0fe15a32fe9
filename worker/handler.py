"""The public handler API: the base class handlers subclass and the context they receive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, get_args, get_origin

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient
    from pymongo.asynchronous.database import AsyncDatabase
    from structlog.typing import FilteringBoundLogger

    from changestream_worker.events import ChangeEvent


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


OptionsT = TypeVar("OptionsT", bound=HandlerOptions, default=HandlerOptions)


class Handler(Generic[OptionsT]):
    """Subclass this as ``Handler[MyOptions]`` (a pydantic model of your options, or plain
    ``Handler`` if you take none) and implement ``handle`` or ``handle_batch``. One instance
    serves every watcher that names it; ``self.options`` is the validated options model.

    Args:
        options: the validated options (an instance of ``Options``).
    """

    #: the options model; taken from ``Handler[MyOptions]`` unless set explicitly
    Options: ClassVar[type[HandlerOptions]] = HandlerOptions

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Options" in cls.__dict__:
            return
        for base in getattr(cls, "__orig_bases__", ()):
            origin = get_origin(base)
            if isinstance(origin, type) and issubclass(origin, Handler):
                args = get_args(base)
                if args and isinstance(args[0], type) and issubclass(args[0], HandlerOptions):
                    cls.Options = args[0]
                    return

    def __init__(self, options: OptionsT) -> None:
        self.options: OptionsT = options

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

    async def handle_batch(self, events: Sequence[ChangeEvent], ctx: HandlerContext) -> None:
        """Do the work for several events at once (implement this *or* ``handle``).

        The events keep stream order, and a document's events never overtake each other
        across batches. Returning means every event is done.

        Raises:
            BatchItemFailures: some events failed (by index); only those, and later events
                of the same documents, are retried one by one, the rest count as done.
            TransientError: retry the whole batch.
            PermanentError: the batch is split to find the event that fails.
        """
        raise NotImplementedError

    async def stop(self) -> None:
        """Called once at shutdown (close connections)."""


def takes_batches(handler: Handler[Any]) -> bool:
    """Whether ``handler`` implements ``handle_batch`` (the dispatcher then groups events)."""
    return type(handler).handle_batch is not Handler.handle_batch
