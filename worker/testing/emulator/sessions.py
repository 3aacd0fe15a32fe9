"""Logical sessions: retryable-write bookkeeping and multi-document transactions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Timestamp

from changestream_worker.testing.emulator.engine import Engine
from changestream_worker.testing.emulator.errors import CommandError
from changestream_worker.testing.emulator.store import Change, Store, key_bytes

TRANSIENT = ["TransientTransactionError"]


class Workspace:
    """Where a command reads and writes: the live data, or a transaction's snapshot."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def coll(self, db: str, name: str) -> Any:
        return self.store.collection(db, name)

    def commit(self, changes: list[Change], lsid: dict[str, Any] | None = None) -> None:
        for ch in changes:
            self.store.ensure(ch.db, ch.coll)
        self.store.record(changes)


class Transaction(Workspace):
    """A snapshot of the collections a transaction touches, and the changes it made.

    Collections are copied on first touch; a write to a document that someone else changed
    after the snapshot, or that another open transaction has written, is a WriteConflict.
    """

    def __init__(self, store: Store, sessions: Sessions, lsid: dict[str, Any], number: int) -> None:
        super().__init__(store)
        self.sessions = sessions
        self.lsid = lsid
        self.number = number
        self.snapshot = store.clock.last
        self.private: Any = Engine()
        self.touched: set[tuple[str, str]] = set()
        self.changes: list[Change] = []
        self.written: dict[bytes, tuple[str, str, dict[str, Any]]] = {}
        # DDL (create, createIndexes) run against the live data at commit, in order
        self.ddl: list[tuple[str, dict[str, Any]]] = []
        self.state = "in_progress"

    def coll(self, db: str, name: str) -> Any:
        target = self.private[db][name]
        if (db, name) not in self.touched:
            self.touched.add((db, name))
            live = self.store.collection(db, name)
            docs = list(live.find())
            for idx_name, info in live.index_information().items():
                if idx_name != "_id_":
                    opts = {k: v for k, v in info.items() if k in ("unique", "sparse")}
                    target.create_index(info["key"], name=idx_name, **opts)
            if docs:
                target.insert_many(docs)
        return target

    def commit(self, changes: list[Change], lsid: dict[str, Any] | None = None) -> None:
        for ch in changes:
            kb = key_bytes(ch.db, ch.coll, ch.key)
            seen = self.store.versions.get(kb)
            other = self.sessions.writers.get(kb)
            if (seen is not None and seen > self.snapshot) or (
                other is not None and other is not self
            ):
                self.sessions.abort(self)
                raise CommandError(
                    112,
                    "Write conflict during plan execution and yielding is "
                    "disabled. :: Please retry your operation or multi-document "
                    "transaction.",
                    TRANSIENT,
                )
            self.sessions.writers[kb] = self
            self.written[kb] = (ch.db, ch.coll, ch.key)
        self.changes.extend(changes)

    def apply(self) -> Timestamp | None:
        """Make the transaction's writes visible and give them one cluster time."""
        for kb in self.written:
            seen = self.store.versions.get(kb)
            if seen is not None and seen > self.snapshot:
                raise CommandError(112, "Write conflict at commit", TRANSIENT)
        for db, name, key in self.written.values():
            self.store.ensure(db, name)
            final = self.private[db][name].find_one(key)
            live = self.store.collection(db, name)
            if final is None:
                live.delete_one(key)
            else:
                live.replace_one(key, final, upsert=True)
        return self.store.record(self.changes, self.lsid, self.number, in_txn=True)


@dataclass
class RetryRecord:
    """What a retryable write (one txnNumber) has done: its reply, or its statements' replies."""

    reply: dict[str, Any] | None = None
    statements: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SessionState:
    txn_number: int = -1
    txn: Transaction | None = None
    committed: set[int] = field(default_factory=set)
    # only the newest retryable write can be retried: older numbers are refused
    retry: dict[int, RetryRecord] = field(default_factory=dict)


class Sessions:
    """Every session the server has seen, keyed by the lsid's ``id``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.sessions: dict[bytes, SessionState] = {}
        self.writers: dict[bytes, Transaction] = {}
        self.live = Workspace(store)

    def state(self, lsid: dict[str, Any]) -> SessionState:
        key = bson.encode({"id": lsid.get("id")})
        return self.sessions.setdefault(key, SessionState())

    def end(self, lsids: list[dict[str, Any]]) -> None:
        for lsid in lsids:
            st = self.sessions.pop(bson.encode({"id": lsid.get("id")}), None)
            if st is not None and st.txn is not None:
                self.abort(st.txn)

    def abort(self, txn: Transaction) -> None:
        if txn.state == "in_progress":
            txn.state = "aborted"
        for kb in list(self.writers):
            if self.writers[kb] is txn:
                del self.writers[kb]

    def workspace(self, cmd: dict[str, Any]) -> Workspace:
        """The workspace a command runs in; starts, continues or refuses a transaction."""
        lsid = cmd.get("lsid")
        if lsid is None or cmd.get("autocommit") is None:
            return self.live
        number = int(cmd.get("txnNumber", -1))
        st = self.state(lsid)
        if cmd.get("startTransaction"):
            if number < st.txn_number:
                raise CommandError(
                    225,
                    f"Cannot start transaction {number} on session because a "
                    f"newer transaction {st.txn_number} has already started",
                )
            if st.txn is not None:
                self.abort(st.txn)
            st.txn_number = number
            st.txn = Transaction(self.store, self, lsid, number)
            return st.txn
        if st.txn is None or st.txn_number != number or st.txn.state != "in_progress":
            raise CommandError(
                251,
                f"Transaction with {{ txnNumber: {number} }} has been aborted."
                if st.txn is not None and st.txn.state == "aborted"
                else f"Given transaction number {number} does not match any "
                "in-progress transactions.",
                TRANSIENT,
            )
        return st.txn

    def commit(self, cmd: dict[str, Any]) -> None:
        st = self.state(cmd.get("lsid") or {})
        number = int(cmd.get("txnNumber", -1))
        if number in st.committed:
            return  # a retried commit of a committed transaction succeeds again
        txn = st.txn
        if txn is None or txn.number != number or txn.state != "in_progress":
            raise CommandError(
                251,
                f"Transaction with {{ txnNumber: {number} }} has been aborted."
                if txn is not None and txn.state == "aborted"
                else "No such transaction",
                TRANSIENT,
            )
        try:
            txn.apply()
        except CommandError:
            self.abort(txn)
            raise
        txn.state = "committed"
        st.committed = {number}
        self.abort(txn)  # releases its write claims
        txn.state = "committed"

    def abort_cmd(self, cmd: dict[str, Any]) -> None:
        st = self.state(cmd.get("lsid") or {})
        number = int(cmd.get("txnNumber", -1))
        txn = st.txn
        if txn is None or txn.number != number or txn.state == "committed":
            if number in st.committed:
                raise CommandError(256, "Transaction has been committed")
            raise CommandError(251, "No such transaction", TRANSIENT)
        if txn.state == "aborted":
            raise CommandError(251, f"Transaction with {{ txnNumber: {number} }} has been aborted.")
        self.abort(txn)
