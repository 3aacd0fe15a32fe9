"""The emulator's TCP server: connections, the command pipeline, topology and step-downs."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import UTC, datetime
from typing import Any

import structlog
from bson import Binary, Int64, ObjectId
from pymongo.errors import OperationFailure

from changestream_worker.testing.emulator import cmd_admin, cmd_crud, cmd_ddl, registry, wire
from changestream_worker.testing.emulator.context import Ctx
from changestream_worker.testing.emulator.cursors import Cursors
from changestream_worker.testing.emulator.errors import (
    RESUMABLE_CHANGE_STREAM,
    RETRYABLE_WRITE,
    CommandError,
)
from changestream_worker.testing.emulator.failpoints import FailPoints
from changestream_worker.testing.emulator.sessions import Sessions
from changestream_worker.testing.emulator.store import Store

log = structlog.get_logger("emulator")
# Commands a stepped-down node still answers.
ANY_STATE = {
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "buildInfo",
    "buildinfo",
    "getParameter",
    "serverStatus",
    "endSessions",
    "replSetGetStatus",
    "configureFailPoint",
    "killCursors",
    "whatsmyuri",
    "connectionStatus",
    "getCmdLineOpts",
    "abortTransaction",
    "killAllSessions",
    "emulatorTruncateOplog",
}
TXN_END = {"commitTransaction", "abortTransaction"}
# Every command the server answers: the command modules, listed here and nowhere else.
COMMANDS = registry.table(cmd_admin, cmd_crud, cmd_ddl)
RETRYABLE_COMMANDS = {"insert", "update", "delete", "findAndModify", "findandmodify"}


def _from_engine(exc: OperationFailure) -> CommandError:
    """The query engine's error, with the code MongoDB gives the same mistake."""
    msg = str(exc).split(", full error")[0]
    if msg.startswith("unknown operator"):
        return CommandError(2, msg)
    if msg.startswith("Unrecognized expression"):
        return CommandError(168, msg)
    return CommandError(int(exc.code or 2), msg)


class CloseConnection(Exception):
    """The fail point asked for the connection to be closed without a reply."""


class Connection:
    """One client connection."""

    def __init__(self, cid: int, writer: asyncio.StreamWriter) -> None:
        self.id = cid
        self.writer = writer
        self.app_name: str | None = None
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer = f"{peer[0]}:{peer[1]}"


