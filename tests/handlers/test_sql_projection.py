"""sql_projection against real PostgreSQL, MariaDB and SQLite: a random history, then replays."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog
from bson import Timestamp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from changestream_worker import BatchItemFailures, ChangeEvent, HandlerContext, PermanentError
from changestream_worker.handlers.sql_projection import SqlProjection, SqlProjectionOptions
from changestream_worker.testing.factories import make_event
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


@dataclass
class Projection:
    handler: SqlProjection
    ctx: HandlerContext
    table: str
    probe: Any

    async def live(self) -> dict[str, tuple[Any, Any]]:
        async with self.probe.connect() as conn:
            rows = (
                await conn.execute(
                    text(f"SELECT id, name, price FROM {self.table} WHERE NOT deleted")
                )
            ).all()
        return {r[0]: (r[1], r[2]) for r in rows}

    async def tombstones(self) -> int:
        async with self.probe.connect() as conn:
            n = await conn.execute(text(f"SELECT COUNT(*) FROM {self.table} WHERE deleted"))
            return int(n.scalar_one())


@pytest.fixture(params=sorted(URLS))
async def projection(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Projection]:
    """A started sql_projection into a fresh table of each backend; dropped afterwards."""
    backend = request.param
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
    try:
        yield Projection(handler, ctx, table, probe)
    finally:
        await handler.stop()
        async with probe.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await probe.dispose()


def expected(live: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, Any]]:
    return {k: (d["name"], d["price"]) for k, d in live.items()}


class TestSqlProjection:
    async def test_table_equals_collection_after_random_history_and_replays(
        self, projection: Projection
    ) -> None:
        """2,000 random changes one at a time, then 500 earlier events replayed out of
        order: the live rows equal the collection exactly."""
        p = projection
        events, live = history(2000, 150, seed=11)
        replay = random.Random(5).sample(events, 500)
        for start in range(0, len(events), 100):
            await asyncio.gather(*(p.handler.handle(e, p.ctx) for e in events[start : start + 100]))
        await asyncio.gather(*(p.handler.handle(e, p.ctx) for e in replay))
        assert await p.live() == expected(live)
        deleted = {e.document_id for e in events} - live.keys()
        assert deleted, "the history was meant to delete some documents"
        assert await p.tombstones() == len(deleted)


class TestSqlProjectionBatches:
    async def test_batches_leave_the_same_table_as_one_event_at_a_time(
        self, projection: Projection
    ) -> None:
        """The same random history in batches of 100 (a document changing several times in
        a batch), then the replays as batches: live rows and tombstones equal the collection."""
        p = projection
        events, live = history(5000, 300, seed=12)
        replay = random.Random(6).sample(events, 1000)
        for start in range(0, len(events), 100):
            await p.handler.handle_batch(events[start : start + 100], p.ctx)
        for start in range(0, len(replay), 250):
            await p.handler.handle_batch(replay[start : start + 250], p.ctx)
        assert await p.live() == expected(live)
        assert await p.tombstones() == len({e.document_id for e in events} - live.keys())

    async def test_newest_change_of_a_document_in_a_batch_wins(
        self, projection: Projection
    ) -> None:
        """Three updates of one document in one batch, the newest first in the batch: the
        row holds the newest (highest cluster time), not the last in the list."""
        p = projection
        older = [
            make_event("update", "a", {"_id": "a", "name": f"v{i}", "price": i}, seq=i)
            for i in (1, 2)
        ]
        newest = make_event("update", "a", {"_id": "a", "name": "v3", "price": 3}, seq=3)
        await p.handler.handle_batch([newest, *older], p.ctx)
        assert await p.live() == {"a": ("v3", 3)}

    async def test_events_without_a_row_are_reported_by_index(self, projection: Projection) -> None:
        """A drop and an update without fullDocument in a batch: reported per index (skip,
        permanent); the other events' rows are written."""
        p = projection
        batch = [
            make_event("insert", "a", {"_id": "a", "name": "x", "price": 1}, seq=10),
            make_event("drop", seq=11),
            make_event("update", "b", seq=12),
            make_event("insert", "c", {"_id": "c", "name": "y", "price": 2}, seq=13),
        ]
        with pytest.raises(BatchItemFailures) as info:
            await p.handler.handle_batch(batch, p.ctx)
        assert sorted(info.value.failures) == [1, 2]
        assert isinstance(info.value.failures[2], PermanentError)
        assert await p.live() == {"a": ("x", 1), "c": ("y", 2)}

    async def test_a_row_the_database_refuses_fails_the_batch_permanently(
        self, projection: Projection
    ) -> None:
        """A price beyond BIGINT in one event: the batch raises PermanentError (so the
        dispatcher bisects to it) and writes nothing of it."""
        p = projection
        batch = [
            make_event("insert", "a", {"_id": "a", "name": "x", "price": 1}, seq=20),
            make_event("insert", "b", {"_id": "b", "name": "y", "price": 2**70}, seq=21),
        ]
        with pytest.raises(PermanentError):
            await p.handler.handle_batch(batch, p.ctx)
        assert await p.live() == {}
        await p.handler.handle_batch(batch[:1], p.ctx)
        assert await p.live() == {"a": ("x", 1)}
