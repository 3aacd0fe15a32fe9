"""Benchmark the emulator: change-stream read rate, insert rate, insert→event latency.

Run: python bench/emulator.py [--events 100000]. Prints one JSON line; README quotes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from pymongo import AsyncMongoClient

# bench/worker.py sits beside this script: keep it from shadowing the `worker` package
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from changestream_worker.testing.emulator import ReplicaSetEmulator


async def read_rate(uri: str, events: int) -> tuple[float, float]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    coll = client.bench.read
    stream = await coll.watch(batch_size=1000, max_await_time_ms=500)
    t0 = time.perf_counter()
    for start in range(0, events, 10_000):
        await coll.insert_many([{"i": i, "pad": "x" * 64} for i in range(start, start + 10_000)])
    insert_rate = events / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    seen = 0
    while seen < events:
        change = await stream.try_next()
        if change is not None:
            seen += 1
    rate = events / (time.perf_counter() - t0)
    await stream.close()
    await client.close()
    return rate, insert_rate


async def latency(uri: str, writes: int, per_second: int) -> tuple[float, float]:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    coll = client.bench.latency
    stream = await coll.watch(max_await_time_ms=1000)
    acked: dict[int, float] = {}
    lat: list[float] = []

    async def reader() -> None:
        while len(lat) < writes:
            change = await stream.try_next()
            if change is not None:
                now = time.perf_counter()
                i = change["fullDocument"]["i"]
                while i not in acked:  # noqa: ASYNC110 - the event can beat the ack's bookkeeping by a tick
                    await asyncio.sleep(0)
                lat.append(now - acked[i])

    task = asyncio.create_task(reader())
    interval = 1 / per_second
    start = time.perf_counter()
    for i in range(writes):
        await coll.insert_one({"i": i})
        acked[i] = time.perf_counter()
        delay = start + (i + 1) * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.wait_for(task, 30)
    await stream.close()
    await client.close()
    lat.sort()
    return statistics.median(lat) * 1000, lat[int(len(lat) * 0.99) - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--latency-writes", type=int, default=3_000)
    args = parser.parse_args()
    # the emulator runs in its own thread and loop, as in the test suite: client and server
    # do not share one event loop (they would on neither a real deployment nor in tests)
    rs = ReplicaSetEmulator().start_in_thread()
    try:
        rate, insert_rate = await read_rate(rs.uri, args.events)
        p50, p99 = await latency(rs.uri, args.latency_writes, 1000)
    finally:
        rs.stop_thread()
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()} {os.cpu_count()} cores, "
                f"Python {platform.python_version()}",
                "change_stream_events_per_s": round(rate),
                "insert_many_docs_per_s": round(insert_rate),
                "latency_ms_p50": round(p50, 2),
                "latency_ms_p99": round(p99, 2),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
