"""A TCP proxy on 127.0.0.1 that tests cut and restore: a network loss with the server still up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading


def free_port() -> int:
    """A port nothing listens on now (bound and released), for a server started later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NetCut:
    """Forwards ``127.0.0.1:port`` to ``target``; ``cut()`` drops every connection and stops
    listening (clients see refused connections), ``restore()`` listens again on the same port.

    Runs its own event loop in a thread, so synchronous tests and benches can use it.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.cuts = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> NetCut:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def uri(self) -> str:
        # direct: the set advertises its members by their own address, which bypasses the proxy
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def cut(self) -> None:
        """Close the listener and every forwarded connection (both ends)."""
        asyncio.run_coroutine_threadsafe(self._cut(), self._loop).result(10)
        self.cuts += 1

    def restore(self) -> None:
        """Listen again on the same port."""
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._pipes):
            w.transport.abort()  # a reset, not a polite close: what a lost link looks like
        self._pipes.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )
        self._pipes -= {writer, up_writer}

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()
