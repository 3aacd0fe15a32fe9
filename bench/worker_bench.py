"""Benchmark the worker against the emulator (a separate process, like a real server).

Each comparison interleaves its two sides and repeats them (``--reps``, default 5), then
prints medians. Rates count from the first event to the last on both sides (start-up
excluded); CPU µs per event is the process's CPU time over the same span.
(a) no-op handler vs a raw ``async for`` over the same stream, with the checkpoint writes
per 10,000 events; (b) a 5 ms handler at concurrency 64 over 1,000 keys vs the sequential
loop; (c) a batched no-op handler; (d) peak RSS of a worker process with a 100,000-event
backlog and a slow handler; (e) insert → handler start latency at 1,000 events/s; (f) the
raw loop with Motor beside PyMongo's async API.
``--hog`` runs (a) beside one busy process per core; ``--profile`` prints the top frames
of one no-op run (cProfile); ``--only w`` runs the no-op worker alone (for py-spy).
Run: python bench/worker_bench.py [--reps 5] [--hog] [--profile] [--only a,b,c,d,e,f]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_handlers  # beside this script: python puts the script's folder on sys.path
import psutil
from backlog import start_emulator
from pymongo import AsyncMongoClient

from changestream_worker.config.models import Settings
from changestream_worker.logs import configure_logging
from changestream_worker.service.supervisor import Supervisor

HERE = Path(__file__).resolve().parent
raw_cpu_us_per_event = 0.0  # of the last raw loop


def config(
    uri: str, db: str, handler: str, concurrency: int, start: datetime | str
) -> dict[str, Any]:
    return {
        "mongodb": {"uri": uri, "database": db},
        "state": {"database": f"{db}_state_{time.monotonic_ns()}"},
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
                "start_at": start if isinstance(start, str) else start.isoformat(),
                "batch_size": 1000,
            }
        ],
    }


async def run_worker(
    cfg: dict[str, Any],
    counter: Callable[[], int],
    n: int,
    first: Callable[[], float] | None = None,
) -> tuple[float, Any]:
    """Events/s from start (or, with ``first``, from the first event handled) to the n-th."""
    sup = Supervisor(Settings.model_validate(cfg))
    t0 = time.perf_counter()
    await sup.start()
    while counter() < n:  # noqa: ASYNC110 - a benchmark polls a counter, 1 ms is noise here
        await asyncio.sleep(0.001)
    elapsed = time.perf_counter() - (first() if first is not None else t0)
    sup.metrics.cpu_us_per_event = (  # meaningful for the no-op runs
        (time.process_time() - bench_handlers.NoOp.first_cpu) / (n - 1) * 1e6
    )
    await sup.shutdown()
    return (n - 1 if first is not None else n) / elapsed, sup.metrics


async def raw_loop(
    coll: Any, start: Any, n: int, handle: Callable[[Any], Any] | None, steady: bool = False
) -> float:
    """Events/s of a bare loop from opening (or, ``steady``, from the first event)."""
    global raw_cpu_us_per_event
    t0 = time.perf_counter()
    cpu = time.process_time()
    seen = 0
    async with await coll.watch(start_at_operation_time=start, batch_size=1000) as stream:
        async for change in stream:
            if steady and not seen:
                t0, cpu = time.perf_counter(), time.process_time()
            if handle is not None:
                await handle(change)
            seen += 1
            if seen >= n:
                break
    raw_cpu_us_per_event = (time.process_time() - cpu) / max(1, n - 1) * 1e6
    return (n - 1 if steady else n) / (time.perf_counter() - t0)


async def motor_loop(uri: str, db: str, start: Any, n: int) -> float | None:
    """The raw loop with Motor's client (``pip install -e '.[bench]'``), if installed."""
    try:
        from motor.motor_asyncio import AsyncIOMotorClient
    except ImportError:
        return None
    client = AsyncIOMotorClient(uri)
    seen, t0 = 0, time.perf_counter()
    async with client[db].items.watch(start_at_operation_time=start, batch_size=1000) as stream:
        async for _change in stream:
            if not seen:
                t0 = time.perf_counter()
            seen += 1
            if seen >= n:
                break
    client.close()
    return (n - 1) / (time.perf_counter() - t0)


async def bench_motor(client: Any, uri: str, reps: int, out: dict[str, Any]) -> None:
    n = 20_000
    ts, _ = await prepare(client, "f", [{"_id": i} for i in range(n)])
    motors, raws = [], []
    for _ in range(reps):
        rate = await motor_loop(uri, "f", ts, n)
        if rate is None:
            out["f_motor_raw_events_per_s"] = "motor not installed"
            return
        motors.append(rate)
        raws.append(await raw_loop(client.f.items, ts, n, None, steady=True))
    out["f_motor_raw_events_per_s"] = round(med(motors))
    out["f_pymongo_raw_events_per_s"] = round(med(raws))


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
    return start_ts, datetime.fromtimestamp(start_ts.time, UTC)


