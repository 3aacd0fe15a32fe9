"""`changestream-worker demo`: emulator + SMTP sink + load generator + the worker, in one go."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import tempfile
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

CONFIG = Path(__file__).resolve().parent / "demo.yaml"  # package data: works installed too
SKUS = {"mug": 40, "tee": 25, "cap": 10}


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _smtp_sink(outbox: Path, port: int) -> Any:
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


async def _generate(client: AsyncMongoClient[dict[str, Any]], stop: asyncio.Event) -> None:
    shop = client.shop
    rng = random.Random(1)
    n = 0
    while not stop.is_set():
        n += 1
        await shop.users.insert_one({"name": f"user{n}", "email": f"user{n}@example.com"})
        items = [{"sku": sku, "qty": rng.randint(1, 3)} for sku in rng.sample(sorted(SKUS), 2)]
        await shop.orders.insert_one({"user": n, "status": "paid", "items": items})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.3)


async def _tally(client: AsyncMongoClient[dict[str, Any]], outbox: Path) -> str:
    shop = client.shop
    users = await shop.users.count_documents({})
    fulfilled = await shop.orders.count_documents({"status": "fulfilled"})
    back = await shop.orders.count_documents({"status": "backordered"})
    stock = {d["_id"]: d["available"] async for d in shop.inventory.find()}
    mails = len(await asyncio.to_thread(lambda: list(outbox.glob("*.eml"))))
    return (
        f"users {users} · emails {mails} · orders fulfilled {fulfilled}, backordered {back}"
        f" · stock {stock}"
    )


async def main(duration: float | None) -> int:
    """Run the demo for `duration` seconds (until Ctrl-C/SIGTERM when None)."""
    from changestream_worker.config.models import load_settings
    from changestream_worker.logs import configure_logging
    from changestream_worker.service.supervisor import Supervisor
    from changestream_worker.testing.emulator import ReplicaSetEmulator

    outbox = Path(tempfile.mkdtemp(prefix="changestream-demo-outbox-"))
    smtp_port, http_port = _free_port(2525), _free_port(9108)
    emulator = await ReplicaSetEmulator(port=0).start()
    sink = _smtp_sink(outbox, smtp_port)
    env = {
        **os.environ,
        "DEMO_MONGODB_URI": emulator.uri,
        "DEMO_SMTP_PORT": str(smtp_port),
        "DEMO_HTTP_PORT": str(http_port),
    }
    settings = load_settings(CONFIG, env)
    configure_logging(settings.logging.format, settings.logging.level)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(emulator.uri)
    await client.shop.inventory.insert_many(
        [{"_id": sku, "available": n, "reserved": 0} for sku, n in SKUS.items()]
    )
    sup = Supervisor(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await sup.start()
    checkpoints = client[settings.state.database].checkpoints
    while await checkpoints.count_documents({}) < len(settings.watchers):  # noqa: ASYNC110 - state in MongoDB, no event to wait on
        await asyncio.sleep(0.05)  # each watcher stores its starting point first
    print(f"changestream-worker demo — MongoDB emulator at {emulator.uri}")
    print(f"  metrics:  http://127.0.0.1:{http_port}/metrics   (also /healthz, /readyz)")
    print(f"  outbox:   {outbox}   (one .eml file per welcome email)")
    print("  Ctrl-C to stop" if duration is None else f"  running for {duration:g} s")
    generator = asyncio.create_task(_generate(client, stop))
    loop.call_later(duration, stop.set) if duration is not None else None
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)
            print("  " + await _tally(client, outbox), flush=True)
    finally:
        stop.set()
        await generator
        for _ in range(30):  # let the last events through before the final tally
            users = await client.shop.users.count_documents({})
            mails = await asyncio.to_thread(lambda: len(list(outbox.glob("*.eml"))))
            if mails >= users:
                break
            await asyncio.sleep(0.1)
        print("  final: " + await _tally(client, outbox), flush=True)
        await sup.shutdown()
        await client.close()
        sink.stop()
        await emulator.stop()
    return 0
