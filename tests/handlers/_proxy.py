"""Shared by the relays' tests: a TCP proxy a test can cut and restore (a broker connection
lost on demand), and a handler context without MongoDB."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from changestream_worker import HandlerContext


class Proxy:
    """Forwards connections from a local port to ``host:port``; ``cut`` closes them all."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def cut(self) -> None:
        """Stop listening and drop every forwarded connection (the port stays ours)."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.links.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            self.links.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


def offline_context() -> HandlerContext:
    """A context for handlers that never touch MongoDB (the relays): no client, no databases."""
    return HandlerContext(
        client=None,  # type: ignore[arg-type]
        database=None,  # type: ignore[arg-type]
        state_database=None,  # type: ignore[arg-type]
        log=structlog.get_logger(),
        watcher="items",
        handler="relay",
    )
