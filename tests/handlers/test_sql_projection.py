"""sql_projection against real PostgreSQL, MariaDB and SQLite: a random history, then replays."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from typing import Any

import pytest
import structlog
from bson import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from changestream_worker import ChangeEvent, HandlerContext
from changestream_worker.handlers.sql_projection import SqlProjection, SqlProjectionOptions
from tests.support.harness import unique

URLS = {
    "postgresql": os.environ.get(
        "POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("MARIADB_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"),
    # a file in the test's tmp_path (filled in by the test)
    "sqlite": "sqlite+aiosqlite:///{tmp}/projection.db",
}


def history(n: int, keys: int, seed: int) -> tuple[list[ChangeEvent], dict[str, dict[str, Any]]]:
    """n random inserts/updates/deletes over `keys` documents, and the final collection."""
    rng = random.Random(seed)
    live: dict[str, dict[str, Any]] = {}
    events = []
    for i in range(n):
        key = f"k{rng.randrange(keys)}"
        ts = Timestamp(1_700_000_000 + i // 1000, i % 1000 + 1)
        if key in live and rng.random() < 0.2:
            op, doc = "delete", None
            del live[key]
        else:
            op = "update" if key in live else "insert"
            doc = {
                "_id": key,
                "name": f"n{rng.randrange(1000)}",
                "price": rng.randrange(10_000),
                "tags": {"i": i},
            }
            live[key] = doc
        raw: dict[str, Any] = {
            "_id": {"_data": f"82{i:026X}"},
            "operationType": op,
            "clusterTime": ts,
            "ns": {"db": "shop", "coll": "products"},
            "documentKey": {"_id": key},
        }
        if doc is not None:
            raw["fullDocument"] = doc
        events.append(ChangeEvent(raw))
    return events, live


@pytest.mark.parametrize("backend", sorted(URLS))
class TestSqlProjection:
    async def test_table_equals_collection_after_random_history_and_replays(
        self, backend: str, tmp_path: Path
    ) -> None:
        """5,000 random changes, then 1,000 earlier events replayed out of order: the live
        rows equal the collection exactly."""
        url = URLS[backend].format(tmp=tmp_path)
        probe = create_async_engine(url)
        try:
            async with probe.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means the service is not there
            await probe.dispose()
            pytest.skip(f"{backend} at {url} unreachable: {exc}")
        table = unique("products")
        handler = SqlProjection(
            SqlProjectionOptions(
                url=url,
                table=table,
                create_table=True,
                columns={
                    "id": "_id",
                    "name": "name",
                    "price": {"path": "price", "type": "integer"},
                    "tags": {"path": "tags", "type": "json"},
                },
            )
        )
        ctx = HandlerContext(
            client=None,
            database=None,
            state_database=None,  # type: ignore[arg-type]
            log=structlog.get_logger(),
            watcher="products",
            handler="sql",
        )
        await handler.start(ctx)
        events, live = history(5000, 300, seed=11)
        replay = random.Random(5).sample(events, 1000)
        try:
            for start in range(0, len(events), 100):
                await asyncio.gather(*(handler.handle(e, ctx) for e in events[start : start + 100]))
            await asyncio.gather(*(handler.handle(e, ctx) for e in replay))
            async with probe.connect() as conn:
                rows = (
                    await conn.execute(
                        text(f"SELECT id, name, price FROM {table} WHERE NOT deleted")
                    )
                ).all()
                tombstones = (
                    await conn.execute(text(f"SELECT COUNT(*) FROM {table} WHERE deleted"))
                ).scalar_one()
        finally:
            await handler.stop()
            async with probe.begin() as conn:
                await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            await probe.dispose()
        assert {r[0]: (r[1], r[2]) for r in rows} == {
            k: (d["name"], d["price"]) for k, d in live.items()
        }
        deleted = {e.document_id for e in events} - live.keys()
        assert deleted, "the history was meant to delete some documents"
        assert tombstones == len(deleted)
