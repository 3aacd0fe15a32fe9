"""Benchmark the worker against the emulator (run as a separate process, like a real server).

(a) no-op handler with checkpointing vs a raw ``async for`` over the same stream;
(b) a 5 ms handler at concurrency 64 over 1,000 keys vs the sequential loop;
(c) checkpoint writes per 10,000 events; (d) peak RSS with a 100,000-event backlog and a
slow handler; (e) the raw loop again with Motor. Prints one JSON document.
Run: python bench/worker_bench.py
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import bench_handlers  # beside this script: python puts the script's folder on sys.path
import psutil
from pymongo import AsyncMongoClient

from changestream_worker.config.models import Settings
from changestream_worker.service.supervisor import Supervisor


def start_emulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "changestream_worker", "emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def settings(uri: str, db: str, handler: str, concurrency: int, start: datetime) -> Settings:
    return Settings.model_validate(
        {
            "mongodb": {"uri": uri, "database": db},
            "state": {"database": f"{db}_state"},
            "http": {"enabled": False},
            "leases": {"enabled": False},
            "logging": {"format": "json", "level": "warning"},
            "handlers": {"h": {"type": f"bench_handlers:{handler}"}},
            "watchers": [
                {
                    "name": "bench",
                    "collection": "items",
                    "handlers": ["h"],
                    "concurrency": concurrency,
                    "start_at": start.isoformat(),
                    "batch_size": 1000,
                }
            ],
        }
    )


async def run_worker(cfg: Settings, counter: Callable[[], int], n: int) -> tuple[float, Any]:
    sup = Supervisor(cfg)
    t0 = time.perf_counter()
    await sup.start()
    while counter() < n:  # noqa: ASYNC110 - a benchmark polls a counter, 10 ms is noise here
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    await sup.shutdown()
    return n / elapsed, sup.metrics


async def raw_loop(coll: Any, start: Any, n: int, handle: Callable[[Any], Any] | None) -> float:
    t0 = time.perf_counter()
    seen = 0
    async with await coll.watch(start_at_operation_time=start, batch_size=1000) as stream:
        async for change in stream:
            if handle is not None:
                await handle(change)
            seen += 1
            if seen >= n:
                break
    return n / (time.perf_counter() - t0)


async def motor_loop(uri: str, db: str, start: Any, n: int) -> float | None:
    try:
        from motor.motor_asyncio import AsyncIOMotorClient
    except ImportError:
        return None
    client = AsyncIOMotorClient(uri)
    t0 = time.perf_counter()
    seen = 0
    async with client[db].items.watch(start_at_operation_time=start, batch_size=1000) as stream:
        async for _change in stream:
            seen += 1
            if seen >= n:
                break
    client.close()
    return n / (time.perf_counter() - t0)


async def prepare(
    client: Any, db: str, docs: list[dict[str, Any]], updates: int = 0
) -> tuple[Any, datetime]:
    ping = await client.admin.command("ping")
    start_ts = ping["operationTime"]
    coll = client[db].items
    for i in range(0, len(docs), 10_000):
        await coll.insert_many(docs[i : i + 10_000])
    for _ in range(updates):
        for d in docs:
            await coll.update_one({"_id": d["_id"]}, {"$inc": {"n": 1}})
    return start_ts, datetime.fromtimestamp(start_ts.time, UTC) - timedelta(seconds=0)


async def main() -> None:
    emulator, uri = start_emulator()
    # start times below have one-second resolution: begin in a later second than the
    # emulator's history, as a real deployment's oplog would be older than "now"
    await asyncio.sleep(1.1)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    out: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    }
    try:
        n = 20_000
        ts, start = await prepare(client, "a", [{"_id": i} for i in range(n)])
        raw = await raw_loop(client.a.items, ts, n, None)
        worker_rate, metrics = await run_worker(
            settings(uri, "a", "NoOp", 64, start), lambda: bench_handlers.NoOp.done, n
        )
        writes = metrics.checkpoint_writes_total.labels("bench")._value.get()
        out["a_raw_events_per_s"] = round(raw)
        out["a_worker_noop_events_per_s"] = round(worker_rate)
        out["a_ratio"] = round(worker_rate / raw, 2)
        out["c_checkpoint_writes_per_10k"] = round(writes * 10_000 / n, 1)
        motor = await motor_loop(uri, "a", ts, n)
        out["e_motor_raw_events_per_s"] = None if motor is None else round(motor)

        keys = [{"_id": k} for k in range(1000)]
        ts, start = await prepare(client, "b", keys, updates=4)
        m = 5000

        async def five_ms(_: Any) -> None:
            await asyncio.sleep(0.005)

        seq = await raw_loop(client.b.items, ts, 1000, five_ms)
        conc, _ = await run_worker(
            settings(uri, "b", "Sleep5ms", 64, start), lambda: bench_handlers.Sleep5ms.done, m
        )
        out["b_sequential_events_per_s"] = round(seq)
        out["b_worker_c64_events_per_s"] = round(conc)
        out["b_speedup"] = round(conc / seq, 1)

        bench_handlers.Sleep5ms.done = 0
        ts, start = await prepare(
            client, "d", [{"_id": i, "pad": "x" * 200} for i in range(100_000)]
        )
        proc = psutil.Process()
        base = proc.memory_info().rss
        sup = Supervisor(settings(uri, "d", "Sleep5ms", 8, start))
        await sup.start()
        peak = base
        for _ in range(100):
            await asyncio.sleep(0.05)
            peak = max(peak, proc.memory_info().rss)
        await sup.shutdown()
        out["d_rss_before_mib"] = round(base / 2**20, 1)
        out["d_peak_rss_mib_backlog_100k"] = round(peak / 2**20, 1)
        out["d_handled_in_5s"] = bench_handlers.Sleep5ms.done
    finally:
        await client.close()
        emulator.terminate()
        emulator.wait(10)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
