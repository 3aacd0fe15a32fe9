"""sql_projection into PostgreSQL from a 20,000-insert backlog: one upsert per change
(``handle``) vs one multi-row upsert per batch (``handle_batch``), interleaved, 5 runs each,
medians; the two final tables must be identical. Prints one JSON document.
Run: python bench/sql_batch.py   (POSTGRES_URL, default the local test database)
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import uuid
from typing import Any

import backlog  # beside this script: python puts the script's folder on sys.path
from pymongo import AsyncMongoClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from changestream_worker import Handler
from changestream_worker.handlers.sql_projection import SqlProjection

URL = os.environ.get("POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
N = 20_000
REPS = int(os.environ.get("BENCH_REPS", "5"))


class PerEventSqlProjection(SqlProjection):
    """sql_projection as it was: the dispatcher hands it one event at a time."""

    handle_batch = Handler.handle_batch  # takes_batches() is False again


def handler(kind: str, table: str) -> dict[str, Any]:
    return {
        "type": "sql_batch:PerEventSqlProjection" if kind == "per_event" else "sql_projection",
        "options": {
            "url": URL,
            "table": table,
            "create_table": True,
            "columns": {
                "id": "_id",
                "name": "name",
                "price": {"path": "price", "type": "integer"},
            },
        },
    }


async def main() -> None:
    emulator, uri = backlog.start_emulator()
    await asyncio.sleep(1.1)  # start times have one-second resolution
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    engine = create_async_engine(URL)
    rates: dict[str, list[float]] = {"per_event": [], "batched": []}
    tables: dict[str, list[Any]] = {}
    identical = True
    try:
        start = await backlog.backlog(client, "shop", N)
        for rep in range(REPS):
            for kind in rates:
                table = f"bench_{kind}_{uuid.uuid4().hex[:8]}"

                async def done(t: str = table) -> bool:
                    try:
                        async with engine.connect() as conn:
                            n = (await conn.execute(text(f"SELECT COUNT(*) FROM {t}"))).scalar()
                    except Exception:  # the table is created by the handler's start
                        return False
                    return bool(n is not None and n >= N)

                cfg = backlog.settings(uri, "shop", f"{kind}{rep}", handler(kind, table), start)
                seconds = await backlog.drain(cfg, done)
                rates[kind].append(N / seconds)
                async with engine.begin() as conn:
                    rows = await conn.execute(
                        text(f"SELECT id, name, price, deleted, source_ts FROM {table} ORDER BY id")
                    )
                    final = [tuple(r) for r in rows]
                    identical = identical and tables.setdefault("first", final) == final
                    await conn.execute(text(f"DROP TABLE {table}"))
                print(f"rep {rep} {kind}: {N / seconds:,.0f} rows/s", file=sys.stderr)
    finally:
        await engine.dispose()
        await client.close()
        emulator.terminate()
        emulator.wait(10)
    per_event, batched = backlog.median(rates["per_event"]), backlog.median(rates["batched"])
    out = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "backlog": N,
        "per_event_rows_per_s": round(per_event),
        "batched_rows_per_s": round(batched),
        "speedup": round(batched / per_event, 1),
        "identical_final_tables": identical and len(tables["first"]) == N,
        "runs": {k: [round(v) for v in vs] for k, vs in rates.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
