"""The demo's surroundings: an SMTP sink, a Redis and an SQL target, each real when given."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from changestream_worker.logs import mask_uri


def smtp_sink(outbox: Path, port: int) -> Any:
    """An aiosmtpd server on 127.0.0.1 that saves each message as a numbered ``.eml``."""
    from aiosmtpd.controller import Controller

    class Save:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            # runs on the sink's own thread and loop: blocking file I/O stalls nothing else
            n = len(list(outbox.glob("*.eml")))  # noqa: ASYNC240
            (outbox / f"{n + 1:05d}.eml").write_bytes(envelope.original_content or b"")
            return "250 Message accepted"

    controller = Controller(Save(), hostname="127.0.0.1", port=port)
    controller.start()
    return controller


@dataclass
class Cache:
    """The Redis the cache handler talks to, and a subscriber counting what it invalidates."""

    url: str
    label: str
    prefix: str
    embedded: Any = None  # the RedisServer test double, when no real Redis was reachable
    client: Any = None
    invalidated: int = 0  # keys announced on the channel by cache_invalidation
    product_changes: int = 0  # written by the generator: each invalidates keys_per_change
    keys_per_change: tuple[str, ...] = ("product", "catalogue")  # the templates in demo.yaml
    _listener: asyncio.Task[None] | None = None
    _stale: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    async def open(cls, url: str | None, prefix: str) -> Cache:
        """A real Redis at ``url`` if it answers, else the embedded test double (labelled)."""
        import redis.asyncio as redis

        note = ""
        if url:
            probe = redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
            try:
                await probe.ping()
                return await cls(url, f"Redis at {mask_uri(url)}", prefix).start()
            except (redis.RedisError, OSError) as exc:
                note = f" (no answer from {mask_uri(url)}: {type(exc).__name__})"
            finally:
                await probe.aclose()
        from changestream_worker.testing.redis_server import RedisServer

        server = await RedisServer(port=0).start()
        label = f"embedded Redis-protocol test double at {server.url}, not a real Redis{note}"
        return await cls(server.url, label, prefix, embedded=server).start()

    async def start(self) -> Cache:
        import redis.asyncio as redis

        self.client = redis.from_url(self.url)
        pubsub = self.client.pubsub()
        await pubsub.subscribe(f"{self.prefix}:invalidated")
        self._listener = asyncio.create_task(self._listen(pubsub))
        return self

    async def _listen(self, pubsub: Any) -> None:
        try:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    self.invalidated += len(json.loads(msg["data"]))
        finally:
            await pubsub.aclose()

    async def cache_stale(self, sku: str, price: float) -> None:
        """What an application's read-through cache holds before the price changes."""
        await self.client.set(f"{self.prefix}:product:{sku}", json.dumps({"price": price}))
        await self.client.set(f"{self.prefix}:catalogue", "[cached page]")
        self._stale.append((sku, price))

    async def proof(self) -> str:
        """A read of the entry cached before the second-newest price change."""
        if len(self._stale) < 2:
            return "no price change yet"
        sku, price = self._stale[-2]
        key = f"{self.prefix}:product:{sku}"
        value = await self.client.get(key)
        if value is None:
            return f"GET {key} -> (nil): stale price {price:.2f} gone"
        return f"GET {key} -> {value.decode()}: invalidation still pending"

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self.client is not None:
            with contextlib.suppress(Exception):  # a real Redis: leave no demo keys behind
                keys = [k async for k in self.client.scan_iter(f"{self.prefix}:*")]
                if keys:
                    await self.client.delete(*keys)
            await self.client.aclose()
        if self.embedded is not None:
            await self.embedded.stop()


@dataclass
class Catalogue:
    """The SQL database the projection writes to: ``--sql-url`` if it answers, else SQLite."""

    url: str
    table: str
    label: str
    engine: Any
    server: bool  # a PostgreSQL/MariaDB of the user's: its demo table is dropped at the end

    @classmethod
    async def open(cls, url: str | None, workdir: Path, run: str) -> Catalogue:
        from sqlalchemy.ext.asyncio import create_async_engine

        note = ""
        if url:
            engine = create_async_engine(url)
            try:
                async with asyncio.timeout(5):
                    async with engine.connect():
                        pass
                table = f"demo_products_{run}"
                return cls(url, table, f"{mask_uri(url)} table {table}", engine, True)
            except Exception as exc:  # any failure to reach it: say so and use SQLite
                await engine.dispose()
                note = f" (no answer from {mask_uri(url)}: {type(exc).__name__})"
        sqlite = f"sqlite+aiosqlite:///{workdir / 'catalogue.db'}"
        engine = create_async_engine(sqlite)
        return cls(sqlite, "products", f"SQLite {workdir / 'catalogue.db'}{note}", engine, False)

    async def rows(self) -> int:
        """Rows the projection holds (0 until it created its table)."""
        from sqlalchemy import text

        try:
            async with self.engine.connect() as conn:
                result = await conn.execute(text(f"SELECT COUNT(*) FROM {self.table}"))
                return int(result.scalar_one())
        except Exception:  # the table does not exist yet
            return 0

    async def close(self) -> None:
        if self.server:
            from sqlalchemy import text

            with contextlib.suppress(Exception):
                async with self.engine.begin() as conn:
                    await conn.execute(text(f"DROP TABLE IF EXISTS {self.table}"))
        await self.engine.dispose()
