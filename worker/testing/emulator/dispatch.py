"""The command pipeline: fail points, primary checks, retryable writes, transactions, labels.

Everything that wraps a command handler lives here, so handlers only do their own work.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from bson import Binary, Int64
from pymongo.errors import OperationFailure

from changestream_worker.testing.emulator import (
    cmd_admin,
    cmd_aggregate,
    cmd_crud,
    cmd_ddl,
    cmd_diag,
    cmd_find,
    cmd_list,
    registry,
    wire,
)
from changestream_worker.testing.emulator.context import ClientConnection, Ctx, ServerView
from changestream_worker.testing.emulator.errors import CommandError
from changestream_worker.testing.emulator.labels import TXN_END, server_labels
from changestream_worker.testing.emulator.retrywrites import (
    FAIL_POINT,
    RETRYABLE,
    CloseConnection,
    record_for,
    run_statements,
)
from changestream_worker.testing.emulator.sessions import Transaction, Workspace

log = structlog.get_logger("emulator")
# Every command the server answers: the command modules, listed here and nowhere else.
MODULES = (cmd_admin, cmd_aggregate, cmd_crud, cmd_ddl, cmd_diag, cmd_find, cmd_list)
COMMANDS = registry.table(*MODULES)
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
# What MongoDB 7 runs inside a multi-document transaction; DDL_IN_TXN takes effect at commit.
IN_TXN = {
    *TXN_END,
    *RETRYABLE,
    "aggregate",
    "distinct",
    "find",
    "getMore",
    "killCursors",
    "create",
    "createIndexes",
}
DDL_IN_TXN = {"create", "createIndexes"}
NO_TIME_LIMIT = {"getMore", "hello", "isMaster", "ismaster", "configureFailPoint"}


def _from_engine(exc: OperationFailure) -> CommandError:
    """The query engine's error, with the code MongoDB gives the same mistake."""
    msg = str(exc).split(", full error")[0]
    if msg.startswith("unknown operator"):
        return CommandError(2, msg)
    if msg.startswith("Unrecognized expression"):
        return CommandError(168, msg)
    return CommandError(int(exc.code or 2), msg)


