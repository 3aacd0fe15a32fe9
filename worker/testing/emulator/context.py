"""What every command handler receives: the server's state and the calling connection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from changestream_worker.testing.emulator.errors import unknown_field

if TYPE_CHECKING:
    from changestream_worker.testing.emulator.server import Connection, ReplicaSetEmulator
    from changestream_worker.testing.emulator.sessions import Workspace

GENERIC = {
    "$db",
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "$clusterTime",
    "$readPreference",
    "readConcern",
    "writeConcern",
    "comment",
    "maxTimeMS",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "$audit",
    "mayBypassWriteBlocking",
}


@dataclass(slots=True)
class Ctx:
    """One command's view of the server."""

    server: ReplicaSetEmulator
    conn: Connection
    db: str
    ws: Workspace

    @property
    def store(self) -> Any:
        return self.server.store


Handler = Callable[[Ctx, dict[str, Any]], Awaitable[dict[str, Any]]]
COMMANDS: dict[str, Handler] = {}
# Commands that change data: refused with NotWritablePrimary while stepped down.
WRITES: set[str] = set()


def command(*names: str, write: bool = False) -> Callable[[Handler], Handler]:
    """Register a command handler under one or more names."""

    def deco(fn: Handler) -> Handler:
        for n in names:
            COMMANDS[n] = fn
            if write:
                WRITES.add(n)
        return fn

    return deco


def check_fields(cmd: dict[str, Any], allowed: set[str]) -> None:
    """Refuse fields the command does not take, as the server's IDL parser does."""
    name = next(iter(cmd))
    for key in cmd:
        if key != name and key not in allowed and key not in GENERIC:
            raise unknown_field(f"{name}.{key}")
