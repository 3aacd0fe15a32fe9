"""Operator commands in-process on the test bed: status, dead letters, checkpoint reset."""

from __future__ import annotations

import io
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
        assert await ops.checkpoint_reset(settings(env), "items", "2026-01-02T03:04:05Z", True) == 0
        doc = await state.checkpoints.find_one({"_id": "items"})
        assert doc is not None and doc["token"] is None and "snapshot" not in doc
        assert doc["cluster_time"] == Timestamp(1767323045, 0) and doc["epoch"] == 2
        assert await ops.checkpoint_reset(settings(env), "orders", "now", True) == 0
        for name in ("orders#0", "orders#1"):
            doc = await state.checkpoints.find_one({"_id": name})
            assert doc is not None and doc["token"] is None
            assert isinstance(doc["cluster_time"], Timestamp)

    async def test_checkpoint_reset_of_unknown_watcher_exits_2(
        self, env: dict[str, Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """An unknown watcher name is a usage error naming the configured ones."""
        assert await ops.checkpoint_reset(settings(env), "nope", "now", True) == 2
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


class TestConfirmation:
    @pytest.mark.parametrize(("answer", "code"), [("y\n", 0), ("n\n", 1), ("", 1)])
    async def test_reset_asks_unless_yes(
        self,
        env: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        answer: str,
        code: int,
    ) -> None:
        """Without --yes the reset asks; only "y" changes the checkpoint, no/EOF exits 1."""
        state = env["state"]
        await state.checkpoints.insert_one({"_id": "items", "token": token_of(1)})
        monkeypatch.setattr("sys.stdin", io.StringIO(answer))
        assert await ops.checkpoint_reset(settings(env), "items", "now", False) == code
        doc = await state.checkpoints.find_one({"_id": "items"})
        assert doc is not None and (doc["token"] is None) == (code == 0)
        out = capsys.readouterr()
        assert "Point the checkpoint of items at" in out.out
        assert ("aborted: no checkpoint changed" in out.err) == (code == 1)

    async def test_reset_warns_when_the_watcher_looks_running(
        self, env: dict[str, Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A live lease makes the reset warn that the owner will overwrite it."""
        await env["state"].leases.insert_one(
            {
                "_id": "items",
                "owner": "pod-b",
                "expires_at": datetime.now(UTC) + timedelta(seconds=60),
            }
        )
        assert await ops.checkpoint_reset(settings(env), "items", "now", True) == 0
        assert "items looks running (instance pod-b)" in capsys.readouterr().err
