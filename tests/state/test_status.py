"""The status read-model: watcher_status joined with checkpoints, leases and dead letters."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.state.status import StatusStore, looks_running, read_status
from changestream_worker.testing.factories import make_event, token_of
from tests.support.harness import config_dict, eventually, running, settings_of, watcher

StateDb = AsyncDatabase[dict[str, Any]]


@pytest.fixture
async def env(mongo_uri: str) -> AsyncIterator[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    db, state = f"db_{uuid.uuid4().hex[:8]}", f"state_{uuid.uuid4().hex[:8]}"
    yield {
        "uri": mongo_uri,
        "client": client,
        "db": db,
        "state_name": state,
        "state": client[state],
    }
    await client.drop_database(db)
    await client.drop_database(state)
    await client.close()


async def park(state: StateDb, watcher: str, key: int) -> Any:
    now = datetime.now(UTC)
    event = make_event(key=key, doc={"_id": key, "seq": key}, seq=key)
    return await DeadLetterStore(state).add(
        watcher, "recorder", event, ValueError("x"), 1, now, now
    )


class TestReadStatus:
    async def test_row_has_checkpoint_lag_dead_letters_lease_and_state(
        self, env: dict[str, Any]
    ) -> None:
        """Each watcher's row joins its checkpoint, dead letters, lease and reported state."""
        state, now = env["state"], datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
        wall = now - timedelta(seconds=90)
        await state.checkpoints.insert_one(
            {
                "_id": "items",
                "token": token_of(1),
                "cluster_time": Timestamp(1, 1),
                "wall_time": wall,
                "updated": now,
                "events_handled": 12,
                "epoch": 3,
            }
        )
        await state.leases.insert_one(
            {
                "_id": "items",
                "owner": "pod-a",
                "epoch": 3,
                "expires_at": now + timedelta(seconds=10),
            }
        )
        await StatusStore(state).publish(
            "items", state="running", reason="", instance="pod-a", in_flight=7
        )
        await park(state, "items", 1)
        await park(state, "retired", 2)
        rows = await read_status(state, ["items", "other"], now=now)
        by_name = {r["watcher"]: r for r in rows}
        items = by_name["items"]
        assert items["state"] == "running" and items["lag_seconds"] == 90.0
        assert items["in_flight"] == 7 and items["backlog"] is None
        assert items["dead_letters"] == 1 and items["checkpoint"]["events_handled"] == 12
        assert items["checkpoint"]["wall_time"] == "2026-03-01T11:58:30Z"
        assert items["lease"] == {
            "owner": "pod-a",
            "epoch": 3,
            "expires_at": "2026-03-01T12:00:10Z",
            "expired": False,
        }
        assert by_name["other"]["state"] == "unknown" and by_name["other"]["checkpoint"] is None
        assert by_name["retired"]["configured"] is False
        assert by_name["retired"]["dead_letters"] == 1
        json.dumps(rows)  # JSON-ready as is

    async def test_running_with_an_expired_lease_is_not_reported_running(
        self, env: dict[str, Any]
    ) -> None:
        """A process killed while running leaves a stale state; the expired lease gives it away."""
        state, now = env["state"], datetime.now(UTC)
        await state.leases.insert_one(
            {"_id": "items", "owner": "pod-a", "epoch": 1, "expires_at": now - timedelta(seconds=5)}
        )
        await state.watcher_status.insert_one({"_id": "items", "state": "running"})
        [row] = await read_status(state, ["items"], now=now)
        assert row["state"] == "unknown" and "expired" in row["reason"]
        assert row["lease"]["expired"] is True

    async def test_reported_figures_pass_through(self, env: dict[str, Any]) -> None:
        """Backlog and lease wait, when a supervisor reports them, appear in the row."""
        await StatusStore(env["state"]).publish(
            "items", state="standby", lease_wait_s=12.5, backlog=40
        )
        [row] = await read_status(env["state"], ["items"])
        assert row["state"] == "standby" and row["lease_wait_s"] == 12.5 and row["backlog"] == 40


class TestLooksRunning:
    async def test_live_lease_or_running_state(self, env: dict[str, Any]) -> None:
        """A live lease names its owner; a running report names its instance; else None."""
        state, now = env["state"], datetime.now(UTC)
        assert await looks_running(state, "items", now) is None
        await StatusStore(state).publish("items", state="running", instance="pod-x")
        assert await looks_running(state, "items", now) == "pod-x"
        await state.leases.insert_one(
            {"_id": "items", "owner": "pod-y", "expires_at": now + timedelta(seconds=30)}
        )
        assert await looks_running(state, "items", now) == "pod-y"
        await StatusStore(state).publish("items", state="stopped_by_policy")
        assert await looks_running(state, "items", now + timedelta(seconds=60)) is None


class TestSupervisorReports:
    async def test_in_flight_of_a_running_watcher_is_refreshed(self, env: dict[str, Any]) -> None:
        """While a slow handler works, the supervisor's status report shows events in flight."""
        cfg = config_dict(
            env["uri"],
            env["db"],
            env["state_name"],
            [watcher()],
            handlers={
                "recorder": {"type": "tests.support.recorder:Recorder", "options": {"delay": 3}}
            },
        )
        async with running(settings_of(cfg)) as sup:
            sup.status_interval = 0.1
            state = env["state"]

            async def started() -> bool:
                return await state.checkpoints.count_documents({"_id": "items"}) == 1

            await eventually(started, what="the watcher's starting point")
            await env["client"][env["db"]].items.insert_many([{"_id": i} for i in range(5)])

            async def busy() -> bool:
                [row] = await read_status(state, ["items"])
                return row["state"] == "running" and row["in_flight"] == 5

            await eventually(busy, what="5 events in flight in watcher_status")
            sup.request_stop()
            await asyncio.sleep(0)
