"""`changestream-worker demo`: every built-in handler at work on parts started in-process.

The emulator, an SMTP sink, a Redis (real at ``--redis-url`` when it answers, else the
embedded test double) and SQLite (or ``--sql-url``), a load generator and the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from changestream_worker.cli.demo_parts import Cache, Catalogue, smtp_sink

CONFIG = Path(__file__).resolve().parent / "demo.yaml"  # package data: works installed too
SKUS = {"mug": 40, "tee": 25, "cap": 10}
PRICES = {"mug": 12.5, "tee": 19.0, "cap": 15.0}
Client = AsyncMongoClient[dict[str, Any]]


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _generate(client: Client, cache: Cache, stop: asyncio.Event) -> None:
    """Users sign up, pay orders, and product prices change (new products now and then)."""
    shop = client.shop
    rng = random.Random(1)
    prices = dict(PRICES)
    n = 0
    while not stop.is_set():
        n += 1
        await shop.users.insert_one({"name": f"user{n}", "email": f"user{n}@example.com"})
        items = [{"sku": sku, "qty": rng.randint(1, 3)} for sku in rng.sample(sorted(SKUS), 2)]
        await shop.orders.insert_one({"user": n, "status": "paid", "items": items})
        sku = rng.choice(sorted(prices))
        await cache.cache_stale(sku, prices[sku])
        # an update that changes nothing makes no change event: always move the price
        price = round(prices[sku] * rng.uniform(0.9, 1.1), 2)
        prices[sku] = price if price != prices[sku] else round(price + 0.01, 2)
        await shop.products.update_one({"_id": sku}, {"$set": {"price": prices[sku]}})
        cache.product_changes += 1
        if n % 10 == 0:  # a delivery: backordered items can ship again
            await shop.inventory.update_many({}, {"$inc": {"available": 5}})
        if n % 5 == 0:
            new = f"sticker-{n // 5}"
            prices[new] = 2.0
            await shop.products.insert_one({"_id": new, "name": f"Sticker #{n // 5}", "price": 2.0})
            cache.product_changes += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)


async def _tally(client: Client, outbox: Path, cache: Cache, sql: Catalogue) -> str:
    shop = client.shop
    users = await shop.users.count_documents({})
    fulfilled = await shop.orders.count_documents({"status": "fulfilled"})
    back = await shop.orders.count_documents({"status": "backordered"})
    stock = {d["_id"]: d["available"] async for d in shop.inventory.find()}
    mails = len(await asyncio.to_thread(lambda: list(outbox.glob("*.eml"))))
    return (
        f"users {users} · emails {mails} · orders fulfilled {fulfilled}, backordered {back}"
        f" · stock {stock}\n    cache keys invalidated {cache.invalidated}"
        f" · rows projected {await sql.rows()} · {await cache.proof()}"
    )


async def _drain(client: Client, outbox: Path, cache: Cache, sql: Catalogue) -> None:
    """Let the last events through before the final tally (a few seconds at most)."""
    keys = len(cache.keys_per_change)
    for _ in range(50):
        users = await client.shop.users.count_documents({})
        products = await client.shop.products.count_documents({})
        mails = await asyncio.to_thread(lambda: len(list(outbox.glob("*.eml"))))
        invalidated = cache.invalidated >= keys * cache.product_changes
        if mails >= users and await sql.rows() >= products and invalidated:
            return
        await asyncio.sleep(0.1)


async def main(
    duration: float | None, redis_url: str | None = None, sql_url: str | None = None
) -> int:
    """Run the demo for ``duration`` seconds (until Ctrl-C/SIGTERM when None).

    Args:
        duration: seconds to run, or None.
        redis_url: a Redis to use for cache invalidation; the embedded double if it is None
            or does not answer.
        sql_url: an SQLAlchemy async URL (PostgreSQL/MariaDB) for the projection; SQLite in
            the demo's folder if None or unreachable.
    """
    from changestream_worker.config.models import load_settings
    from changestream_worker.logs import configure_logging
    from changestream_worker.service.supervisor import Supervisor
    from changestream_worker.testing.emulator import ReplicaSetEmulator

    workdir = Path(tempfile.mkdtemp(prefix="changestream-demo-"))
    outbox = workdir / "outbox"
    outbox.mkdir()
    run = uuid.uuid4().hex[:8]
    smtp_port, http_port = _free_port(2525), _free_port(9108)
    emulator = await ReplicaSetEmulator(port=0).start()
    sink = smtp_sink(outbox, smtp_port)
    cache = await Cache.open(redis_url, prefix=f"demo:{run}")
    sql = await Catalogue.open(sql_url, workdir, run)
    env = {
        **os.environ,
        "DEMO_MONGODB_URI": emulator.uri,
        "DEMO_SMTP_PORT": str(smtp_port),
        "DEMO_HTTP_PORT": str(http_port),
        "DEMO_REDIS_URL": cache.url,
        "DEMO_CACHE_PREFIX": cache.prefix,
        "DEMO_SQL_URL": sql.url,
        "DEMO_SQL_TABLE": sql.table,
    }
    settings = load_settings(CONFIG, env)
    configure_logging(settings.logging.format, settings.logging.level)
    client: Client = AsyncMongoClient(emulator.uri)
    await client.shop.inventory.insert_many(
        [{"_id": sku, "available": n, "reserved": 0} for sku, n in SKUS.items()]
    )
    sup = Supervisor(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    generator: asyncio.Task[None] | None = None
    try:
        await sup.start()
        checkpoints = client[settings.state.database].checkpoints
        while await checkpoints.count_documents({}) < len(settings.watchers):  # noqa: ASYNC110 - state in MongoDB, no event to wait on
            await asyncio.sleep(0.05)  # each watcher stores its starting point first
        await client.shop.products.insert_many(
            [{"_id": sku, "name": sku.title(), "price": p} for sku, p in PRICES.items()]
        )
        cache.product_changes += len(PRICES)
        print(f"changestream-worker demo — MongoDB emulator at {emulator.uri}")
        print(f"  metrics:  http://127.0.0.1:{http_port}/metrics   (also /healthz, /readyz)")
        print(f"  outbox:   {outbox}   (one .eml file per welcome email)")
        print(f"  cache:    {cache.label}")
        print(f"  sql:      {sql.label}")
        print("  Ctrl-C to stop" if duration is None else f"  running for {duration:g} s")
        generator = asyncio.create_task(_generate(client, cache, stop))
        if duration is not None:
            loop.call_later(duration, stop.set)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            print("  " + await _tally(client, outbox, cache, sql), flush=True)
        stop.set()
        await generator
        await _drain(client, outbox, cache, sql)
        print("  final: " + await _tally(client, outbox, cache, sql), flush=True)
    finally:
        stop.set()
        if generator is not None and not generator.done():
            generator.cancel()
        await sup.shutdown()
        await client.close()
        await cache.close()
        await sql.close()
        sink.stop()
        await emulator.stop()
    return 0
