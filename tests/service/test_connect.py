"""Waiting for MongoDB at start and noticing its loss later, against real sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from changestream_worker.service.connect import (
    Reachability,
    StartupTimeout,
    wait_for_mongodb,
    watch_connection,
)
from changestream_worker.testing.emulator import ReplicaSetEmulator
from tests.e2e.netcut import NetCut, free_port

FAST = {"probe_timeout": 0.3, "initial_delay": 0.05, "max_delay": 0.2}


def client_for(uri: str, reach: Reachability) -> AsyncMongoClient[dict[str, Any]]:
    return AsyncMongoClient(uri, event_listeners=[reach])


def warnings(
    logs: list[dict[str, Any]], event: str = "mongodb_unreachable"
) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


class TestWaitForMongodb:
    async def test_waits_until_the_server_appears(self) -> None:
        """Nothing listens on the port at first: one warning per attempt, then True once an
        emulator starts there."""
        port = free_port()
        uri = f"mongodb://127.0.0.1:{port}/?replicaSet=rs0"
        reach = Reachability()
        client = client_for(uri, reach)
        rs = ReplicaSetEmulator(port=port)

        async def start_later() -> None:
            await asyncio.sleep(1.5)
            await rs.start()

        starter = asyncio.create_task(start_later())
        try:
            with capture_logs() as logs:
                ok = await wait_for_mongodb(client, uri, reach, asyncio.Event(), **FAST)
            assert ok is True
            assert reach.reachable and reach.detail() == {"reachable": True}
            tries = warnings(logs)
            assert len(tries) >= 2
            assert [t["attempt"] for t in tries] == list(range(1, len(tries) + 1))
            assert "Connect call failed" in tries[0]["error"]
            assert all(0 < t["retry_in_s"] <= 0.3 for t in tries)  # max_delay + jitter bound
            assert warnings(logs, "mongodb_reachable")[0]["attempts"] == len(tries) + 1
        finally:
            await starter
            await client.close()
            await rs.stop()

    async def test_startup_timeout_is_one_masked_line(self) -> None:
        """A refused port past startup_timeout raises StartupTimeout: one line, password masked."""
        uri = f"mongodb://app:s3cret@127.0.0.1:{free_port()}/?replicaSet=rs0"
        reach = Reachability()
        client = client_for(uri, reach)
        started = time.monotonic()
        try:
            with capture_logs() as logs, pytest.raises(StartupTimeout) as info:
                await wait_for_mongodb(client, uri, reach, asyncio.Event(), 1.0, **FAST)
        finally:
            await client.close()
        message = str(info.value)
        assert time.monotonic() - started < 3.0
        assert "\n" not in message and "s3cret" not in message
        assert "app:***@127.0.0.1" in message and "startup_timeout" in message
        assert warnings(logs) and all("s3cret" not in t["mongodb"] for t in warnings(logs))
        assert reach.detail()["reachable"] is False and reach.detail()["reason"]

    async def test_stop_ends_the_wait(self) -> None:
        """A shutdown request during the wait returns False at once, without an error."""
        uri = f"mongodb://127.0.0.1:{free_port()}/?replicaSet=rs0"
        reach = Reachability()
        client = client_for(uri, reach)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.5, stop.set)
        started = time.monotonic()
        try:
            ok = await wait_for_mongodb(client, uri, reach, stop, probe_timeout=5.0)
        finally:
            await client.close()
        assert ok is False
        assert time.monotonic() - started < 2.0

    async def test_wrong_replica_set_name_says_so(self) -> None:
        """A replicaSet option naming another set is reported as such, with a hint."""
        rs = await ReplicaSetEmulator(port=0, set_name="rs0").start()
        uri = f"mongodb://{rs.address}/?replicaSet=not_rs0"
        reach = Reachability()
        client = client_for(uri, reach)
        try:
            with pytest.raises(StartupTimeout) as info:
                await wait_for_mongodb(client, uri, reach, asyncio.Event(), 0.8, **FAST)
        finally:
            await client.close()
            await rs.stop()
        assert 'replica set name "not_rs0"' in str(info.value)
        assert "check the replicaSet option" in str(info.value)


class TestWatchConnection:
    async def test_loss_and_return_are_seen(self) -> None:
        """A cut link flips reachability with its reason, probes warn per attempt, and the
        return is logged once MongoDB answers again."""
        rs = await ReplicaSetEmulator(port=0).start()
        host, port = rs.address.rsplit(":", 1)
        reach = Reachability()
        stop = asyncio.Event()
        with NetCut(host, int(port)) as net:
            # fast heartbeats, so that the driver notices the cut and the return quickly
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                net.uri, event_listeners=[reach], heartbeatFrequencyMS=500
            )
            try:
                with capture_logs() as logs:
                    assert await wait_for_mongodb(client, net.uri, reach, stop, **FAST)
                    watch = asyncio.create_task(
                        watch_connection(client, net.uri, reach, stop, **FAST)
                    )
                    await asyncio.to_thread(net.cut)
                    await _until(lambda: not reach.reachable, 10)
                    await _until(lambda: bool(warnings(logs)), 10)
                    detail = reach.detail()
                    await asyncio.to_thread(net.restore)
                    await _until(lambda: bool(warnings(logs, "mongodb_reachable_again")), 15)
                    stop.set()
                    await watch
            finally:
                await client.close()
                await rs.stop()
        assert detail["reachable"] is False and detail["reason"]
        assert len(warnings(logs, "mongodb_connection_lost")) == 1
        assert reach.reachable
        assert warnings(logs, "mongodb_reachable_again")[0]["unreachable_for_s"] > 0


async def _until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)
