"""The worker in-process against the test bed: resume, order, checkpoints, fault policies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bson import Timestamp
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from tests.support.harness import config_dict, eventually, running, settings_of, unique, watcher


@pytest.fixture
async def env(mongo_uri: str) -> Any:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    db, state = unique("db"), unique("state")
    yield {
        "uri": mongo_uri,
        "client": client,
        "db": client[db],
        "state": client[state],
        "db_name": db,
        "state_name": state,
    }
    await client.drop_database(db)
    await client.drop_database(state)
    await client.close()


def cfg(env: dict[str, Any], *watchers: dict[str, Any], **over: Any) -> Any:
    return settings_of(
        config_dict(
            env["uri"], env["db_name"], env["state_name"], list(watchers) or [watcher()], **over
        )
    )


async def handled(env: dict[str, Any], **query: Any) -> list[dict[str, Any]]:
    return await env["state"].handled.find(query).sort("_id", 1).to_list()


async def count_handled(env: dict[str, Any], n: int) -> bool:
    return await env["state"].handled.count_documents({}) >= n


class TestResume:
    async def test_clean_restart_resumes_without_loss_or_duplicates(
        self, env: dict[str, Any]
    ) -> None:
        """Events written while the worker is down are handled once after restart."""
        settings = cfg(env)
        async with running(settings):
            await started(env)
            await env["db"].items.insert_many([{"seq": i} for i in range(20)])
            await eventually(lambda: count_handled(env, 20), what="first 20 events")
        await env["db"].items.insert_many([{"seq": i} for i in range(20, 30)])
        async with running(settings):
            await eventually(lambda: count_handled(env, 30), what="30 events")
            await asyncio.sleep(0.3)
        seqs = [d["seq"] for d in await handled(env)]
        assert sorted(seqs) == list(range(30))

    async def test_checkpoint_document_has_token_time_and_count(self, env: dict[str, Any]) -> None:
        """The checkpoint names the watcher and carries token, cluster time and progress."""
        async with running(cfg(env)):
            await started(env)
            await env["db"].items.insert_many([{"seq": i} for i in range(5)])
            await eventually(lambda: count_handled(env, 5), what="5 events")
        cp = await env["state"].checkpoints.find_one({"_id": "items"})
        assert cp is not None
        assert cp["token"]["_data"]
        assert isinstance(cp["cluster_time"], Timestamp)


class TestOrdering:
    async def test_same_key_in_stream_order_under_concurrency(self, env: dict[str, Any]) -> None:
        """Events of one document are handled in stream order while keys run concurrently."""
        handlers = {
            "recorder": {"type": "tests.support.recorder:Recorder", "options": {"delay": 0.002}}
        }
        settings = cfg(env, watcher(concurrency=8, full_document="updateLookup"), handlers=handlers)
        async with running(settings):
            await started(env)
            await env["db"].items.insert_many([{"_id": k, "seq": 0} for k in range(10)])
            for step in range(1, 15):
                for k in range(10):
                    await env["db"].items.update_one({"_id": k}, {"$set": {"seq": step}})
            await eventually(lambda: count_handled(env, 150), what="150 events")
        by_key: dict[int, list[int]] = {}
        for d in await handled(env):
            by_key.setdefault(d["key"], []).append(d["ts"])
        assert len(by_key) == 10
        for key, times in by_key.items():
            assert times == sorted(times), f"key {key} handled out of order"


class TestCheckpoints:
    async def test_quiet_stream_checkpoint_advances(self, env: dict[str, Any]) -> None:
        """With no events on the watched collection the checkpoint still moves forward."""
        async with running(cfg(env)):
            await eventually(lambda: _has_checkpoint(env), what="first checkpoint")
            first = (await env["state"].checkpoints.find_one({"_id": "items"}))["cluster_time"]
            await env["db"].elsewhere.insert_one({"x": 1})  # moves cluster time, not our stream
            later = await env["db"].elsewhere.find_one({"x": 1})
            assert later is not None

            async def moved() -> bool:
                cp = await env["state"].checkpoints.find_one({"_id": "items"})
                return cp is not None and cp["cluster_time"] > first

            await eventually(moved, what="checkpoint past the idle position")
        assert await env["state"].handled.count_documents({}) == 0


async def started(env: dict[str, Any], name: str = "items") -> None:
    """Wait until the watcher has stored its starting point (its first act)."""

    async def stored() -> bool:
        return await env["state"].checkpoints.find_one({"_id": name}) is not None

    await eventually(stored, what=f"watcher {name!r} to store its starting point")


async def _has_checkpoint(env: dict[str, Any]) -> bool:
    return await env["state"].checkpoints.find_one({"_id": "items"}) is not None


class TestFailures:
    async def test_permanent_failure_goes_to_dead_letters_and_lane_continues(
        self, env: dict[str, Any]
    ) -> None:
        """A refused event lands in dead_letters with its reason; later events still run."""
        handlers = {
            "recorder": {"type": "tests.support.recorder:Recorder", "options": {"fail_keys": [3]}}
        }
        async with running(cfg(env, handlers=handlers)):
            await started(env)
            await env["db"].items.insert_many([{"_id": i, "seq": i} for i in range(6)])
            await eventually(lambda: count_handled(env, 5), what="the 5 good events")
            await eventually(lambda: _dead(env, 1), what="one dead letter")
        dl = await env["state"].dead_letters.find_one({})
        assert dl["watcher"] == "items"
        assert dl["handler"] == "recorder"
        assert "refusing key 3" in dl["error_message"]
        assert dl["attempts"] == 1
        assert sorted(d["key"] for d in await handled(env)) == [0, 1, 2, 4, 5]


async def _dead(env: dict[str, Any], n: int) -> bool:
    return await env["state"].dead_letters.count_documents({}) >= n


class TestInvalidate:
    async def test_stop_policy_stops_on_drop_and_stays_ready(self, env: dict[str, Any]) -> None:
        """on_invalidate=stop: the watcher stops on purpose; readiness stays true."""
        async with running(cfg(env, watcher(on_invalidate="stop"))) as sup:
            await started(env)
            await env["db"].items.insert_one({"seq": 1})
            await eventually(lambda: count_handled(env, 1), what="one event")
            await env["db"].items.drop()

            async def stopped() -> bool:
                return sup.watcher_states()["items"]["state"] == "stopped_by_policy"

            await eventually(stopped, what="stopped_by_policy")
            ready, detail = sup.readiness()
            assert ready, detail

    async def test_restart_policy_follows_the_new_collection(self, env: dict[str, Any]) -> None:
        """on_invalidate=restart: after a drop, events of the recreated collection arrive."""
        async with running(cfg(env, watcher(on_invalidate="restart", operations=["insert"]))):
            await started(env)
            await env["db"].items.insert_one({"seq": 1})
            await eventually(lambda: count_handled(env, 1), what="first event")
            await env["db"].items.drop()
            await asyncio.sleep(0.3)
            await env["db"].items.insert_one({"seq": 2})
            await eventually(lambda: count_handled(env, 2), what="event after the drop")
        assert sorted(d["seq"] for d in await handled(env)) == [1, 2]


@pytest.mark.emulator_only
class TestHistoryLost:
    async def _lose_history(self, env: dict[str, Any], settings: Any) -> None:
        async with running(settings):
            await started(env)
            await env["db"].items.insert_one({"seq": 0})
            await eventually(lambda: count_handled(env, 1), what="first event")
        await env["db"].items.insert_many([{"seq": i} for i in range(1, 4)])
        now = (await env["client"].admin.command("ping"))["operationTime"]
        await env["client"].admin.command(
            {"emulatorTruncateOplog": 1, "before": Timestamp(now.time, now.inc + 1)}
        )

    async def test_fail_policy_stops_not_ready(self, env: dict[str, Any]) -> None:
        """on_history_lost=fail: the watcher stops with an error log and is not ready."""
        settings = cfg(env, watcher(on_history_lost="fail"))
        await self._lose_history(env, settings)
        with capture_logs() as logs:
            async with running(settings) as sup:

                async def failed() -> bool:
                    return sup.watcher_states()["items"]["state"] == "failed"

                await eventually(failed, what="failed state")
                assert not sup.readiness()[0]
        assert any(e["event"] == "watcher_history_lost" and e["log_level"] == "error" for e in logs)

    async def test_restart_now_logs_the_gap_and_continues(self, env: dict[str, Any]) -> None:
        """on_history_lost=restart_now: a data_gap error names the interval, new events flow."""
        settings = cfg(env, watcher(on_history_lost="restart_now"))
        await self._lose_history(env, settings)
        with capture_logs() as logs:
            async with running(settings) as sup:

                async def reopened() -> bool:
                    w = sup.slots[0].watcher
                    return (
                        any(e["event"] == "data_gap" for e in logs)
                        and w is not None
                        and w.state == "running"
                    )

                await eventually(reopened, what="the stream reopened after the gap")
                await env["db"].items.insert_one({"seq": 99})
                await eventually(lambda: _seq_handled(env, 99), what="event after the gap")
        gap = [e for e in logs if e["event"] == "data_gap"]
        assert gap and gap[0]["lost_from"] and gap[0]["lost_until"]

    async def test_snapshot_policy_redelivers_existing_documents(self, env: dict[str, Any]) -> None:
        """on_history_lost=snapshot: every current document is delivered, flagged snapshot."""
        settings = cfg(env, watcher(on_history_lost="snapshot"))
        await self._lose_history(env, settings)
        async with running(settings):
            await eventually(lambda: _snapshots(env, 4), what="4 snapshot events")
        snap = await handled(env, snapshot=True)
        assert sorted(d["seq"] for d in snap) == [0, 1, 2, 3]


async def _seq_handled(env: dict[str, Any], seq: int) -> bool:
    return await env["state"].handled.find_one({"seq": seq}) is not None


async def _snapshots(env: dict[str, Any], n: int) -> bool:
    return await env["state"].handled.count_documents({"snapshot": True}) >= n


class TestSnapshotStart:
    async def test_start_at_snapshot_delivers_existing_then_streams(
        self, env: dict[str, Any]
    ) -> None:
        """start_at=snapshot: existing documents first (flagged), then live changes."""
        await env["db"].items.insert_many([{"_id": i, "seq": i} for i in range(50)])
        async with running(cfg(env, watcher(start_at="snapshot"))):
            await eventually(lambda: _snapshots(env, 50), what="50 snapshot events")

            async def scan_done() -> bool:
                cp = await env["state"].checkpoints.find_one({"_id": "items"})
                return bool(cp and (cp.get("snapshot") or {}).get("done"))

            # a write during the scan may be seen twice (scan and stream): wait for its end
            await eventually(scan_done, what="the end of the scan")
            await env["db"].items.insert_one({"_id": 50, "seq": 50})
            await eventually(lambda: _seq_handled(env, 50), what="live event")
        docs = await handled(env)
        assert sorted(d["seq"] for d in docs if d["snapshot"]) == list(range(50))
        assert [d["seq"] for d in docs if not d["snapshot"]] == [50]
        cp = await env["state"].checkpoints.find_one({"_id": "items"})
        assert cp["snapshot"]["done"] is True


class TestBackpressure:
    async def test_reading_stops_while_handlers_are_busy(self, env: dict[str, Any]) -> None:
        """With 100,000 pending events and a slow handler, the watcher holds at most
        concurrency + one batch of events: memory does not grow with the backlog."""
        handlers = {
            "recorder": {"type": "tests.support.recorder:Recorder", "options": {"delay": 0.05}}
        }
        settings = cfg(env, watcher(concurrency=8, batch_size=500), handlers=handlers)
        async with running(settings):
            await eventually(lambda: _has_checkpoint(env), what="first checkpoint")
        await env["db"].items.insert_many([{"seq": i} for i in range(100_000)])
        async with running(settings) as sup:
            peak = 0
            for _ in range(30):
                await asyncio.sleep(0.1)
                w = sup.slots[0].watcher
                if w is not None:
                    peak = max(peak, w.dispatcher.in_flight)
            received = sup.metrics.events_received_total.labels("items", "insert")._value.get()
        assert 0 < peak <= 8
        # read-ahead is bounded: what is in flight plus the one event waiting to be admitted
        assert received <= 8 + 1 + await env["state"].handled.count_documents({})


@pytest.mark.emulator_only
class TestHeadroom:
    async def test_headroom_shrinks_when_the_oplog_is_truncated(self, env: dict[str, Any]) -> None:
        """oplog_headroom_seconds is the checkpoint's distance from the oplog's first entry;
        truncating the oplog past the checkpoint drives it negative."""
        from changestream_worker.service.supervisor import Supervisor

        settings = cfg(env)
        sup = Supervisor(settings)
        sup.headroom_interval = 0.1
        await sup.start()
        try:
            await eventually(lambda: _has_checkpoint(env), what="first checkpoint")
            gauge = sup.metrics.oplog_headroom_seconds.labels(watcher="items")
            await asyncio.sleep(0.3)
            assert gauge._value.get() >= 0
        finally:
            await sup.shutdown()
        # history vanishes while the worker is down: its checkpoint is now off the oplog
        now = (await env["client"].admin.command("ping"))["operationTime"]
        await env["client"].admin.command(
            {"emulatorTruncateOplog": 1, "before": Timestamp(now.time + 5, 0)}
        )
        sup = Supervisor(settings)
        sup.headroom_interval = 0.1
        await sup.start()
        try:
            gauge = sup.metrics.oplog_headroom_seconds.labels(watcher="items")

            async def negative() -> bool:
                return gauge._value.get() < 0

            await eventually(negative, what="negative headroom")
        finally:
            await sup.shutdown()


class TestObservability:
    async def test_lag_is_idle_aware_and_heartbeat_moves(self, env: dict[str, Any]) -> None:
        """After events, an idle stream reports zero lag and a fresh heartbeat."""
        async with running(cfg(env)) as sup:
            await started(env)
            await env["db"].items.insert_many([{"seq": i} for i in range(5)])
            await eventually(lambda: count_handled(env, 5), what="5 events")
            lag = sup.metrics.lag_seconds.labels(watcher="items")
            beat = sup.metrics.last_batch_timestamp_seconds.labels(watcher="items")
            first_beat = beat._value.get()
            await asyncio.sleep(0.4)  # several empty batches (max_await_time is 100 ms)
            assert lag._value.get() == 0.0
            assert beat._value.get() > first_beat
            received = sup.metrics.events_received_total.labels(watcher="items", operation="insert")
            assert received._value.get() == 5

    @pytest.mark.emulator_only
    async def test_readyz_flips_when_a_watcher_stops_on_policy(self, env: dict[str, Any]) -> None:
        """/readyz is 200 while the watcher runs and 503 once history loss stops it."""
        import aiohttp

        settings = cfg(env, watcher(on_history_lost="fail"), http={"host": "127.0.0.1", "port": 0})
        async with aiohttp.ClientSession() as http:
            async with running(settings) as sup:
                await eventually(lambda: _has_checkpoint(env), what="first checkpoint")

                async def ready() -> bool:  # the stream opens just after the start point
                    async with http.get(f"http://127.0.0.1:{sup.http.port}/readyz") as r:
                        return r.status == 200

                await eventually(ready, what="/readyz to answer 200 while running")
            now = (await env["client"].admin.command("ping"))["operationTime"]
            await env["client"].admin.command(
                {"emulatorTruncateOplog": 1, "before": Timestamp(now.time + 5, 0)}
            )
            async with running(settings) as sup:
                url = f"http://127.0.0.1:{sup.http.port}/readyz"

                async def failed() -> bool:
                    async with http.get(url) as r:
                        body = await r.json()
                        return r.status == 503 and body["watchers"]["items"]["state"] == "failed"

                await eventually(failed, what="/readyz to answer 503 for a failed watcher")
