"""Each watcher's last reported state, kept for `changestream-worker status` and operators."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError

from changestream_worker.state import names

if TYPE_CHECKING:
    from pymongo.asynchronous.database import AsyncDatabase


class StatusStore:
    """The ``watcher_status`` collection: one document per watcher (or partition).

    Args:
        state_db: the worker's state database.
        instance_id: the reporting process's name.
    """

    def __init__(self, state_db: AsyncDatabase[dict[str, Any]], instance_id: str) -> None:
        self.collection = state_db[names.WATCHER_STATUS]
        self.instance_id = instance_id

    async def publish(self, watcher: str, **fields: Any) -> None:
        """Record ``watcher``'s state (best effort: status must never stop the work)."""
        doc = {**fields, "instance": self.instance_id, "updated": datetime.now(UTC)}
        with contextlib.suppress(PyMongoError):
            await self.collection.update_one({"_id": watcher}, {"$set": doc}, upsert=True)

    async def get(self, watcher: str) -> dict[str, Any]:
        """The last state ``watcher`` reported (empty if none)."""
        return await self.collection.find_one({"_id": watcher}) or {}
