"""Shared fixtures: one MongoDB replica set per test session (real, container or emulator)."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

Doc = dict[str, Any]
MakeDb = Callable[[], Awaitable[AsyncDatabase[Doc]]]
# How long a container may take to start and elect itself primary.
CONTAINER_START_TIMEOUT = 90.0


def _docker_answers() -> bool:
    """True when testcontainers is installed and a Docker engine answers a ping."""
    try:
        import docker  # type: ignore[import-untyped,unused-ignore]
        import testcontainers.core.container  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    # A failed docker.from_env() leaves its socket to the garbage collector; collect it here
    # so the ResourceWarning (an error under our filterwarnings) cannot land in a later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env()
        except Exception:  # any failure to reach an engine means "no Docker here"
            gc.collect()
            return False
        try:
            client.ping()
        except Exception:
            return False
        finally:
            client.close()
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + CONTAINER_START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(PyMongoError):
            if check():
                return
        time.sleep(0.25)
    raise RuntimeError(f"mongo container: timed out waiting for {what}")


@contextlib.contextmanager
def _container_replica_set() -> Iterator[str]:
    """A one-member `mongo:7` replica set `rs0` in a container, initiated and primary."""
    from testcontainers.core.container import DockerContainer

    # The same port inside and outside, so the member's own address in the replica-set
    # config is also the address clients on this machine use.
    port = _free_port()
    image = os.environ.get("MONGODB_IMAGE", "mongo:7")
    args = f"--replSet rs0 --bind_ip_all --port {port} --setParameter enableTestCommands=1"
    with DockerContainer(image).with_command(args).with_bind_ports(port, port) as box:
        host = box.get_container_host_ip()
        direct: MongoClient[Doc] = MongoClient(
            host, port, directConnection=True, serverSelectionTimeoutMS=1000
        )
        try:
            _wait_for(lambda: bool(direct.admin.command("ping")["ok"]), "mongod to answer")
            config = {"_id": "rs0", "members": [{"_id": 0, "host": f"{host}:{port}"}]}
            direct.admin.command({"replSetInitiate": config})
            _wait_for(
                lambda: bool(direct.admin.command("hello").get("isWritablePrimary")),
                "the member to become primary",
            )
        finally:
            direct.close()
        yield f"mongodb://{host}:{port}/?replicaSet=rs0"


@pytest.fixture(scope="session")
def _replica_set() -> Iterator[tuple[str, str]]:
    """(uri, backend) of the session's replica set, started on first use."""
    if uri := os.environ.get("MONGODB_URI"):
        yield uri, "mongodb"
        return
    if _docker_answers():
        with _container_replica_set() as uri:
            yield uri, "mongodb"
        return
    from changestream_worker.testing.emulator import ReplicaSetEmulator

    rs = ReplicaSetEmulator(port=0)
    rs.start_in_thread()
    try:
        yield rs.uri, "emulator"
    finally:
        rs.stop_thread()


@pytest.fixture(scope="session")
def mongo_uri(_replica_set: tuple[str, str]) -> str:
    """A replica set's URI: MONGODB_URI, else a mongo:7 container, else the emulator."""
    return _replica_set[0]


@pytest.fixture(scope="session")
def backend(_replica_set: tuple[str, str]) -> str:
    """Which kind of server `mongo_uri` points at: "mongodb" or "emulator"."""
    return _replica_set[1]


@pytest.fixture(autouse=True)
def _emulator_only(request: pytest.FixtureRequest) -> None:
    # Looked up lazily so tests that never touch MongoDB never start a server.
    if request.node.get_closest_marker("emulator_only") is None:
        return
    if request.getfixturevalue("backend") != "emulator":
        pytest.skip("needs the emulator (e.g. on-demand oplog truncation)")


@pytest.fixture
async def client(mongo_uri: str) -> AsyncIterator[AsyncMongoClient[Doc]]:
    """An async client on the session's replica set, closed afterwards."""
    c: AsyncMongoClient[Doc] = AsyncMongoClient(mongo_uri, tz_aware=True)
    yield c
    await c.close()


@pytest.fixture
def sync_client(mongo_uri: str) -> Iterator[MongoClient[Doc]]:
    """A synchronous client on the session's replica set, closed afterwards."""
    c: MongoClient[Doc] = MongoClient(mongo_uri, tz_aware=True)
    yield c
    c.close()


@pytest.fixture
async def make_db(client: AsyncMongoClient[Doc]) -> AsyncIterator[MakeDb]:
    """A factory of fresh, uniquely named databases; every one is dropped afterwards."""
    names: list[str] = []

    async def make() -> AsyncDatabase[Doc]:
        name = f"t_{uuid.uuid4().hex[:12]}"
        names.append(name)
        return client[name]

    yield make
    for name in names:
        await client.drop_database(name)


@pytest.fixture
async def db(make_db: MakeDb) -> AsyncDatabase[Doc]:
    """A fresh, uniquely named database, dropped afterwards."""
    return await make_db()
