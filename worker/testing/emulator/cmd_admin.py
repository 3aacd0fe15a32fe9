"""Handshake, monitoring, sessions, transactions, fail points and replica-set commands."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

from bson import Int64, Timestamp

from changestream_worker.testing.emulator.context import Ctx, check_fields
from changestream_worker.testing.emulator.errors import CommandError
from changestream_worker.testing.emulator.registry import command

VERSION = "7.0.14"
MAX_WIRE_VERSION = 21  # MongoDB 7.0


@command("hello", "isMaster", "ismaster")
async def hello(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    server = ctx.server
    if (meta := cmd.get("client")) and ctx.conn.app_name is None:
        ctx.conn.app_name = (meta.get("application") or {}).get("name")
    wait_ms = cmd.get("maxAwaitTimeMS")
    tv = cmd.get("topologyVersion")
    if (
        wait_ms is not None
        and tv is not None
        and tv.get("counter") == server.topology_counter
        and tv.get("processId") == server.process_id
    ):
        # awaitable hello: answer when the topology changes, or when the wait is over
        await server.wait_topology_change(float(wait_ms) / 1000)
    return server.hello_reply(
        legacy=next(iter(cmd)) != "hello", conn=ctx.conn, hello_ok=bool(cmd.get("helloOk"))
    )


@command("ping")
async def ping(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"ok": 1.0}


@command("buildInfo", "buildinfo")
async def build_info(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": VERSION,
        "gitVersion": "emulator",
        "modules": [],
        "allocator": "system",
        "javascriptEngine": "none",
        "sysInfo": "deprecated",
        "versionArray": [int(x) for x in VERSION.split(".")] + [0],
        "bits": 64,
        "debug": False,
        "maxBsonObjectSize": 16 * 1024 * 1024,
        "storageEngines": ["wiredTiger"],
        "ok": 1.0,
    }


PARAMETERS = {
    "featureCompatibilityVersion": {"version": "7.0"},
    "enableTestCommands": True,
    "transactionLifetimeLimitSeconds": 60,
}


@command("getParameter")
async def get_parameter(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    if cmd["getParameter"] in ("*", {"allParameters": True}):
        return {**PARAMETERS, "ok": 1.0}
    wanted = [
        k
        for k in cmd
        if k not in ("getParameter", "$db", "lsid", "$clusterTime", "$readPreference", "comment")
    ]
    unknown = [k for k in wanted if k not in PARAMETERS]
    if unknown or not wanted:
        raise CommandError(72, "no option found to get")
    return {**{k: PARAMETERS[k] for k in wanted}, "ok": 1.0}


@command("serverStatus")
async def server_status(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    server = ctx.server
    return {
        "host": server.address,
        "version": VERSION,
        "process": "mongod",
        "pid": Int64(os.getpid()),
        "uptime": float(int(time.monotonic() - server.started)),
        "uptimeMillis": Int64(int((time.monotonic() - server.started) * 1000)),
        "localTime": datetime.now(UTC),
        "connections": {
            "current": len(server.connections),
            "available": 838860,
            "totalCreated": server.total_connections,
        },
        "repl": {
            "setName": server.set_name,
            "isWritablePrimary": server.writable(ctx.conn),
            "secondary": not server.writable(ctx.conn),
            "hosts": [server.address],
            "me": server.address,
            "primary": server.address,
            "electionId": server.election_id,
        },
        "storageEngine": {"name": "wiredTiger"},
        "ok": 1.0,
    }


@command("endSessions")
async def end_sessions(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    ctx.server.sessions.end(list(cmd["endSessions"]))
    return {"ok": 1.0}


@command("killAllSessions")
async def kill_all_sessions(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    sessions = ctx.server.sessions
    for st in list(sessions.sessions.values()):
        if st.txn is not None:
            sessions.abort(st.txn)
    sessions.sessions.clear()
    return {"ok": 1.0}


def _optime(ts: Timestamp, term: int) -> dict[str, Any]:
    return {"ts": ts, "t": Int64(term)}


@command("replSetGetStatus")
async def repl_set_get_status(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    server = ctx.server
    store = ctx.store
    last = store.oplog[-1].ts if store.oplog else store.clock.last
    last_date = datetime.fromtimestamp(last.time, UTC)
    state, state_str = (1, "PRIMARY") if server.is_primary else (2, "SECONDARY")
    optime = _optime(last, server.term)
    return {
        "set": server.set_name,
        "date": datetime.now(UTC),
        "myState": state,
        "term": Int64(server.term),
        "heartbeatIntervalMillis": Int64(2000),
        "optimes": {
            "lastCommittedOpTime": optime,
            "readConcernMajorityOpTime": optime,
            "appliedOpTime": optime,
            "durableOpTime": optime,
            "lastAppliedWallTime": last_date,
            "lastDurableWallTime": last_date,
        },
        # not in MongoDB's reply: real deployments read local.oplog.rs, which the emulator
        # also serves; kept here so an operator can see the window at a glance
        "oplogWindow": {"first": _optime(store.first_ts(), server.term), "last": optime},
        "members": [
            {
                "_id": 0,
                "name": server.address,
                "health": 1.0,
                "state": state,
                "stateStr": state_str,
                "uptime": int(time.monotonic() - server.started),
                "optime": optime,
                "optimeDate": last_date,
                "self": True,
                "electionId": server.election_id,
                "configVersion": 1,
                "configTerm": server.term,
            }
        ],
        "ok": 1.0,
    }


@command("commitTransaction", write=True)
async def commit_transaction(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    ctx.server.sessions.commit(cmd)
    return {"ok": 1.0}


@command("abortTransaction")
async def abort_transaction(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    ctx.server.sessions.abort_cmd(cmd)
    return {"ok": 1.0}


@command("configureFailPoint")
async def configure_fail_point(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    if ctx.db != "admin":
        raise CommandError(13, "configureFailPoint may only be run against the admin database.")
    return {**ctx.server.failpoints.configure(cmd), "ok": 1.0}


@command("replSetStepDown")
async def repl_set_step_down(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    check_fields(cmd, {"force", "secondaryCatchUpPeriodSecs"})
    if ctx.db != "admin":
        raise CommandError(13, "replSetStepDown may only be run against the admin database.")
    server = ctx.server
    if not server.writable(ctx.conn):
        raise CommandError(10107, "not primary so can't step down")
    secs = float(cmd.get("replSetStepDown") or 60)
    # a one-member set has no electable secondary: only a forced step-down succeeds
    if not cmd.get("force"):
        raise CommandError(
            262,
            "No electable secondaries caught up as of "
            f"{datetime.now(UTC).isoformat()}. Please use the replSetStepDown "
            "command with the argument {force: true} to force node to step "
            "down.",
        )
    server.step_down(secs, keep=ctx.conn)
    return {"ok": 1.0}


@command("emulatorTruncateOplog")
async def truncate_oplog(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    if ctx.db != "admin":
        raise CommandError(13, "emulatorTruncateOplog may only be run against the admin database.")
    before = cmd.get("before")
    if not isinstance(before, Timestamp):
        raise CommandError(14, "'before' must be a Timestamp")
    removed = ctx.store.truncate_before(before)
    return {"removed": removed, "firstTs": ctx.store.first_ts(), "ok": 1.0}


@command("appendOplogNote")
async def append_oplog_note(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    ctx.store.clock.tick()
    return {"ok": 1.0}


@command("whatsmyuri")
async def whatsmyuri(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"you": ctx.conn.peer, "ok": 1.0}


@command("connectionStatus")
async def connection_status(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}, "ok": 1.0}


@command("getCmdLineOpts")
async def get_cmd_line_opts(ctx: Ctx, cmd: dict[str, Any]) -> dict[str, Any]:
    return {
        "argv": ["mongod", "--replSet", ctx.server.set_name],
        "parsed": {"replication": {"replSet": ctx.server.set_name}},
        "ok": 1.0,
    }


async def sleep_ms(ms: float) -> None:
    await asyncio.sleep(ms / 1000)
