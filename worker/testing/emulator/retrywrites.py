"""Retryable writes applied once: a write's reply is kept per lsid + txnNumber.

With ``onPrimaryTransactionalWrite`` on (or after a retry found some statements done) a write
runs statement by statement, as the server commits them: an insert is one commit, each
update/delete statement is its own; a retry runs only the statements not yet committed.
"""

from __future__ import annotations

from typing import Any

from changestream_worker.testing.emulator.context import Ctx
from changestream_worker.testing.emulator.errors import CommandError
from changestream_worker.testing.emulator.failpoints import FailPoints
from changestream_worker.testing.emulator.registry import Handler
from changestream_worker.testing.emulator.sessions import RetryRecord, SessionState

RETRYABLE = {"insert", "update", "delete", "findAndModify", "findandmodify"}
STATEMENTS = {"update": "updates", "delete": "deletes"}
FAIL_POINT = "onPrimaryTransactionalWrite"


class CloseConnection(Exception):
    """Close the client's connection without a reply (a fail point asked for it)."""


def record_for(st: SessionState, number: int) -> RetryRecord:
    """The bookkeeping of retryable write ``number``; refuses numbers older than the newest."""
    if number in st.retry:
        return st.retry[number]
    if number < st.txn_number:
        raise CommandError(
            225,
            f"Retryable write with txnNumber {number} is prohibited on session because a "
            f"newer retryable write with txnNumber {st.txn_number} has already started",
        )
    st.txn_number = number
    st.retry = {number: RetryRecord()}
    return st.retry[number]


def _failed_statement(name: str, index: int, code: int) -> dict[str, Any]:
    if name not in STATEMENTS and name != "insert":
        raise CommandError(code, "Failing write via 'onPrimaryTransactionalWrite' failpoint")
    error = {"index": index, "code": code, "errmsg": "Failing write via failpoint"}
    return {
        "n": 0,
        **({"nModified": 0} if name == "update" else {}),
        "writeErrors": [error],
        "ok": 1.0,
    }


def _merge(name: str, parts: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """One reply for statement replies, with indexes of the whole command."""
    if name not in STATEMENTS:
        return dict(parts[0][1])
    out: dict[str, Any] = {"n": 0, "ok": 1.0}
    if name == "update":
        out["nModified"] = 0
    upserted, errors = [], []
    for index, reply in parts:
        out["n"] += int(reply.get("n", 0))
        if name == "update":
            out["nModified"] += int(reply.get("nModified", 0))
        upserted += [{**u, "index": index} for u in reply.get("upserted", [])]
        errors += [{**e, "index": index} for e in reply.get("writeErrors", [])]
    if upserted:
        out["upserted"] = upserted
    if errors:
        out["writeErrors"] = errors
    return out


async def run_statements(
    ctx: Ctx,
    handler: Handler,
    name: str,
    cmd: dict[str, Any],
    record: RetryRecord,
    failpoints: FailPoints,
) -> dict[str, Any]:
    """Run a retryable write statement by statement, keeping each statement's reply."""
    key = STATEMENTS.get(name)
    units = [cmd] if key is None else [{**cmd, key: [s]} for s in cmd.get(key, [])]
    ordered = cmd.get("ordered", True)
    parts: list[tuple[int, dict[str, Any]]] = []
    for index, unit in enumerate(units):
        if index in record.statements:
            parts.append((index, record.statements[index]))
            continue
        data = failpoints.fire(FAIL_POINT)
        close = data is not None and data.get("closeConnection", True)
        if data is not None and "failBeforeCommitExceptionCode" in data:
            if close:
                raise CloseConnection
            reply = _failed_statement(name, index, int(data["failBeforeCommitExceptionCode"]))
        else:
            reply = await handler(ctx, unit)
            record.statements[index] = reply
            if close:
                raise CloseConnection  # committed, but the client never hears of it
        parts.append((index, reply))
        if reply.get("writeErrors") and ordered:
            break
    return _merge(name, parts) if parts else _merge(name, [(0, {"n": 0, "ok": 1.0})])
