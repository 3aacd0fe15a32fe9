"""The broker relays from a 20,000-insert backlog against the no-op worker on the same
backlog: interleaved, 5 runs each, medians. Prints one JSON document.
Run: python bench/relays.py   (NATS_URL, AMQP_URL; a broker that is not there is left out)
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import backlog  # beside this script: python puts the script's folder on sys.path
import bench_handlers
import nats
from pymongo import AsyncMongoClient

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
N = 20_000
REPS = int(os.environ.get("BENCH_REPS", "5"))
Run = tuple[dict[str, Any], Callable[[], Awaitable[bool]], Callable[[], Awaitable[None]]]


async def noop() -> Run:
    bench_handlers.NoOp.done = 0

    async def done() -> bool:
        return bench_handlers.NoOp.done >= N

    async def cleanup() -> None:
        pass

    return {"type": "bench_handlers:NoOp"}, done, cleanup


async def nats_run() -> Run:
    nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    js = nc.jetstream()
    tag = uuid.uuid4().hex[:8]
    name, prefix = f"BENCH_{tag}", f"bench_{tag}"
    await js.add_stream(name=name, subjects=[f"{prefix}.>"])

    async def done() -> bool:
        return ((await js.stream_info(name)).state.messages or 0) >= N

    async def cleanup() -> None:
        await js.delete_stream(name)
        await nc.close()

    subject = f"{prefix}.{{ns.coll}}"
    handler = {"type": "nats_relay", "options": {"url": NATS_URL, "subject": subject}}
    return handler, done, cleanup


async def amqp_run() -> Run:
    conn = await aio_pika.connect(AMQP_URL, timeout=3)
    channel = await conn.channel()
    tag = uuid.uuid4().hex[:8]
    exchange = await channel.declare_exchange(f"bench_{tag}", "topic")
    queue = await channel.declare_queue(f"bench_{tag}")
    await queue.bind(exchange, "bench.#")

    async def done() -> bool:
        q = await channel.declare_queue(queue.name, passive=True)
        return (q.declaration_result.message_count or 0) >= N

    async def cleanup() -> None:
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
        await conn.close()

    handler = {
        "type": "amqp_relay",
        "options": {"url": AMQP_URL, "exchange": exchange.name, "routing_key": "bench.{ns.coll}"},
    }
    return handler, done, cleanup


async def reachable(make: Callable[[], Awaitable[Run]]) -> bool:
    try:
        _, _, cleanup = await make()
    except Exception as exc:  # any client error: that broker is not there
        print(f"left out: {exc}", file=sys.stderr)
        return False
    await cleanup()
    return True


async def main() -> None:
    kinds = {"noop": noop, "nats_relay": nats_run, "amqp_relay": amqp_run}
    kinds = {k: make for k, make in kinds.items() if await reachable(make)}
    emulator, uri = backlog.start_emulator()
    await asyncio.sleep(1.1)  # start times have one-second resolution
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        start = await backlog.backlog(client, "relay", N)
        for rep in range(REPS):
            for kind, make in kinds.items():
                handler, done, cleanup = await make()
                try:
                    cfg = backlog.settings(uri, "relay", f"{kind}{rep}", handler, start)
                    rates[kind].append(N / await backlog.drain(cfg, done, poll=0.05))
                finally:
                    await cleanup()
                print(f"rep {rep} {kind}: {rates[kind][-1]:,.0f} events/s", file=sys.stderr)
    finally:
        await client.close()
        emulator.terminate()
        emulator.wait(10)
    medians = {k: backlog.median(v) for k, v in rates.items()}
    out: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "backlog": N,
        **{f"{k}_events_per_s": round(v) for k, v in medians.items()},
        **{
            f"{k}_vs_noop": round(v / medians["noop"], 2) for k, v in medians.items() if k != "noop"
        },
        "runs": {k: [round(v) for v in vs] for k, vs in rates.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