def med(values: list[float]) -> float:
    return statistics.median(values)


async def bench_noop(client: Any, uri: str, reps: int, out: dict[str, Any], key: str) -> None:
    n = 50_000
    ts, start = await prepare(client, key, [{"_id": i} for i in range(n)])
    raws, workers, writes, raw_cpu, worker_cpu = [], [], [], [], []
    for rep in range(reps):
        # alternate which side goes first, so drift in the machine's load hits both
        for side in ("raw", "worker") if rep % 2 == 0 else ("worker", "raw"):
            if side == "raw":
                raws.append(await raw_loop(client[key].items, ts, n, None, steady=True))
                raw_cpu.append(raw_cpu_us_per_event)
                continue
            bench_handlers.NoOp.done = 0
            rate, metrics = await run_worker(
                config(uri, key, "NoOp", 64, start),
                lambda: bench_handlers.NoOp.done,
                n,
                lambda: bench_handlers.NoOp.first,
            )
            workers.append(rate)
            worker_cpu.append(metrics.cpu_us_per_event)
            writes.append(metrics.checkpoint_writes_total.labels("bench")._value.get())
    out[f"{key}_raw_events_per_s"] = round(med(raws))
    out[f"{key}_worker_noop_events_per_s"] = round(med(workers))
    out[f"{key}_ratio"] = round(med([w / r for w, r in zip(workers, raws, strict=True)]), 2)
    out[f"{key}_ratio_of_medians"] = round(med(workers) / med(raws), 2)
    out[f"{key}_raw_cpu_us_per_event"] = round(med(raw_cpu), 1)
    out[f"{key}_worker_cpu_us_per_event"] = round(med(worker_cpu), 1)
    out[f"{key}_checkpoint_writes_per_10k"] = round(med(writes) * 10_000 / n, 1)


async def bench_speedup(client: Any, uri: str, reps: int, out: dict[str, Any]) -> None:
    keys = [{"_id": k} for k in range(1000)]
    ts, start = await prepare(client, "b", keys, updates=4)
    m = 5000

    async def five_ms(_: Any) -> None:
        await asyncio.sleep(0.005)

    seqs, concs = [], []
    for rep in range(reps):
        for side in ("seq", "conc") if rep % 2 == 0 else ("conc", "seq"):
            if side == "seq":
                seqs.append(await raw_loop(client.b.items, ts, 400, five_ms, steady=True))
                continue
            bench_handlers.Sleep5ms.done = 0
            rate, _ = await run_worker(
                config(uri, "b", "Sleep5ms", 64, start),
                lambda: bench_handlers.Sleep5ms.done,
                m,
                lambda: bench_handlers.Sleep5ms.first,
            )
            concs.append(rate)
    out["b_sequential_events_per_s"] = round(med(seqs))
    out["b_worker_c64_events_per_s"] = round(med(concs))
    out["b_speedup"] = round(med([c / s for c, s in zip(concs, seqs, strict=True)]), 1)


async def bench_batched(client: Any, uri: str, reps: int, out: dict[str, Any]) -> None:
    n = 20_000
    _, start = await prepare(client, "c", [{"_id": i} for i in range(n)])
    rates, sizes = [], []
    for _ in range(reps):
        bench_handlers.NoOpBatch.done = 0
        bench_handlers.NoOpBatch.sizes = []
        rate, _ = await run_worker(
            config(uri, "c", "NoOpBatch", 4, start),
            lambda: bench_handlers.NoOpBatch.done,
            n,
            lambda: bench_handlers.NoOpBatch.first,
        )
        rates.append(rate)
        sizes.append(med([float(s) for s in bench_handlers.NoOpBatch.sizes] or [0.0]))
    out["c_worker_batched_noop_events_per_s"] = round(med(rates))
    out["c_median_batch_size"] = med(sizes)


async def bench_rss(client: Any, uri: str, out: dict[str, Any]) -> None:
    _, start = await prepare(client, "d", [{"_id": i, "pad": "x" * 200} for i in range(100_000)])
    cfg = config(uri, "d", "Sleep5ms", 8, start)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "changestream_worker", "run", "-c", f.name],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    try:
        ps = psutil.Process(proc.pid)
        for _ in range(160):  # 8 s: startup, then the backlog pressing on the dispatcher
            await asyncio.sleep(0.05)
            peak = max(peak, ps.memory_info().rss)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
        os.unlink(f.name)
    out["d_peak_rss_mib_backlog_100k"] = round(peak / 2**20, 1)


