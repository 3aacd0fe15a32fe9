"""Backlog estimates from the oplog, and the observer's lease waits, gauges and status fields."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Timestamp
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from structlog.testing import capture_logs

from changestream_worker.config.models import Settings, WatcherSettings
from changestream_worker.metrics import Metrics
from changestream_worker.service.backlog import measure_backlog, namespace_filter, oplog_last
from changestream_worker.service.observer import Observer
from changestream_worker.state.checkpoints import Checkpoint, MongoCheckpointStore
from changestream_worker.stream.watcher import Watcher
from tests.conftest import MakeDb

Doc = dict[str, Any]


@dataclass
class Slot:
    name: str
    ws: WatcherSettings
    state: str = "standby"
    watcher: Watcher | None = None


def settings(db: str, state: str, leases: bool = True) -> Settings:
    return Settings.model_validate(
        {
            "mongodb": {"uri": "mongodb://localhost/?replicaSet=rs0", "database": db},
            "state": {"database": state},
            "leases": {"enabled": leases, "ttl": "6s"},
            "handlers": {"rec": {"type": "tests.support.recorder:Recorder"}},
            "watchers": [{"name": "items", "collection": "items", "handlers": ["rec"]}],
        }
    )


def sample(registry: CollectorRegistry, name: str) -> float | None:
    return registry.get_sample_value(f"changestream_worker_{name}", {"watcher": "items"})


class TestMeasureBacklog:
    async def test_counts_the_namespace_after_the_position(
        self, client: AsyncMongoClient[Doc], db: AsyncDatabase[Doc]
    ) -> None:
        """Entries of the watched collection after the position are counted, others not;
        nothing after the newest entry means 0 events and 0 seconds."""
        await db.other.insert_one({"_id": 0})
        since = await oplog_last(client)
        assert since is not None
        await db.items.insert_many([{"_id": i} for i in range(5)])
        await db.other.insert_many([{"_id": i} for i in range(1, 4)])
        items = await measure_backlog(client, since, namespace_filter(db.name, "items"))
        whole = await measure_backlog(client, since, namespace_filter(db.name, None))
        end = await oplog_last(client)
        assert end is not None
        caught_up = await measure_backlog(client, end, namespace_filter(db.name, "items"))
        assert (items.events, items.capped) == (5, False)
        assert whole.events == 8
        assert items.seconds >= 0 and items.since == since
        assert (caught_up.events, caught_up.seconds) == (0, 0.0)

    async def test_cap(self, client: AsyncMongoClient[Doc], db: AsyncDatabase[Doc]) -> None:
        """Past the cap the estimate says 'at least cap'."""
        since = await oplog_last(client)
        assert since is not None
        await db.items.insert_many([{"_id": i} for i in range(10)])
        got = await measure_backlog(client, since, namespace_filter(db.name, "items"), cap=4)
        assert (got.events, got.capped) == (4, True)
        assert got.detail()["events_capped"] is True


class TestObserver:
    async def _observer(
        self, client: AsyncMongoClient[Doc], make_db: MakeDb, slot: Slot | None = None
    ) -> tuple[Observer, Slot, AsyncDatabase[Doc], AsyncDatabase[Doc], CollectorRegistry]:
        data, state = await make_db(), await make_db()
        s = settings(data.name, state.name)
        slot = slot or Slot("items", s.watchers[0])
        registry = CollectorRegistry()
        store = MongoCheckpointStore(state)
        obs = Observer(client, s, "me", lambda: [slot], Metrics(registry), store)
        return obs, slot, data, state, registry

    async def test_silent_owner_shows_a_wait_and_the_backlog(
        self, client: AsyncMongoClient[Doc], make_db: MakeDb
    ) -> None:
        """A standby whose owner stopped renewing reports the wait (logged once), the backlog
        since the stored checkpoint, gauges, and the status document's fields."""
        obs, _slot, data, state, registry = await self._observer(client, make_db)
        since = await oplog_last(client)
        await MongoCheckpointStore(state).save("items", Checkpoint(None, cluster_time=since))
        await data.items.insert_many([{"_id": i} for i in range(7)])
        now = datetime.now(UTC)
        await state.leases.insert_one(
            {
                "_id": "items",
                "owner": "dead",
                "epoch": 3,
                # silent for longer than ttl/2, and far from expiry even on a loaded machine
                "renewed_at": now - timedelta(seconds=10),
                "expires_at": now + timedelta(seconds=30),
            }
        )
        with capture_logs() as logs:
            await obs.observe()
            await obs.observe()
        detail = obs.detail("items")
        doc = await state.watcher_status.find_one({"_id": "items"})
        assert detail["lease_wait"]["owner"] == "dead" and detail["lease_wait"]["epoch"] == 3
        assert 0 < detail["lease_wait"]["remaining_s"] <= 30
        assert detail["backlog"]["events"] == 7
        assert [e["event"] for e in logs] == ["lease_takeover_waiting"]
        assert doc is not None and doc["takeover"]["owner"] == "dead"
        assert doc["backlog"] == 7 and doc["backlog_detail"]["events"] == 7
        assert doc["lease_wait_s"] == detail["lease_wait"]["remaining_s"]
        assert doc["observed_by"] == "me"
        assert sample(registry, "backlog_events") == 7
        assert 0 < (sample(registry, "lease_wait_seconds") or 0) <= 30

    async def test_live_owner_standby_reports_nothing(
        self, client: AsyncMongoClient[Doc], make_db: MakeDb
    ) -> None:
        """A standby of a renewing owner measures no backlog, exports no backlog series and
        leaves the status document to the owner."""
        obs, _slot, _data, state, registry = await self._observer(client, make_db)
        await MongoCheckpointStore(state).save(
            "items", Checkpoint(None, cluster_time=await oplog_last(client))
        )
        now = datetime.now(UTC)
        await state.leases.insert_one(
            {
                "_id": "items",
                "owner": "alive",
                "epoch": 1,
                "renewed_at": now,
                "expires_at": now + timedelta(seconds=6),
            }
        )
        await obs.observe()
        assert obs.detail("items") == {"backlog": None, "lease_wait": None}
        assert sample(registry, "backlog_events") is None
        assert sample(registry, "lease_wait_seconds") == 0.0
        assert await state.watcher_status.find_one({"_id": "items"}) is None

    async def test_owner_reports_and_clears_the_takeover(
        self, client: AsyncMongoClient[Doc], make_db: MakeDb
    ) -> None:
        """The lease holder writes its backlog and takeover: null, so a finished takeover's
        fields are cleared from status."""
        obs, slot, _data, state, registry = await self._observer(client, make_db)
        slot.state = "running"  # a running slot holds its lease
        await state.watcher_status.insert_one({"_id": "items", "takeover": {"owner": "dead"}})
        await MongoCheckpointStore(state).save(
            "items",
            Checkpoint(None, cluster_time=Timestamp(int(datetime.now(UTC).timestamp()) - 60, 0)),
        )
        await obs.observe()
        doc = await state.watcher_status.find_one({"_id": "items"})
        assert doc is not None and doc["takeover"] is None
        assert doc["backlog"] == 0 and doc["backlog_seconds"] == 0
        assert doc["lease_wait_s"] is None
        assert sample(registry, "backlog_events") == 0
