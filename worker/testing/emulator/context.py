"""What every command handler receives: a view of the server and the calling connection.

The view is a Protocol, so this module (and every command module) depends on no server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from bson import ObjectId

from changestream_worker.testing.emulator.errors import unknown_field

if TYPE_CHECKING:
    from changestream_worker.testing.emulator.cursors import Cursors
    from changestream_worker.testing.emulator.failpoints import FailPoints
    from changestream_worker.testing.emulator.sessions import Sessions, Workspace
    from changestream_worker.testing.emulator.store import Store

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


class ClientConnection(Protocol):
    """The connection a command came in on."""

    id: int
    app_name: str | None
    peer: str
    member: int


class ServerView(Protocol):
    """What command handlers may read and call on the server."""

    store: Store
    sessions: Sessions
    cursors: Cursors
    failpoints: FailPoints
    set_name: str
    term: int
    process_id: ObjectId
    topology_counter: int
    total_connections: int
    started: float

    @property
    def connections(self) -> dict[int, Any]: ...
    @property
    def is_primary(self) -> bool: ...
    @property
    def address(self) -> str: ...
    @property
    def election_id(self) -> ObjectId: ...
    def step_down(self, secs: float, keep: Any) -> None: ...
    async def wait_topology_change(self, timeout: float) -> None: ...
    def hello_reply(self, legacy: bool, conn: Any, hello_ok: bool) -> dict[str, Any]: ...
    def writable(self, conn: Any) -> bool: ...


@dataclass(slots=True)
class Ctx:
    """One command's view of the server."""

    server: ServerView
    conn: ClientConnection
    db: str
    ws: Workspace

    @property
    def store(self) -> Any:
        return self.server.store


def check_fields(cmd: dict[str, Any], allowed: set[str]) -> None:
    """Refuse fields the command does not take, as the server's IDL parser does."""
    name = next(iter(cmd))
    for key in cmd:
        if key != name and key not in allowed and key not in GENERIC:
            raise unknown_field(f"{name}.{key}")
