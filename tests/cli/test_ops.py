"""Operator commands on the test bed: status, dead-letter list/replay/purge, checkpoint reset."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from changestream_worker.cli import ops
from changestream_worker.state.deadletters import DeadLetterStore
from changestream_worker.testing.factories import make_event, token_of

StateDb = AsyncDatabase[dict[str, Any]]
RECORDER = "tests.support.recorder:Recorder"


@pytest.fixture
async def env(mongo_uri: str) -> AsyncIterator[dict[str, Any]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    db, state = f"db_{uuid.uuid4().hex[:8]}", f"state_{uuid.uuid4().hex[:8]}"
    yield {"uri": mongo_uri, "db": db, "state_name": state, "state": client[state]}
    await client.drop_database(db)
    await client.drop_database(state)
    await client.close()


def settings(env: dict[str, Any], uri: str | None = None, **handler_options: Any) -> Any:
    mod = pytest.importorskip("changestream_worker.config.models")
    return mod.Settings.model_validate(
        {
            "mongodb": {"uri": uri or env["uri"], "database": env["db"]},
            "state": {"database": env["state_name"]},
            "http": {"enabled": False},
            "handlers": {"recorder": {"type": RECORDER, "options": handler_options}},
            "watchers": [
                {
                    "name": "items",
                    "collection": "items",
                    "handlers": ["recorder"],
                    "retry": {"attempts": 2, "initial_delay": "1ms", "max_delay": "2ms"},
                },
                {
                    "name": "orders",
                    "collection": "orders",
                    "handlers": ["recorder"],
                    "partitions": 2,
                },
            ],
        }
    )


async def park(state: StateDb, watcher: str, key: int) -> Any:
    now = datetime.now(UTC)
    event = make_event(key=key, doc={"_id": key, "seq": key}, seq=key)
    return await DeadLetterStore(state).add(
        watcher, "recorder", event, ValueError("x"), 1, now, now
    )


class TestCollectStatus:
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
        await state.watcher_status.insert_one(
            {"_id": "items", "state": "running", "reason": "", "instance": "pod-a", "updated": now}
        )
        await park(state, "items", 1)
        await park(state, "retired", 2)
        rows = await ops.collect_status(state, ["items", "other"], now=now)
        by_name = {r["watcher"]: r for r in rows}
        items = by_name["items"]
        assert items["state"] == "running" and items["lag_seconds"] == 90.0
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
        text = ops.render_status(rows)
        assert "items" in text and "1m30s" in text and "pod-a until" in text

    async def test_running_with_an_expired_lease_is_not_reported_running(
        self, env: dict[str, Any]
    ) -> None:
        """A process killed while running leaves a stale state; the expired lease gives it away."""
        state, now = env["state"], datetime.now(UTC)
        await state.leases.insert_one(
            {"_id": "items", "owner": "pod-a", "epoch": 1, "expires_at": now - timedelta(seconds=5)}
        )
        await state.watcher_status.insert_one({"_id": "items", "state": "running"})
        [row] = await ops.collect_status(state, ["items"], now=now)
        assert row["state"] == "unknown" and "expired" in row["reason"]
        assert row["lease"]["expired"] is True


class TestParseResetTime:
    def test_now_iso_and_bad_values(self) -> None:
        """``now`` asks the cluster; ISO times are UTC (naive ones too); others are refused."""
        assert ops.parse_reset_time("now") is None
        assert ops.parse_reset_time("2026-01-02T03:04:05Z") == datetime(
            2026, 1, 2, 3, 4, 5, tzinfo=UTC
        )
        assert ops.parse_reset_time("2026-01-02T03:04:05") == datetime(
            2026, 1, 2, 3, 4, 5, tzinfo=UTC
        )
        with pytest.raises(ops.OpsError, match="ISO-8601"):
            ops.parse_reset_time("yesterday")
        with pytest.raises(ops.OpsError, match="future"):
            ops.parse_reset_time("2999-01-01T00:00:00Z")


class TestCommands:
    async def test_status_json_lists_every_watcher_instance(
        self, env: dict[str, Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``status --json`` prints one row per watcher and partition."""
        assert await ops.status(settings(env), as_json=True) == 0
        rows = json.loads(capsys.readouterr().out)["watchers"]
        assert [r["watcher"] for r in rows] == ["items", "orders#0", "orders#1"]

    async def test_embedded_uri_is_refused(
        self, env: dict[str, Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An ``embedded://`` config has no state to inspect: exit 2 with a clear message."""
        assert await ops.status(settings(env, uri="embedded://"), as_json=False) == 2
        assert "embedded://" in capsys.readouterr().err

    async def test_checkpoint_reset_to_now_and_to_a_time(self, env: dict[str, Any]) -> None:
        """A reset leaves no token, only the cluster time the watcher starts at."""
        state = env["state"]
        await state.checkpoints.insert_one(
            {"_id": "items", "token": token_of(1), "epoch": 2, "snapshot": {"done": False}}
        )
        assert await ops.checkpoint_reset(settings(env), "items", "2026-01-02T03:04:05Z") == 0
        doc = await state.checkpoints.find_one({"_id": "items"})
        assert doc is not None and doc["token"] is None and "snapshot" not in doc
        assert doc["cluster_time"] == Timestamp(1767323045, 0) and doc["epoch"] == 2
        assert await ops.checkpoint_reset(settings(env), "orders", "now") == 0
        for name in ("orders#0", "orders#1"):
            doc = await state.checkpoints.find_one({"_id": name})
            assert doc is not None and doc["token"] is None
            assert isinstance(doc["cluster_time"], Timestamp)

    async def test_checkpoint_reset_of_unknown_watcher_exits_2(
        self, env: dict[str, Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unknown watcher name is a usage error naming the configured ones."""
        assert await ops.checkpoint_reset(settings(env), "nope", "now") == 2
        assert "items" in capsys.readouterr().err

    async def test_dlq_list_replay_purge(
        self, env: dict[str, Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """List shows the letters; replay removes those that now succeed; purge clears."""
        state = env["state"]
        await park(state, "items", 1)
        await park(state, "items", 2)
        await park(state, "orders#1", 3)
        assert await ops.dlq_list(settings(env), "items") == 0
        assert "2 dead letter(s)" in capsys.readouterr().out
        assert await ops.dlq_replay(settings(env, fail_keys=[2]), "items", None) == 1
        out = capsys.readouterr().out
        assert "replayed 1, failed 1" in out
        assert await state.handled.count_documents({"key": 1}) == 1
        assert await DeadLetterStore(state).count("items") == 1
        assert await ops.dlq_purge(settings(env), None) == 0
        assert "purged 2" in capsys.readouterr().out
