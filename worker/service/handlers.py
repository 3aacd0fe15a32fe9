"""The configured handler instances: started once, each given its context, stopped once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from changestream_worker.handler import Handler, HandlerContext

if TYPE_CHECKING:
    from pymongo import AsyncMongoClient

log = structlog.get_logger("changestream_worker.service.handlers")


class HandlerSet:
    """The handlers of one process and the one place their contexts are made.

    Args:
        handlers: the built (not yet started) handlers by config name.
        client: the worker's MongoDB client.
        default_database: ``mongodb.database``, for watchers that name none.
        state_database: ``state.database``.
    """

    def __init__(
        self,
        handlers: dict[str, Handler[Any]],
        client: AsyncMongoClient[dict[str, Any]],
        default_database: str,
        state_database: str,
    ) -> None:
        self.handlers, self.client = handlers, client
        self.default_database, self.state_database = default_database, state_database
        self._started: set[str] = set()

    def context(
        self, handler: str, watcher: str, database: str | None = None, **bind: Any
    ) -> HandlerContext:
        """The context ``handler`` gets when serving ``watcher`` (on ``database``)."""
        return HandlerContext(
            client=self.client,
            database=self.client[database or self.default_database],
            state_database=self.client[self.state_database],
            log=structlog.get_logger("handler").bind(watcher=watcher, handler=handler, **bind),
            watcher=watcher,
            handler=handler,
        )

    async def start(self, name: str, ctx: HandlerContext | None = None) -> Handler[Any]:
        """``name``'s handler, started on first use."""
        handler = self.handlers[name]
        if name not in self._started:
            await handler.start(ctx or self.context(name, "*"))
            self._started.add(name)
        return handler

    async def start_all(self) -> None:
        for name in self.handlers:
            await self.start(name)

    async def stop_all(self) -> None:
        for name in list(self._started):
            try:
                await self.handlers[name].stop()
            except Exception as exc:  # one handler's failing stop must not block the others
                log.warning("handler_stop_failed", handler=name, error=str(exc))
        self._started.clear()
