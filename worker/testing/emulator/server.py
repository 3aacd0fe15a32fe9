"""The emulator's TCP server: connections, topology and step-downs (commands: dispatch.py)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from bson import Int64, ObjectId

from changestream_worker.testing.emulator import cmd_admin, wire
from changestream_worker.testing.emulator.cursors import Cursors
from changestream_worker.testing.emulator.dispatch import Dispatcher
from changestream_worker.testing.emulator.failpoints import FailPoints
from changestream_worker.testing.emulator.retrywrites import CloseConnection
from changestream_worker.testing.emulator.sessions import Sessions
from changestream_worker.testing.emulator.store import Store

log = structlog.get_logger("emulator")


class Connection:
    """One client connection."""

    def __init__(self, cid: int, writer: asyncio.StreamWriter, member: int = 0) -> None:
        self.id = cid
        self.writer = writer
        self.member = member  # 0: the primary's port; 1…: a secondary's
        self.app_name: str | None = None
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"


class ReplicaSetEmulator:
    """A replica set ``rs0`` speaking the MongoDB wire protocol, data in memory.

    Args:
        host: address to listen on.
        port: TCP port of the primary; 0 picks a free one.
        set_name: the replica set's name.
        secondaries: members that are always secondaries, each on a free port; they share
            the primary's data (replication is instant), answer reads that allow a
            secondary and refuse writes.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, set_name: str = "rs0", secondaries: int = 0
    ) -> None:
        self.host, self.port, self.set_name = host, port, set_name
        self.secondaries = secondaries
        self.secondary_ports: list[int] = []
        self._secondary_servers: list[asyncio.base_events.Server] = []
        self.member_ids = [ObjectId() for _ in range(secondaries)]
        self.store: Store
        self.connections: dict[int, Connection] = {}
        self.total_connections = 0
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.process_id = ObjectId()
        self.topology_counter = 0
        self.term = 1
        self.primary_at = 0.0  # monotonic time when a stepped-down node is primary again
        self.started = time.monotonic()

    # ---- lifecycle --------------------------------------------------------------
    async def start(self) -> ReplicaSetEmulator:
        self.store = Store()
        self.sessions = Sessions(self.store)
        self.cursors = Cursors()
        self.failpoints = FailPoints()
        self.dispatcher = Dispatcher(self)
        self._topology_changed = asyncio.Event()
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=wire.MAX_MESSAGE_SIZE
        )
        self.port = self._server.sockets[0].getsockname()[1]
        for member in range(1, self.secondaries + 1):
            srv = await asyncio.start_server(
                functools.partial(self._serve, member=member),
                self.host,
                0,
                limit=wire.MAX_MESSAGE_SIZE,
            )
            self._secondary_servers.append(srv)
            self.secondary_ports.append(srv.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        for srv in self._secondary_servers:
            srv.close()
        self._secondary_servers.clear()
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections.values()):
                conn.writer.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> ReplicaSetEmulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start_in_thread(self) -> ReplicaSetEmulator:
        """Serve from a background thread with its own event loop (for sync tests, fixtures)."""
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            # gather() below looks the loop up: with no task left it has no other way to find it
            asyncio.set_event_loop(loop)
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="mongo-emulator", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def addresses(self) -> list[str]:
        """Every member's address, the primary's first."""
        return [self.address, *(f"{self.host}:{p}" for p in self.secondary_ports)]

    @property
    def uri(self) -> str:
        return f"mongodb://{','.join(self.addresses)}/?replicaSet={self.set_name}"

    def writable(self, conn: Any) -> bool:
        """Whether the member ``conn`` is connected to is the primary now."""
        return getattr(conn, "member", 0) == 0 and self.is_primary

    # ---- topology ---------------------------------------------------------------
    @property
    def is_primary(self) -> bool:
        if self.primary_at and time.monotonic() >= self.primary_at:
            self.primary_at = 0.0
            self.term += 1  # won the election that follows the step-down period
            self._bump_topology()
        return not self.primary_at

    @property
    def election_id(self) -> ObjectId:
        return ObjectId(f"7fffffff{self.term:016x}")

    def _bump_topology(self) -> None:
        self.topology_counter += 1
        self._topology_changed.set()
        self._topology_changed = asyncio.Event()

    async def wait_topology_change(self, timeout: float) -> None:
        event = self._topology_changed
        deadline = time.monotonic() + timeout
        while not event.is_set() and time.monotonic() < deadline:
            # step-down periods end by time alone: look again at least every 100 ms
            wait = min(0.1 if self.primary_at else timeout, deadline - time.monotonic())
            try:
                await asyncio.wait_for(event.wait(), max(wait, 0))
            except TimeoutError:
                _ = self.is_primary

    def step_down(self, secs: float, keep: Connection) -> None:
        self.primary_at = time.monotonic() + secs
        self._bump_topology()
        for conn in list(self.connections.values()):
            if conn is not keep:
                conn.writer.close()

    def hello_reply(self, legacy: bool, conn: Connection, hello_ok: bool) -> dict[str, Any]:
        member = conn.member
        primary = self.writable(conn)
        last = self.store.clock.last
        now = datetime.now(UTC)
        reply: dict[str, Any] = {
            "topologyVersion": {
                "processId": self.member_ids[member - 1] if member else self.process_id,
                "counter": Int64(self.topology_counter),
            },
            "hosts": self.addresses,
            "setName": self.set_name,
            "setVersion": 1,
            ("ismaster" if legacy else "isWritablePrimary"): primary,
            "secondary": not primary,
        }
        if self.is_primary:
            reply["primary"] = self.address
        if not member:
            reply["electionId"] = self.election_id
        reply.update(
            {
                "me": self.addresses[member],
                "lastWrite": {
                    "opTime": {"ts": last, "t": Int64(self.term)},
                    "lastWriteDate": now,
                    "majorityOpTime": {"ts": last, "t": Int64(self.term)},
                    "majorityWriteDate": now,
                },
                "maxBsonObjectSize": 16 * 1024 * 1024,
                "maxMessageSizeBytes": wire.MAX_MESSAGE_SIZE,
                "maxWriteBatchSize": 100000,
                "localTime": now,
                "logicalSessionTimeoutMinutes": 30,
                "connectionId": conn.id,
                "minWireVersion": 0,
                "maxWireVersion": cmd_admin.MAX_WIRE_VERSION,
                "readOnly": False,
            }
        )
        if hello_ok:
            reply["helloOk"] = True
        reply["ok"] = 1.0
        return reply

    # ---- connections ------------------------------------------------------------
    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, member: int = 0
    ) -> None:
        conn = Connection(next(self._ids), writer, member)
        self.connections[conn.id] = conn
        self.total_connections += 1
        try:
            while True:
                header = await reader.readexactly(wire.HEADER.size)
                length, request_id, _, op_code = wire.parse_header(header)
                body = await reader.readexactly(length - wire.HEADER.size)
                request = wire.parse_body(request_id, op_code, body)
                reply = await self.dispatcher.execute(conn, request)
                if request.more_to_come:
                    continue
                if op_code == wire.OP_QUERY:
                    writer.write(wire.encode_reply(next(self._ids), request_id, reply))
                else:
                    writer.write(wire.encode_msg(next(self._ids), request_id, reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, CloseConnection):
            pass
        except asyncio.CancelledError:
            pass  # the server is stopping: this connection's task is the top of its stack
        except wire.ProtocolError as exc:
            log.warning("emulator_bad_message", connection=conn.id, error=str(exc))
        finally:
            self.connections.pop(conn.id, None)
            writer.close()