class ReplicaSetEmulator:
    """A one-member replica set ``rs0`` speaking the MongoDB wire protocol, data in memory.

    Args:
        host: address to listen on.
        port: TCP port; 0 picks a free one.
        set_name: the replica set's name.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, set_name: str = "rs0") -> None:
        self.host, self.port, self.set_name = host, port, set_name
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
        self._topology_changed = asyncio.Event()
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, limit=wire.MAX_MESSAGE_SIZE
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
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
    def uri(self) -> str:
        return f"mongodb://{self.address}/?replicaSet={self.set_name}"

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
        primary = self.is_primary
        last = self.store.clock.last
        now = datetime.now(UTC)
        reply: dict[str, Any] = {
            "topologyVersion": {
                "processId": self.process_id,
                "counter": Int64(self.topology_counter),
            },
            "hosts": [self.address],
            "setName": self.set_name,
            "setVersion": 1,
            ("ismaster" if legacy else "isWritablePrimary"): primary,
            "secondary": not primary,
        }
        if primary:
            reply["primary"] = self.address
        reply.update(
            {
                "me": self.address,
                "electionId": self.election_id,
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
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(next(self._ids), writer)
        self.connections[conn.id] = conn
        self.total_connections += 1
        try:
            while True:
                header = await reader.readexactly(wire.HEADER.size)
                length, request_id, _, op_code = wire.parse_header(header)
                body = await reader.readexactly(length - wire.HEADER.size)
                request = wire.parse_body(request_id, op_code, body)
                reply = await self._execute(conn, request)
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

    async def _execute(self, conn: Connection, request: wire.Request) -> dict[str, Any]:
        cmd = request.command
        if not cmd:
            return CommandError(59, "no such command: ''").reply()
        name = next(iter(cmd))
        if request.op_code == wire.OP_QUERY:
            db = request.collection.split(".", 1)[0]
            if name not in ("hello", "isMaster", "ismaster"):
                return CommandError(
                    352,
                    f"Unsupported OP_QUERY command: {name}. The client "
                    "driver may require an upgrade.",
                ).reply()
        else:
            db = str(cmd.get("$db", "admin"))
        try:
            reply = await self._run(conn, name, db, cmd)
        except CommandError as exc:
            self._label(exc, name, cmd)
            reply = exc.reply()
        except (CloseConnection, asyncio.CancelledError):
            raise
        except OperationFailure as exc:  # raised by mongomock for bad queries and expressions
            self._label(exc_ := _from_engine(exc), name, cmd)
            reply = exc_.reply()
        except NotImplementedError as exc:
            reply = CommandError(115, f"the emulator does not support this: {exc}").reply()
        except Exception as exc:  # a bug of the emulator answers one command, not the socket
            log.exception("emulator_internal_error", command=name)
            reply = CommandError(
                1, f"emulator internal error in '{name}': {type(exc).__name__}: {exc}"
            ).reply()
        reply["$clusterTime"] = {
            "clusterTime": self.store.clock.current(),
            "signature": {"hash": Binary(b"\x00" * 20), "keyId": Int64(0)},
        }
        reply["operationTime"] = self.store.clock.current()
        return reply

    @staticmethod
    def _label(exc: CommandError, name: str, cmd: dict[str, Any]) -> None:
        if exc.labels:
            return
        in_txn = cmd.get("autocommit") is not None
        if exc.code in RETRYABLE_WRITE and (
            (name in RETRYABLE_COMMANDS and "txnNumber" in cmd and not in_txn)
            or name in ("commitTransaction", "abortTransaction")
        ):
            exc.labels.append("RetryableWriteError")
        if exc.code in RESUMABLE_CHANGE_STREAM and name == "getMore":
            exc.labels.append("ResumableChangeStreamError")
        if (
            in_txn
            and name not in ("commitTransaction", "abortTransaction")
            and exc.code in RETRYABLE_WRITE
        ):
            exc.labels.append("TransientTransactionError")

    async def _run(
        self, conn: Connection, name: str, db: str, cmd: dict[str, Any]
    ) -> dict[str, Any]:
        handler = COMMANDS.get(name)
        if handler is None:
            raise CommandError(59, f"no such command: '{name}'")
        fail = self.failpoints.fail_command(name, conn.app_name)
        if fail is not None:
            if fail.get("blockConnection"):
                await asyncio.sleep(float(fail.get("blockTimeMS", 0)) / 1000)
            if fail.get("closeConnection"):
                raise CloseConnection
            if "errorCode" in fail:
                raise CommandError(
                    int(fail["errorCode"]),
                    "Failing command via 'failCommand' failpoint",
                    fail.get("errorLabels"),
                    extra=fail.get("errorExtraInfo"),
                )
        if name not in ANY_STATE and not self.is_primary:
            writes = name in COMMANDS.writes or name == "commitTransaction"
            if writes or cmd.get("autocommit") is not None:
                raise CommandError(10107, "not primary")
            raise CommandError(13435, "not primary and secondaryOk=false")
        sessions = self.sessions
        retry_key = None
        if name in RETRYABLE_COMMANDS and "txnNumber" in cmd and cmd.get("autocommit") is None:
            st = sessions.state(cmd.get("lsid") or {})
            number = int(cmd["txnNumber"])
            if number in st.retry_cache:
                return dict(st.retry_cache[number])  # a retried write is applied once
            if number < st.txn_number:
                raise CommandError(
                    225,
                    f"Retryable write with txnNumber {number} is prohibited "
                    f"on session because a newer retryable write with "
                    f"txnNumber {st.txn_number} has already started",
                )
            st.txn_number = number
            retry_key = (st, number)
        ws = sessions.live if name in TXN_END else sessions.workspace(cmd)
        ctx = Ctx(self, conn, db, ws)
        reply = await handler(ctx, cmd)
        if retry_key is not None:
            st, number = retry_key
            st.retry_cache = {number: dict(reply)}
        if fail is not None and "writeConcernError" in fail:
            reply["writeConcernError"] = dict(fail["writeConcernError"])
        return reply