async def bench_latency(client: Any, uri: str, out: dict[str, Any]) -> None:
    bench_handlers.Latency.samples = []
    _, start = await prepare(client, "e", [])
    sup = Supervisor(Settings.model_validate(config(uri, "e", "Latency", 64, start)))
    await sup.start()
    await asyncio.sleep(1.0)  # the stream is open before the first insert
    coll = client.e.items
    t_end = time.perf_counter() + 5.0
    i = 0
    next_at = time.perf_counter()
    while time.perf_counter() < t_end:
        # 10 documents every 10 ms = 1,000 events/s
        await coll.insert_many([{"_id": i + k, "t": time.time()} for k in range(10)])
        i += 10
        next_at += 0.01
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    deadline = time.perf_counter() + 60
    while bench_handlers.Latency.done < i and time.perf_counter() < deadline:  # noqa: ASYNC110 - polling a counter in a bench
        await asyncio.sleep(0.01)
    await sup.shutdown()
    s = sorted(bench_handlers.Latency.samples)
    out["e_latency_rate_events_per_s"] = round(i / 5.0)
    out["e_latency_handled"] = f"{bench_handlers.Latency.done}/{i}"
    out["e_latency_p50_ms"] = round(s[len(s) // 2] * 1000, 1)
    out["e_latency_p99_ms"] = round(s[int(len(s) * 0.99)] * 1000, 1)


async def worker_only(client: Any, uri: str, out: dict[str, Any]) -> None:
    n = 50_000
    _, start = await prepare(client, "w", [{"_id": i} for i in range(n)])
    bench_handlers.NoOp.done = 0
    cpu = time.process_time()
    rate, _ = await run_worker(
        config(uri, "w", "NoOp", 64, start),
        lambda: bench_handlers.NoOp.done,
        n,
        lambda: bench_handlers.NoOp.first,
    )
    out["w_worker_noop_events_per_s"] = round(rate)
    out["w_cpu_us_per_event"] = round((time.process_time() - cpu) / n * 1e6, 1)


async def profile(client: Any, uri: str, out: dict[str, Any]) -> None:
    n = 20_000
    _, start = await prepare(client, "p", [{"_id": i} for i in range(n)])
    bench_handlers.NoOp.done = 0
    prof = cProfile.Profile()
    prof.enable()
    await run_worker(config(uri, "p", "NoOp", 64, start), lambda: bench_handlers.NoOp.done, n)
    prof.disable()
    stats = pstats.Stats(prof)
    total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:15]  # type: ignore[attr-defined]
    out["profile_top_self_time"] = [
        f"{100 * v[2] / total:5.1f}%  {Path(k[0]).name}:{k[1]} {k[2]}" for k, v in rows
    ]


def hogs() -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--hog", action="store_true", help="also run (a) beside busy processes")
    parser.add_argument("--profile", action="store_true", help="top frames of a no-op run")
    parser.add_argument("--only", default="a,b,c,d,e,f", help="sections; w: the no-op worker alone")
    args = parser.parse_args()
    only = set(args.only.split(","))
    configure_logging("json", "warning", stream=sys.stderr)
    emulator, uri = start_emulator()
    # start times below have one-second resolution: begin in a later second than the
    # emulator's history, as a real deployment's oplog would be older than "now"
    await asyncio.sleep(1.1)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    out: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, load avg {os.getloadavg()[0]:.1f} at start",
        "reps": args.reps,
    }
    try:
        sections = {
            "a": lambda: bench_noop(client, uri, args.reps, out, "a"),
            "b": lambda: bench_speedup(client, uri, args.reps, out),
            "c": lambda: bench_batched(client, uri, args.reps, out),
            "d": lambda: bench_rss(client, uri, out),
            "e": lambda: bench_latency(client, uri, out),
            "f": lambda: bench_motor(client, uri, args.reps, out),
            "w": lambda: worker_only(client, uri, out),  # the no-op worker alone, for py-spy
        }
        for name, section in sections.items():
            if name in only:
                await section()
                print(json.dumps(out), file=sys.stderr, flush=True)  # progress, in case
        if args.hog:
            busy = hogs()
            try:
                await bench_noop(client, uri, args.reps, out, "hog")
            finally:
                for p in busy:
                    p.kill()
                    p.wait()
        if args.profile:
            await profile(client, uri, out)
    finally:
        await client.close()
        emulator.terminate()
        emulator.wait(10)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
