"""Each watcher's reported status, and the read-model `changestream-worker status` shows.

The supervisor writes one ``watcher_status`` document per watcher (or partition) with
:meth:`StatusStore.publish`; :func:`read_status` joins it with the checkpoint, the lease and
the dead-letter count into one JSON-ready row.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import Timestamp
from pymongo.errors import PyMongoError

from changestream_worker.state import names
from changestream_worker.state.checkpoints import Checkpoint, MongoCheckpointStore
from changestream_worker.state.deadletters import DeadLetterStore

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase

    StateDb = AsyncDatabase[dict[str, Any]]

# Fields a supervisor may report beside state/reason/instance/restarts. Each shows as a
# column of `status` and a key of `status --json`; None (absent) prints as "-".
#   in_flight     events submitted to handlers and not finished
#   backlog       events the stream still holds past the checkpoint (an estimate)
#   lease_wait_s  seconds until a standby may take over a lease its owner stopped renewing
# hook (reliability): service/observer.py also writes backlog_seconds, backlog_detail, takeover
REPORTED = (
    "in_flight",
    "backlog",
    "lease_wait_s",
    "backlog_seconds",
    "backlog_detail",
    "takeover",
)


class StatusStore:
    """The ``watcher_status`` collection: one document per watcher (or partition).

    Args:
        state_db: the worker's state database.
        instance_id: the reporting process's name, written with every report (readers
            leave it out).
    """

    def __init__(self, state_db: StateDb, instance_id: str | None = None) -> None:
        self.collection = state_db[names.WATCHER_STATUS]
        self.instance_id = instance_id

    async def publish(self, watcher: str, **fields: Any) -> None:
        """Record ``watcher``'s state (best effort: status must never stop the work)."""
        doc = {**fields, "updated": datetime.now(UTC)}
        if self.instance_id is not None:
            doc["instance"] = self.instance_id
        with contextlib.suppress(PyMongoError):
            await self.collection.update_one({"_id": watcher}, {"$set": doc}, upsert=True)

    async def get(self, watcher: str) -> dict[str, Any]:
        """The last state ``watcher`` reported (empty if none)."""
        return await self.collection.find_one({"_id": watcher}) or {}


async def lease_of(state_db: StateDb, watcher: str) -> dict[str, Any] | None:
    """The lease document of ``watcher`` (owner, epoch, expires_at), if one was ever taken."""
    return await state_db[names.LEASES].find_one({"_id": watcher})


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _when(value: Any) -> datetime | None:
    if isinstance(value, Timestamp):
        return value.as_datetime()
    return _aware(value) if isinstance(value, datetime) else None


def iso(value: Any) -> str | None:
    """A BSON Timestamp or datetime as ``2026-03-01T12:00:00Z``; None for anything else."""
    when = _when(value)
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(value: Any, now: datetime) -> float | None:
    when = _when(value)
    return None if when is None else round(max(0.0, (now - when).total_seconds()), 3)


def lease_held(lease: dict[str, Any] | None, now: datetime) -> bool:
    """True while an owner holds the lease and it has not expired."""
    if not lease or lease.get("owner") is None:
        return False
    expires = lease.get("expires_at")
    return isinstance(expires, datetime) and _aware(expires) > now


def _checkpoint(cp: Checkpoint) -> dict[str, Any]:
    snap = cp.snapshot if isinstance(cp.snapshot, dict) else None
    return {
        "cluster_time": iso(cp.cluster_time),
        "wall_time": iso(cp.wall_time),
        "updated": iso(cp.updated),
        "has_token": cp.token is not None,
        "events_handled": cp.events_handled,
        "epoch": cp.epoch,
        "snapshot": None
        if snap is None
        else {
            "done": bool(snap.get("done")),
            "last_id": None if snap.get("last_id") is None else str(snap.get("last_id")),
        },
    }


async def read_status(
    state_db: StateDb, watchers: list[str], now: datetime | None = None
) -> list[dict[str, Any]]:
    """One JSON-ready row per watcher: state, checkpoint, lag, in-flight, dead letters, lease.

    Watchers that are no longer configured but still have dead letters get a row too.
    """
    now = now or datetime.now(UTC)
    dlq = await DeadLetterStore(state_db).counts()
    checkpoints, statuses = MongoCheckpointStore(state_db), StatusStore(state_db)
    configured = set(watchers)
    rows = []
    for name in watchers + sorted(n for n in dlq if n not in configured):
        cp = await checkpoints.load(name)
        lease = await lease_of(state_db, name)
        st = await statuses.get(name)
        row: dict[str, Any] = {
            "watcher": name,
            "configured": name in configured,
            "state": st.get("state", "unknown"),
            "reason": st.get("reason") or "",
            "instance": st.get("instance"),
            "state_updated": iso(st.get("updated")),
            "checkpoint": None if cp is None else _checkpoint(cp),
            "lag_seconds": None if cp is None else _age(cp.wall_time or cp.cluster_time, now),
            "dead_letters": dlq.get(name, 0),
            **{key: st.get(key) for key in REPORTED},
            "lease": None,
        }
        if lease is not None:
            held = lease_held(lease, now)
            row["lease"] = {
                "owner": lease.get("owner"),
                "epoch": lease.get("epoch"),
                "expires_at": iso(lease.get("expires_at")),
                "expired": not held and lease.get("owner") is not None,
            }
            if row["state"] == "running" and not held:
                # the last owner died without saying so (SIGKILL, lost node)
                row["state"], row["reason"] = "unknown", "lease expired: owner gone?"
        rows.append(row)
    return rows


async def looks_running(state_db: StateDb, watcher: str, now: datetime) -> str | None:
    """The instance that seems to run ``watcher`` (reported running, or holding its lease)."""
    st = await StatusStore(state_db).get(watcher)
    lease = await lease_of(state_db, watcher)
    if lease_held(lease, now):
        return str((lease or {}).get("owner"))
    if st.get("state") == "running":
        return str(st.get("instance") or "?")
    return None