class Dispatcher:
    """Runs one command for one connection and shapes its reply."""

    def __init__(self, server: ServerView, commands: registry.Table = COMMANDS) -> None:
        self.server = server
        self.commands = commands

    async def execute(self, conn: ClientConnection, request: wire.Request) -> dict[str, Any]:
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
        stream = self._is_change_stream(name, cmd)
        try:
            reply = await self._run(conn, name, db, cmd)
        except CommandError as exc:
            reply = self._labelled(exc, name, cmd, stream).reply()
        except (CloseConnection, asyncio.CancelledError):
            raise
        except OperationFailure as exc:  # raised by mongomock for bad queries and expressions
            reply = self._labelled(_from_engine(exc), name, cmd, stream).reply()
        except Exception as exc:  # a gap of the emulator answers one command, not the socket
            log.warning("emulator_unsupported", command=name, error=type(exc).__name__)
            reply = CommandError(
                115,
                f"the emulator does not support '{name}' with these arguments "
                f"({type(exc).__name__}: {exc})",
            ).reply()
        clock = self.server.store.clock.current()
        reply["$clusterTime"] = {
            "clusterTime": clock,
            "signature": {"hash": Binary(b"\x00" * 20), "keyId": Int64(0)},
        }
        reply["operationTime"] = clock
        return reply

    def _is_change_stream(self, name: str, cmd: dict[str, Any]) -> bool:
        if name == "aggregate":
            pipeline = cmd.get("pipeline") or [{}]
            return isinstance(pipeline[0], dict) and "$changeStream" in pipeline[0]
        if name == "getMore":
            cur = self.server.cursors.open.get(int(cmd.get("getMore") or 0))
            return cur is not None and cur.stream is not None
        return False

    @staticmethod
    def _labelled(exc: CommandError, name: str, cmd: dict[str, Any], stream: bool) -> CommandError:
        if not exc.fixed_labels and not exc.labels:
            exc.labels = server_labels(name, cmd, exc.code, None, stream)
        return exc

    async def _run(
        self, conn: ClientConnection, name: str, db: str, cmd: dict[str, Any]
    ) -> dict[str, Any]:
        server = self.server
        handler = self.commands.get(name)
        if handler is None:
            raise CommandError(59, f"no such command: '{name}'")
        fail = server.failpoints.fail_command(name, conn.app_name)
        if fail is not None:
            await self._fail_command(fail)
        if (
            cmd.get("maxTimeMS")
            and name not in NO_TIME_LIMIT
            and server.failpoints.fire("maxTimeAlwaysTimeOut") is not None
        ):
            raise CommandError(50, "operation exceeded time limit")
        if name not in ANY_STATE and not server.writable(conn):
            self._check_secondary(conn, name, cmd)
        sessions = server.sessions
        in_txn = cmd.get("lsid") is not None and cmd.get("autocommit") is not None
        record = None
        if name in RETRYABLE and "txnNumber" in cmd and not in_txn:
            record = record_for(sessions.state(cmd.get("lsid") or {}), int(cmd["txnNumber"]))
            if record.reply is not None:  # a retried write is applied once
                return self._with_wce(dict(record.reply), fail, name, cmd)
        ws = sessions.live if name in TXN_END else sessions.workspace(cmd)
        ctx = Ctx(server, conn, db, ws)
        if isinstance(ws, Transaction):
            reply = await self._in_transaction(ctx, ws, handler, name, cmd)
        elif name == "commitTransaction":
            await self._commit_ddl(conn, cmd)
            reply = await handler(ctx, cmd)
        elif record is not None and (record.statements or server.failpoints.armed(FAIL_POINT)):
            reply = await run_statements(ctx, handler, name, cmd, record, server.failpoints)
        else:
            reply = await handler(ctx, cmd)
        if record is not None:
            record.reply = dict(reply)
        if not in_txn:
            self._snapshot_time(cmd, reply)
        return self._with_wce(reply, fail, name, cmd)

    def _check_secondary(self, conn: ClientConnection, name: str, cmd: dict[str, Any]) -> None:
        """Refuse what a secondary (or a stepped-down primary) may not run."""
        writes = name in self.commands.writes or name == "commitTransaction"
        if writes or cmd.get("autocommit") is not None:
            raise CommandError(10107, "not primary")
        mode = (cmd.get("$readPreference") or {}).get("mode", "primary")
        # a member that is a secondary by configuration serves reads that allow one; a
        # stepped-down primary's reads are refused so clients move on to the new primary
        if conn.member == 0 or mode == "primary":
            raise CommandError(13435, "not primary and secondaryOk=false")

    async def _fail_command(self, fail: dict[str, Any]) -> None:
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
                fixed_labels="errorLabels" in fail,
            )

    def _with_wce(
        self, reply: dict[str, Any], fail: dict[str, Any] | None, name: str, cmd: dict[str, Any]
    ) -> dict[str, Any]:
        """Attach a fail point's writeConcernError, and the labels the server would give it."""
        if fail is None or "writeConcernError" not in fail:
            return reply
        wce = dict(fail["writeConcernError"])
        reply["writeConcernError"] = wce
        if "errorLabels" in fail:
            labels = list(fail["errorLabels"])
        else:
            labels = server_labels(name, cmd, None, int(wce.get("code", 0)))
        if labels:
            reply["errorLabels"] = labels
        return reply

    async def _in_transaction(
        self, ctx: Ctx, txn: Transaction, handler: registry.Handler, name: str, cmd: dict[str, Any]
    ) -> dict[str, Any]:
        """Run a command inside a transaction: any error, write errors included, aborts it."""
        sessions = self.server.sessions
        try:
            if name not in IN_TXN:
                raise CommandError(263, f"Cannot run '{name}' in a multi-document transaction.")
            if name in DDL_IN_TXN:
                return self._defer_ddl(ctx, txn, name, cmd)
            reply = await handler(ctx, cmd)
        except BaseException:
            sessions.abort(txn)
            raise
        if reply.get("writeErrors"):
            sessions.abort(txn)
        return reply

    def _defer_ddl(
        self, ctx: Ctx, txn: Transaction, name: str, cmd: dict[str, Any]
    ) -> dict[str, Any]:
        """Accept create/createIndexes in a transaction; they run against the data at commit."""
        coll = cmd[name]
        pending = {c["create"] for n, c in txn.ddl if n == "create"}
        exists = ctx.store.exists(ctx.db, coll) or coll in pending
        if name == "create" and exists:
            raise CommandError(48, f"Collection {ctx.db}.{coll} already exists.")
        txn.ddl.append((name, {**cmd, "$db": ctx.db}))
        txn.coll(ctx.db, coll)
        if name == "create":
            return {"ok": 1.0}
        specs = list(cmd.get("indexes") or [])
        return {
            "createdCollectionAutomatically": not exists,
            "numIndexesBefore": 1,
            "numIndexesAfter": 1 + len(specs),
            "ok": 1.0,
        }

    async def _commit_ddl(self, conn: ClientConnection, cmd: dict[str, Any]) -> None:
        """Before a transaction's writes become visible, run the DDL it deferred."""
        sessions = self.server.sessions
        st = sessions.state(cmd.get("lsid") or {})
        txn = st.txn
        if txn is None or txn.state != "in_progress" or txn.number != int(cmd.get("txnNumber", -1)):
            return
        live: Workspace = sessions.live
        for name, ddl in txn.ddl:
            handler = self.commands.get(name)
            assert handler is not None  # DDL_IN_TXN names are registered commands
            try:
                await handler(Ctx(self.server, conn, str(ddl["$db"]), live), ddl)
            except CommandError:
                sessions.abort(txn)
                raise
        txn.ddl.clear()

    def _snapshot_time(self, cmd: dict[str, Any], reply: dict[str, Any]) -> None:
        """A snapshot read outside a transaction says which cluster time it read at."""
        rc = cmd.get("readConcern") or {}
        if rc.get("level") != "snapshot":
            return
        at = rc.get("atClusterTime") or self.server.store.clock.current()
        if isinstance(reply.get("cursor"), dict):
            reply["cursor"].setdefault("atClusterTime", at)
        elif "values" in reply:  # distinct
            reply.setdefault("atClusterTime", at)
