"""A small Redis-protocol (RESP2/RESP3) server on asyncio: a test double for the demo and tests.

It speaks what redis-py's asyncio client and ``cache_invalidation`` send: the connection
handshake (HELLO, CLIENT SETINFO/SETNAME, SELECT), PING, SET (EX/PX/NX/XX), GET, DEL, EXISTS,
DBSIZE, PUBLISH/SUBSCRIBE, MULTI/EXEC/DISCARD and pipelines. Strings only, in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import structlog

from changestream_worker.testing.resp import (
    CommandError,
    Frames,
    ProtocolError,
    Push,
    Simple,
    arity,
    as_int,
    encode,
    read_command,
)

log = structlog.get_logger("changestream_worker.testing.redis_server")


@dataclass
class _Session:
    protocol: int = 2
    db: int = 0
    queued: list[list[bytes]] | None = None  # inside MULTI
    writer: asyncio.StreamWriter | None = None
    channels: set[bytes] = field(default_factory=set)  # SUBSCRIBEd to


@dataclass
class _Entry:
    value: bytes
    expires: float | None = None  # time.monotonic() deadline


@dataclass
class _Store:
    dbs: dict[int, dict[bytes, _Entry]] = field(default_factory=dict)

    def db(self, index: int) -> dict[bytes, _Entry]:
        return self.dbs.setdefault(index, {})

    def get(self, index: int, key: bytes) -> bytes | None:
        entry = self.db(index).get(key)
        if entry is None:
            return None
        if entry.expires is not None and entry.expires <= time.monotonic():
            del self.db(index)[key]
            return None
        return entry.value


class RedisServer:
    """Serve the Redis protocol on ``host:port`` (port 0 picks a free one).

    Use ``async with RedisServer() as r:`` and connect to ``r.url``. ``published`` keeps every
    PUBLISH as ``(channel, message)`` so a test can read what was announced.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.store = _Store()
        self.published: list[tuple[bytes, bytes]] = []
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._subscribers: dict[bytes, list[_Session]] = {}
        self._commands: dict[bytes, Callable[[_Session, list[bytes]], Any]] = {
            b"PING": self._ping,
            b"HELLO": self._hello,
            b"CLIENT": self._client,
            b"SELECT": self._select,
            b"SET": self._set,
            b"GET": self._get,
            b"DEL": self._del,
            b"EXISTS": self._exists,
            b"DBSIZE": lambda s, a: len(self.store.db(s.db)),
            b"PUBLISH": self._publish,
            b"SUBSCRIBE": self._subscribe,
            b"UNSUBSCRIBE": self._unsubscribe,
        }

    @property
    def url(self) -> str:
        """``redis://host:port/0`` of the running server."""
        return f"redis://{self.host}:{self.port}/0"

    async def start(self) -> RedisServer:
        """Listen; ``port`` is the bound port afterwards."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RedisServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- wire ------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        session = _Session(writer=writer)
        try:
            while True:
                args = await read_command(reader)
                if args is None:
                    break
                if not args:
                    continue
                if args[0].upper() == b"QUIT":
                    writer.write(b"+OK\r\n")
                    break
                writer.write(encode(self._run(session, args), session.protocol))
                await writer.drain()
        except ProtocolError as exc:
            log.warning("redis_protocol_error", error=str(exc))
            with contextlib.suppress(ConnectionError):
                writer.write(encode(CommandError(f"Protocol error: {exc}"), session.protocol))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            self._unsubscribe(session, [])
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    def _run(self, session: _Session, args: list[bytes]) -> Any:
        name = args[0].upper()
        if name == b"MULTI":
            if session.queued is not None:
                return CommandError("MULTI calls can not be nested")
            session.queued = []
            return Simple("OK")
        if name in (b"EXEC", b"DISCARD"):
            if session.queued is None:
                return CommandError(f"{name.decode()} without MULTI")
            queued, session.queued = session.queued, None
            return [self._call(session, a) for a in queued] if name == b"EXEC" else Simple("OK")
        if session.queued is not None:
            if name not in self._commands:
                return self._call(session, args)  # the unknown-command error, not queued
            session.queued.append(args)
            return Simple("QUEUED")
        return self._call(session, args)

    def _call(self, session: _Session, args: list[bytes]) -> Any:
        command = self._commands.get(args[0].upper())
        if command is None:
            shown = args[0].decode(errors="replace")[:64]
            return CommandError(f"unknown command '{shown}'")
        try:
            return command(session, args[1:])
        except CommandError as exc:
            return exc

    # ---- commands --------------------------------------------------------------
    def _ping(self, s: _Session, a: list[bytes]) -> Any:
        if s.channels:  # RESP2 subscribers get PONG as a pub/sub frame
            return Push([b"pong", a[0] if a else b""])
        return a[0] if a else Simple("PONG")

    def _hello(self, s: _Session, a: list[bytes]) -> Any:
        if a:
            if a[0] not in (b"2", b"3"):
                raise CommandError("unsupported protocol version", code="NOPROTO")
            s.protocol = int(a[0])
        info = {"server": "redis", "version": "7.2.0", "proto": s.protocol, "id": id(s) % 10**5}
        return {**info, "mode": "standalone", "role": "master", "modules": []}

    def _client(self, s: _Session, a: list[bytes]) -> Any:
        sub = a[0].upper() if a else b""
        if sub in (b"SETINFO", b"SETNAME"):
            return Simple("OK")
        raise CommandError(f"unknown subcommand '{sub.decode(errors='replace')}'")

    def _select(self, s: _Session, a: list[bytes]) -> Any:
        arity(a, 1, 1, "select")
        s.db = as_int(a[0])
        if not 0 <= s.db < 16:
            raise CommandError("DB index is out of range")
        return Simple("OK")

    def _set(self, s: _Session, a: list[bytes]) -> Any:
        arity(a, 2, 6, "set")
        key, value, opts = a[0], a[1], [o.upper() for o in a[2:]]
        expires: float | None = None
        db = self.store.db(s.db)
        i = 0
        while i < len(opts):
            if opts[i] in (b"EX", b"PX") and i + 1 < len(opts):
                amount = as_int(a[2 + i + 1])
                if amount <= 0:
                    raise CommandError("invalid expire time in 'set' command")
                expires = time.monotonic() + (amount if opts[i] == b"EX" else amount / 1000)
                i += 2
            elif opts[i] in (b"NX", b"XX"):
                exists = self.store.get(s.db, key) is not None
                if (opts[i] == b"NX") == exists:
                    return None
                i += 1
            else:
                raise CommandError("syntax error")
        db[key] = _Entry(value, expires)
        return Simple("OK")

    def _get(self, s: _Session, a: list[bytes]) -> Any:
        arity(a, 1, 1, "get")
        return self.store.get(s.db, a[0])

    def _del(self, s: _Session, a: list[bytes]) -> Any:
        arity(a, 1, None, "del")
        gone = 0
        for key in a:
            if self.store.get(s.db, key) is not None:
                del self.store.db(s.db)[key]
                gone += 1
        return gone

    def _exists(self, s: _Session, a: list[bytes]) -> Any:
        arity(a, 1, None, "exists")
        return sum(self.store.get(s.db, key) is not None for key in a)

    def _publish(self, s: _Session, a: list[bytes]) -> Any:
        arity(a, 2, 2, "publish")
        self.published.append((a[0], a[1]))
        receivers = self._subscribers.get(a[0], [])
        for peer in receivers:
            if peer.writer is not None:
                peer.writer.write(encode(Push([b"message", a[0], a[1]]), peer.protocol))
        return len(receivers)

    def _subscribe(self, s: _Session, a: list[bytes]) -> Any:
        arity(a, 1, None, "subscribe")
        frames = []
        for channel in a:
            if channel not in s.channels:
                s.channels.add(channel)
                self._subscribers.setdefault(channel, []).append(s)
            frames.append(Push([b"subscribe", channel, len(s.channels)]))
        return Frames(frames)

    def _unsubscribe(self, s: _Session, a: list[bytes]) -> Any:
        frames = []
        for channel in a or sorted(s.channels):
            s.channels.discard(channel)
            peers = self._subscribers.get(channel, [])
            if s in peers:
                peers.remove(s)
            frames.append(Push([b"unsubscribe", channel, len(s.channels)]))
        return Frames(frames)
