"""Shared fixtures: one MongoDB replica set per test session (real, container or emulator)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient


def _container_uri() -> Iterator[str] | None:
    """A `mongo:7` replica set in a container, when testcontainers and a Docker engine exist."""
    try:
        import docker  # type: ignore[import-untyped]
        from testcontainers.mongodb import MongoDbContainer  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        docker.from_env().ping()
    except Exception:  # no engine answering: fall back to the emulator
        return None

    def run() -> Iterator[str]:
        image = os.environ.get("MONGODB_IMAGE", "mongo:7")
        with MongoDbContainer(image).with_command("--replSet rs0 --bind_ip_all") as box:
            host, port = box.get_container_host_ip(), box.get_exposed_port(27017)
            direct: MongoClient[dict[str, Any]] = MongoClient(
                host, int(port), directConnection=True
            )
            direct.admin.command(
                {
                    "replSetInitiate": {
                        "_id": "rs0",
                        "members": [{"_id": 0, "host": f"{host}:{port}"}],
                    }
                }
            )
            direct.close()
            yield f"mongodb://{host}:{port}/?replicaSet=rs0"

    return run()


@pytest.fixture(scope="session")
def backend() -> str:
    """Which kind of server `mongo_uri` points at: "mongodb" or "emulator"."""
    return "mongodb" if os.environ.get("MONGODB_URI") else "emulator"


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A replica set's URI: MONGODB_URI, else a mongo:7 container, else the emulator."""
    if uri := os.environ.get("MONGODB_URI"):
        yield uri
        return
    container = _container_uri()
    if container is not None:
        yield from container
        return
    from worker.testing.emulator import ReplicaSetEmulator

    rs = ReplicaSetEmulator(port=0).start_in_thread()
    try:
        yield rs.uri
    finally:
        rs.stop_thread()


@pytest.fixture(autouse=True)
def _emulator_only(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("emulator_only") and os.environ.get("MONGODB_URI"):
        pytest.skip("needs the emulator (e.g. on-demand oplog truncation)")


@pytest.fixture
async def client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """An async client on the session's replica set."""
    c: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield c
    await c.close()


@pytest.fixture
def sync_client(mongo_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    """A synchronous client on the session's replica set."""
    c: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    yield c
    c.close()


@pytest.fixture
async def db(client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[Any]:
    """A fresh, uniquely named database, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield client[name]
    await client.drop_database(name)
