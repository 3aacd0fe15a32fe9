"""Benchmark the emulator: change-stream read rate, insert rate, insert→event latency,
upsert-by-_id cost against collection size, and how long one big command stalls others.

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
from typing import Any

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


async def _fill(coll: Any, n: int) -> None:
    for start in range(0, n, 10_000):
        await coll.insert_many(
            [{"_id": i, "v": i, "pad": "x" * 64} for i in range(start, min(n, start + 10_000))]
        )


async def upsert_cost(uri: str, sizes: list[int], reps: int, ops: int) -> dict[int, float]:
    """Median ms per ``update_one({_id}, $set, upsert=True)`` for each collection size.

    Sizes are interleaved within every repetition so that load beside the run affects all
    of them alike; half the upserts hit an existing document, half insert a new one.
    """
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    colls = {n: client.bench[f"upsert_{n}"] for n in sizes}
    for n, coll in colls.items():
        await _fill(coll, n)
    per_rep: dict[int, list[float]] = {n: [] for n in sizes}
    fresh = 10**9
    for _ in range(reps):
        for n, coll in colls.items():
            t0 = time.perf_counter()
            for j in range(ops):
                fresh += 1
                key = (j * 7919) % max(n, 1) if j % 2 else fresh
                await coll.update_one({"_id": key}, {"$set": {"w": j}}, upsert=True)
            per_rep[n].append((time.perf_counter() - t0) / ops * 1000)
    await client.close()
    return {n: statistics.median(v) for n, v in per_rep.items()}


async def _stall_once(uri: str, docs: int, big: int) -> tuple[float, float]:
    writer: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    pinger: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    coll = writer.bench.stall
    await _fill(coll, docs)
    for i in range(big):
        await coll.insert_one({"_id": f"big{i}", "blob": "y" * 15_000_000})
    await pinger.admin.command("ping")
    done = asyncio.Event()
    longest = 0.0

    async def ping() -> None:
        nonlocal longest
        while not done.is_set():
            t0 = time.perf_counter()
            await pinger.admin.command("ping")
            longest = max(longest, time.perf_counter() - t0)
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ping())
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await coll.delete_many({})
    took = time.perf_counter() - t0
    done.set()
    await task
    await writer.close()
    await pinger.close()
    return longest, took


async def stall(uri: str, docs: int, big: int, reps: int) -> dict[str, float]:
    """While one ``delete_many`` removes ``docs`` documents plus ``big`` of ~15 MB, another
    connection pings every millisecond: the longest ping and the delete's own time (medians)."""
    runs = [await _stall_once(uri, docs, big) for _ in range(reps)]
    return {
        "longest_ping_ms": statistics.median(r[0] for r in runs) * 1000,
        "delete_many_s": statistics.median(r[1] for r in runs),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--latency-writes", type=int, default=3_000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    # the emulator runs in its own thread and loop, as in the test suite: client and server
    # do not share one event loop (they would on neither a real deployment nor in tests)
    rs = ReplicaSetEmulator().start_in_thread()
    try:
        rate, insert_rate = await read_rate(rs.uri, args.events)
        p50, p99 = await latency(rs.uri, args.latency_writes, 1000)
        upserts = await upsert_cost(rs.uri, [0, 1_000, 10_000, 100_000], args.reps, 200)
        stalled = await stall(rs.uri, 10_000, 3, 3)
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
                "upsert_by_id_ms": {str(n): round(ms, 3) for n, ms in upserts.items()},
                "delete_many_10k_3x15MB_s": round(stalled["delete_many_s"], 3),
                "longest_ping_during_it_ms": round(stalled["longest_ping_ms"], 1),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
